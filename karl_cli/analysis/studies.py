"""The seeds' own studies of what a token count means, as library calls (``karl analyze``):

- ``profile``: KC at every ε and reconstruction L1 at every budget, per image (complexity profile
  and rate–distortion curve; ALIT paper §4, KARL paper §4.3), with ``kc_area``, the mean KC over log ε.
- ``noise``: KC against the strength of Gaussian and salt-and-pepper noise (KARL paper §4.4, Fig. 5),
  added at the image's own size (then resized to the model input, as scoring a noisy file does) and
  at the model input (the noise the model really sees).
- ``structure``: the same pixels with their structure destroyed step by step: patch shuffles on finer
  grids, phase randomisation (power spectrum kept), pixel permutation (KARL paper §4.4, "structure
  vs noise").
- ``familiarity``: KC of in- against out-of-distribution images, or of images against their own
  flipped / inverted / channel-swapped controls (same pixel statistics, less familiar), with a rank
  test and an effect size with a bootstrap CI (KARL paper §4.5).
- ``token_map``: per pixel patch, the smallest budget whose reconstruction meets ε there: where an
  image spends its tokens (counterpart of ICNet's per-pixel complexity maps).

Every study runs on any model ``--weights`` accepts and measures through the measuring core
(``scoring.measure``): KC from KARL's single pass (``method "single"``) or from the shared oracle
(the smallest budget meeting ε, ALIT via its rollout); inputs are read by it too (files, folders,
tar shards). Curves and maps decode every budget (``oracle.budget_reconstructions``): KARL prefixes
of one T_max encoding (its encoder is causal in its latents), ALIT its rollout.

Images are uint8 (H, W, 3) arrays; ``to_model_size`` squashes them to the model input exactly as
``io.images.load_for_model`` does. Each study returns a ``Study`` whose ``rows`` DataFrame is what the
CLI writes as CSV/JSON.
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from scipy import stats as st

from karl_cli.defaults import BOOTSTRAP, CORRELATE_EPS, EPS_SERIES, IN_MEMORY_BATCH_SIZE
from karl_cli.errors import UsageError
from karl_cli.io.synthetic import make_family_image
from karl_cli.models.config import EPS_BINS
from karl_cli.runtime import inference, prepare_model, resolve_device, to_model_input
from karl_cli.scoring.measure import load_inputs, measure, measure_all
from karl_cli.scoring.methods import check_method, default_method, oracle_method, validate_eps
from karl_cli.scoring.oracle import budget_reconstructions
from karl_cli.analysis.stats import spearman, spearman_difference
from karl_cli.io.rows import write_table

Progress = Callable[[int, int, str], None]   # progress(done, total, stage)

DEFAULT_SIGMAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
DEFAULT_SP = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
DEFAULT_GRIDS = (2, 4, 8, 16, 32)
CONTROLS = ("flip", "invert", "swap")
# Built-in sources, simplest first; "grating" is one oriented sine: simple as a program, fine detail
# everywhere (the paper's out-of-distribution failure).
NOISE_FAMILIES = ("constant", "gradient", "few shapes", "texture")
STRUCTURE_FAMILIES = ("gradient", "few shapes", "many shapes", "grating")
PROCEDURAL_SIZE = 256


@dataclass
class Study:
    """A study's result: ``rows`` (one per measurement, written as CSV/JSON), ``summary`` (what the
    terminal and README show), ``findings`` (sentences about the claims tested), ``errors`` (inputs
    that could not be read: (path, reason)) and the model's ``max_tokens`` and ``method``."""

    name: str
    rows: pd.DataFrame
    summary: pd.DataFrame
    method: str
    max_tokens: int
    findings: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


# --- images ----------------------------------------------------------------------------------------
def to_model_size(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (H, W, 3) squashed to (R, R, 3) with the resize ``load_for_model`` uses (bicubic, PIL's
    reducing gap 3), so an array scores as the same image saved to a file would."""
    if image.shape[:2] == (resolution, resolution):
        return np.ascontiguousarray(image)
    img = Image.fromarray(np.ascontiguousarray(image)).resize((resolution, resolution), Image.BICUBIC,
                                                             reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def sine_grating(size: int, period: float = 8.0, angle: float = math.pi / 6) -> np.ndarray:
    """One oriented grey sine grating, uint8 (size, size, 3): a two-parameter program, detail everywhere."""
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    v = 127.5 + 127.5 * np.sin(2 * np.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
    return np.repeat(np.clip(v, 0, 255).round().astype(np.uint8)[..., None], 3, axis=2)


def procedural(family: str, size: int, seed: int) -> np.ndarray:
    """A built-in source image, uint8 (size, size, 3): a ``synthetic.FAMILIES`` image or ``grating``
    (period: size / 8 px, 8 px at a 64 px model input: smooth, and eight cycles across)."""
    if family == "grating":
        return sine_grating(size, period=size / 8)
    return make_family_image(family, size, np.random.default_rng(seed))


# --- measuring -------------------------------------------------------------------------------------
def resolve_method(model: torch.nn.Module, method: str | None) -> str:
    """``method`` checked against the model; default: ``single`` for KARL, ``search`` for ALIT."""
    return check_method(model, method or default_method(model))


def measure_kc(model: torch.nn.Module, images: np.ndarray, eps: Sequence[float], method: str,
               batch_size: int = IN_MEMORY_BATCH_SIZE, progress: Callable[[int, int], None] | None = None,
               check: str = "decoder"
               ) -> tuple[np.ndarray, np.ndarray]:
    """KC and reconstruction L1 of uint8 model-size images (N, R, R, 3) at each ε, through the
    measuring core (``measure.measure_all``): kc int (N, E) in 1..T_max, l1 float (N, E) in [0, 1],
    the decoder's reconstruction (the studies' l1 columns; NaN with ``check="none"``, single only)."""
    m = measure_all(model, images, [float(e) for e in eps], method, batch_size, progress=progress, check=check)
    return m.kc.numpy(), m.l1.double().numpy()


def rate_distortion(model: torch.nn.Module, images: np.ndarray, batch_size: int = IN_MEMORY_BATCH_SIZE,
                    device: torch.device | None = None,
                    progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Pixel L1 (0-1 scale) of the reconstruction at every budget: float (N, len(config.budgets))."""
    dev = resolve_device(device, model)
    out = np.zeros((len(images), len(model.config.budgets)))
    with inference(dev):
        for i in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[i:i + batch_size].transpose(0, 3, 1, 2))
            x = to_model_input(torch.from_numpy(chunk), dev)
            for k, (_, rec) in enumerate(budget_reconstructions(model, x)):
                out[i:i + len(x), k] = (rec - x.float()).abs().mean(dim=(1, 2, 3)).cpu().numpy()
            if progress:
                progress(min(i + batch_size, len(images)), len(images))
    return out


def kc_area(kc: np.ndarray, eps: Sequence[float]) -> np.ndarray:
    """The profile's scalar summary: the area under KC over log ε divided by the log ε span, i.e. the
    mean token count over log ε (tokens; trapezoid rule). kc (N, E) with E >= 2 ε ascending -> (N,)."""
    log_eps = np.log(np.asarray(eps, dtype=float))
    if log_eps.size < 2:
        raise UsageError("the profile's area needs at least two ε")
    return np.trapezoid(kc, log_eps, axis=1) / (log_eps[-1] - log_eps[0])


def _prep(model: torch.nn.Module, method: str | None, device) -> tuple[str, torch.device]:
    dev = resolve_device(device, model)
    prepare_model(model, dev)
    return resolve_method(model, method), dev


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    return None if progress is None else (lambda done, total: progress(done, total, stage))


# --- profile ---------------------------------------------------------------------------------------
def profile(paths: Sequence[str | os.PathLike], model: torch.nn.Module, eps: Sequence[float] | None = None,
            method: str | None = None, curve: bool = True, sample: int | None = None, seed: int = 0,
            batch_size: int = IN_MEMORY_BATCH_SIZE, device: str | torch.device | None = None,
            progress: Progress | None = None) -> Study:
    """Each image's complexity profile (KC at every ε; default: the model's ε bins) and rate–distortion
    curve (L1 at every budget; ``curve=False`` skips it, the slow part on CPU).

    Rows: path, folder, kc_area (``kc_area``: mean KC over log ε, tokens), ``kc@ε`` per ε and
    ``l1@T`` per budget T. Summary: per folder and ε, KC median / 10 % / 90 % quantiles.
    Unreadable files are left out and listed in ``errors``.
    """
    method, dev = _prep(model, method, device)
    eps_v = sorted(validate_eps(eps if eps else EPS_BINS))
    items, bad = load_inputs(paths, resolution=model.config.resolution, sample=sample, seed=seed)
    arr = np.stack([a for _, a in items])
    # The profile keeps KC only: a single pass skips its L1 check (the searches need their decodes).
    kc, _ = measure_kc(model, arr, eps_v, method, batch_size, _stage(progress, "KC per ε"),
                       check="none" if method == "single" else "decoder")
    rows = pd.DataFrame({"path": [p for p, _ in items], "folder": [Path(p).parent.name for p, _ in items]})
    rows["kc_area"] = kc_area(kc, eps_v).round(3) if len(eps_v) > 1 else np.nan
    for j, e in enumerate(eps_v):
        rows[f"kc@{e:g}"] = kc[:, j]
    budgets = model.config.budgets
    if curve:
        rd = rate_distortion(model, arr, batch_size, dev, _stage(progress, "L1 per budget"))
        rows = pd.concat([rows, pd.DataFrame(rd.round(6), columns=[f"l1@{t}" for t in budgets])], axis=1)
    summary = []
    for folder, g in rows.groupby("folder", sort=True):
        for e in eps_v:
            v = g[f"kc@{e:g}"].to_numpy(float)
            summary.append({"folder": folder, "eps": e, "n": len(v), "kc_median": float(np.median(v)),
                            "kc_q10": float(np.quantile(v, 0.1)), "kc_q90": float(np.quantile(v, 0.9)),
                            "kc_area_median": float(np.median(g["kc_area"]))})
    not_monotone = int((np.diff(kc, axis=1) > 0).any(axis=1).sum())
    findings = [f"KC is non-increasing in ε for {len(rows) - not_monotone} of {len(rows)} images"
                + ("" if not not_monotone else f" ({not_monotone} rise somewhere as ε loosens: the halting "
                   "head's ε bins disagree)")]
    return Study("profile", rows, pd.DataFrame(summary), method, model.config.max_tokens, findings, bad,
                 {"eps": eps_v, "budgets": budgets if curve else []})


def rank_against_ratings(rows: pd.DataFrame, rated: pd.DataFrame, eps: float = CORRELATE_EPS,
                         n_boot: int = BOOTSTRAP, seed: int = 0) -> pd.DataFrame:
    """Does the profile's area rank images more like people than KC at one ε? Per category and pooled:
    Spearman ρ of kc_area and of ``kc@eps`` with the ratings, and ρ(area) − ρ(KC) with its paired
    bootstrap CI (``stats.spearman_difference``). ``rated``: columns path, rating, category
    (``io.savoias.load_ratings(...).table``); rows are joined on the resolved path."""

    col = f"kc@{eps:g}"
    if col not in rows:
        raise UsageError(f"the profile has no KC at ε {eps:g}; include it in --eps")
    a = rows.assign(key=[os.path.realpath(p) for p in rows["path"]])
    b = rated.assign(key=[os.path.realpath(p) for p in rated["path"]])[["key", "rating", "category"]]
    df = a.merge(b, on="key")
    if df.empty:
        raise UsageError("no profiled image has a rating (paths differ from the ratings' paths)")
    out = []
    for cat, g in [*df.groupby("category", sort=False), ("pooled", df)]:
        d = spearman_difference(g["kc_area"], g[col], g["rating"], n_boot=n_boot, seed=seed)
        out.append({"category": cat, "n": len(g), "rho_area": spearman(g["kc_area"], g["rating"]),
                    "rho_kc": spearman(g[col], g["rating"]), "delta": d.delta, "delta_lo": d.lo, "delta_hi": d.hi})
    return pd.DataFrame(out)


# --- noise -----------------------------------------------------------------------------------------
def add_noise(image: np.ndarray, kind: str, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 (H, W, 3)) with noise: ``gaussian`` adds N(0, σ²) per channel, σ = strength on the
    0-1 scale, clipped; ``salt-pepper`` sets a share ``strength`` of pixels to black or white (half each)."""
    if strength < 0:
        raise UsageError(f"noise strength must be >= 0, got {strength}")
    if kind == "gaussian":
        noisy = image / 255.0 + rng.normal(0.0, strength, image.shape)
        return np.clip(noisy * 255.0, 0, 255).round().astype(np.uint8)
    if kind == "salt-pepper":
        if strength > 1:
            raise UsageError(f"a salt-and-pepper share must lie in [0, 1], got {strength}")
        out = image.copy()
        hit = rng.random(image.shape[:2]) < strength
        out[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255)[:, None].astype(np.uint8)
        return out
    raise UsageError(f"unknown noise kind {kind!r} (gaussian or salt-pepper)")


def noise(paths: Sequence[str | os.PathLike] | None, model: torch.nn.Module, eps: Sequence[float] = EPS_SERIES,
          sigmas: Sequence[float] = DEFAULT_SIGMAS, sp: Sequence[float] = DEFAULT_SP, method: str | None = None,
          size: int = PROCEDURAL_SIZE, sample: int | None = None, seed: int = 0, batch_size: int = IN_MEMORY_BATCH_SIZE,
          device: str | torch.device | None = None, progress: Progress | None = None) -> Study:
    """KC against noise strength (KARL paper §4.4): Gaussian σ steps (0-1 pixel scale) and salt-and-
    pepper shares, on the given images (shorter side capped at ``size`` px) or, with ``paths`` None, on
    the built-in ``NOISE_FAMILIES`` at ``size`` px.

    Each noise is added twice: ``where = "image"``: at the image's own size, then squashed to the
    model input (what scoring a noisy file measures; the resize averages fine noise away), and
    ``where = "input"``: to the model-size image (the noise the model sees at full strength).
    ``seen`` is the RMS change noise leaves in the model input (0-1 scale). Rows: source, kind,
    strength, where, seen, eps, kc, l1. Summary: median KC over sources per (kind, where, strength, ε).
    """
    method, dev = _prep(model, method, device)
    eps_v = sorted(validate_eps(eps))
    r = model.config.resolution
    if paths:
        items, bad = load_inputs(paths, max_side=size, sample=sample, seed=seed)
    else:
        items, bad = [(fam, procedural(fam, size, seed + k)) for k, fam in enumerate(NOISE_FAMILIES)], []
    levels = [("gaussian", float(s)) for s in sigmas] + [("salt-pepper", float(s)) for s in sp]
    meta, inputs = [], []
    for src, img in items:
        clean = to_model_size(img, r).astype(float)
        for kind, s in levels:
            for where in ("image", "input"):
                rng = variant_rng(seed, img, f"{kind} {s!r} {where}")
                x = to_model_size(add_noise(img, kind, s, rng), r) if where == "image" else \
                    add_noise(to_model_size(img, r), kind, s, rng)
                seen = float(np.sqrt((((x - clean) / 255.0) ** 2).mean())) if s else 0.0
                meta.append((src, kind, s, where, seen))
                inputs.append(x)
    kc, l1 = measure_kc(model, np.stack(inputs), eps_v, method, batch_size, _stage(progress, "noise"))
    recs = [{"source": src, "kind": kind, "strength": s, "where": where, "seen": round(seen, 5), "eps": e,
             "kc": int(kc[i, j]), "l1": round(float(l1[i, j]), 6)}
            for i, (src, kind, s, where, seen) in enumerate(meta) for j, e in enumerate(eps_v)]
    rows = pd.DataFrame(recs)
    keys = ["kind", "where", "strength", "eps"]
    summary = rows.groupby(keys, sort=True).agg(kc_median=("kc", "median"), kc_min=("kc", "min"),
                                                kc_max=("kc", "max"), seen=("seen", "mean")).reset_index()
    t_max = model.config.max_tokens
    findings = []
    for (kind, where), gk in summary.groupby(["kind", "where"], sort=True):
        parts, rising = [], True
        for e, g in gk.groupby("eps", sort=True):
            g = g.sort_values("strength")
            full = g[g["kc_median"] >= t_max]
            parts.append(f"ε {e:g}: " + (f"{full['strength'].iloc[0]:g}" if len(full) else "never"))
            rising &= bool((np.diff(g["kc_median"].to_numpy()) >= 0).all())
        findings.append(f"{kind} added at the {where}: median KC reaches T_max ({t_max}) at strength "
                        + "; ".join(parts) + ("; non-decreasing in strength" if rising
                                              else "; NOT monotone in strength at some ε"))
    g = summary[(summary["kind"] == "gaussian") & (summary["strength"] > 0)]
    if len(g):
        img = g[g["where"] == "image"].groupby("strength")["seen"].mean()
        inp = g[g["where"] == "input"].groupby("strength")["seen"].mean()
        s_top = float(img.index.max())
        findings.append(f"Gaussian σ {s_top:g} added at the image's own size leaves an RMS change of "
                        f"{img[s_top]:.3f} in the {r} px model input ({inp[s_top]:.3f} added at the input): "
                        "the resize averages fine noise away, so a noisy large image can score as simple")
    return Study("noise", rows, summary, method, t_max, findings, bad, {"eps": eps_v})


# --- structure -------------------------------------------------------------------------------------
def shuffle_patches(image: np.ndarray, grid: int, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8 (R, R, 3)) cut into grid x grid tiles, put back in a random order (never the
    original one). R must be a multiple of ``grid``; the pixels are exactly the image's."""
    r = image.shape[0]
    if grid < 2 or r % grid or image.shape[1] != r:
        raise UsageError(f"a {grid}x{grid} shuffle needs a square image whose side ({r} px) is a multiple of it")
    p = r // grid
    tiles = image.reshape(grid, p, grid, p, 3).transpose(0, 2, 1, 3, 4).reshape(grid * grid, p, p, 3)
    order = rng.permutation(grid * grid)
    while (order == np.arange(grid * grid)).all():
        order = rng.permutation(grid * grid)
    return tiles[order].reshape(grid, grid, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(r, r, 3)


def randomise_phase(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image's amplitude spectrum with the phase of white noise added (the same phase for every
    channel, so colours stay correlated): a texture with the image's power spectrum and none of its
    structure. The mean is kept; values are clipped to 0-255 (which moves the spectrum slightly)."""
    phase = np.angle(np.fft.fft2(rng.standard_normal(image.shape[:2])))
    phase[0, 0] = 0.0
    f = np.fft.fft2(image.astype(float), axes=(0, 1))
    out = np.fft.ifft2(f * np.exp(1j * phase)[..., None], axes=(0, 1)).real
    return np.clip(out, 0, 255).round().astype(np.uint8)


def permute_pixels(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image's pixels (RGB triples kept) in a random order: its colour histogram, no structure."""
    flat = image.reshape(-1, 3)
    return flat[rng.permutation(len(flat))].reshape(image.shape)


def variant_rng(seed: int, image: np.ndarray, variant: str) -> np.random.Generator:
    """The random stream of one variant of one image: it depends only on ``seed``, the image's pixels
    and the variant's name (``"shuffle 4x4"``, ``"phase"``, ``"gaussian 0.1 image"``), never on which
    other images, grids or strengths the same run computes, nor on their order."""
    digest = hashlib.sha256(repr(image.shape).encode() + image.tobytes() + b"\0" + variant.encode()).digest()
    return np.random.default_rng([seed, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


def structure_steps(image: np.ndarray, grids: Sequence[int], seed: int) -> list[tuple[str, np.ndarray]]:
    """(step name, image) from intact to structureless: original, shuffle g x g for each grid
    (coarse to fine), phase randomised, pixels permuted. Each step draws from its own
    ``variant_rng(seed, image, name)``, so a step's image is the same whatever ``grids`` holds."""
    def rng(name: str) -> np.random.Generator:
        return variant_rng(seed, image, name)

    steps = [("original", image)]
    steps += [(f"shuffle {g}x{g}", shuffle_patches(image, g, rng(f"shuffle {g}x{g}"))) for g in sorted(grids)]
    return steps + [("phase", randomise_phase(image, rng("phase"))), ("pixels", permute_pixels(image, rng("pixels")))]


def structure(paths: Sequence[str | os.PathLike] | None, model: torch.nn.Module, eps: Sequence[float] = EPS_SERIES,
              grids: Sequence[int] = DEFAULT_GRIDS, method: str | None = None, sample: int | None = None,
              seed: int = 0, batch_size: int = IN_MEMORY_BATCH_SIZE, device: str | torch.device | None = None,
              progress: Progress | None = None) -> Study:
    """KC as structure is destroyed (``structure_steps``) at the model input, so every step holds the
    same pixels the model sees (phase randomisation: the same power spectrum). Sources: the given
    images, or the built-in ``STRUCTURE_FAMILIES``. Rows: source, step, step_index, eps, kc, l1.
    Summary: median and quartiles of KC over sources per (step, ε)."""
    method, dev = _prep(model, method, device)
    eps_v = sorted(validate_eps(eps))
    r = model.config.resolution
    bad_grids = [g for g in grids if g < 2 or r % g or g >= r]
    if bad_grids:
        raise UsageError(f"grids must divide the {r} px model input and lie in 2..{r // 2}: not {bad_grids}")
    if paths:
        items, bad = load_inputs(paths, resolution=r, sample=sample, seed=seed)
    else:
        items, bad = [(fam, to_model_size(procedural(fam, r, seed + k), r))
                      for k, fam in enumerate(STRUCTURE_FAMILIES)], []
    meta, inputs = [], []
    for src, img in items:
        for k, (step, x) in enumerate(structure_steps(img, grids, seed)):
            meta.append((src, step, k))
            inputs.append(x)
    kc, l1 = measure_kc(model, np.stack(inputs), eps_v, method, batch_size, _stage(progress, "structure"))
    rows = pd.DataFrame([{"source": src, "step": step, "step_index": k, "eps": e, "kc": int(kc[i, j]),
                          "l1": round(float(l1[i, j]), 6)}
                         for i, (src, step, k) in enumerate(meta) for j, e in enumerate(eps_v)])
    summary = rows.groupby(["step_index", "step", "eps"], sort=True)["kc"].describe()[
        ["25%", "50%", "75%"]].rename(columns={"25%": "kc_q25", "50%": "kc_median", "75%": "kc_q75"}).reset_index()
    findings = []
    for e in eps_v:
        g = rows[rows["eps"] == e]
        orig = g[g["step"] == "original"].set_index("source")["kc"]
        shuf = g[g["step"].str.startswith("shuffle")]
        cheaper = shuf[shuf["kc"].to_numpy() < orig.loc[shuf["source"]].to_numpy()]
        med = summary[summary["eps"] == e].set_index("step")["kc_median"]
        findings.append(f"ε {e:g}: median KC original {med['original']:g}, finest shuffle "
                        f"{med[f'shuffle {max(grids)}x{max(grids)}']:g}, phase {med['phase']:g}, pixels "
                        f"{med['pixels']:g}; {len(cheaper)} of {len(shuf)} shuffles cheaper than their original")
    return Study("structure", rows, summary, method, model.config.max_tokens, findings, bad,
                 {"eps": eps_v, "example": items[0], "grids": sorted(grids), "seed": seed})


# --- familiarity -----------------------------------------------------------------------------------
def make_control(image: np.ndarray, control: str) -> np.ndarray:
    """A less familiar image with the same pixel statistics: ``flip`` (upside down), ``invert``
    (255 − value) or ``swap`` (RGB -> BGR)."""
    if control == "flip":
        return np.ascontiguousarray(image[::-1])
    if control == "invert":
        return 255 - image
    if control == "swap":
        return np.ascontiguousarray(image[..., ::-1])
    raise UsageError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")


def _rank_biserial_paired(d: np.ndarray, axis: int = -1) -> np.ndarray:
    """Matched-pairs rank-biserial correlation of differences d (zeros dropped): (R+ − R−) / (R+ + R−),
    in [−1, 1]; 0 where every difference is 0 (no pair leans either way) (Kerby 2014)."""
    d = np.moveaxis(np.asarray(d, dtype=float), axis, -1)
    ranks = st.rankdata(np.where(d == 0, np.nan, np.abs(d)), axis=-1, nan_policy="omit")
    ranks = np.nan_to_num(ranks)
    pos, neg = (ranks * (d > 0)).sum(-1), (ranks * (d < 0)).sum(-1)
    total = pos + neg
    return np.where(total > 0, (pos - neg) / np.where(total > 0, total, 1.0), 0.0)


def _cliffs_delta(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """Cliff's δ = P(a > b) − P(a < b) (= the rank-biserial correlation of Mann–Whitney U), in [−1, 1]."""
    u = st.mannwhitneyu(a, b, axis=axis, method="asymptotic").statistic
    return 2.0 * u / (np.shape(a)[axis] * np.shape(b)[axis]) - 1.0


def _bootstrap_ci(data: tuple[np.ndarray, ...], statistic, paired: bool, n_boot: int, seed: int
                  ) -> tuple[float, float]:
    if n_boot == 0 or min(len(d) for d in data) < 3:
        return math.nan, math.nan
    with warnings.catch_warnings():   # resamples of tied KC are degenerate by nature; the interval is still right
        warnings.simplefilter("ignore", st.DegenerateDataWarning)
        res = st.bootstrap(data, statistic, paired=paired, vectorized=True, n_resamples=n_boot,
                           method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare_kc(a: np.ndarray, b: np.ndarray, paired: bool, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Rank test and effect size of KC in group b against group a.

    Paired (a control of each image): Wilcoxon signed-rank on b − a (zero differences dropped) and the
    matched-pairs rank-biserial correlation; unpaired (two folders): two-sided Mann–Whitney U and
    Cliff's δ. Effect > 0: b needs more tokens; 0 when every pair is tied. CI: percentile bootstrap
    (scipy.stats.bootstrap, ``n_boot`` resamples, seeded), NaN with fewer than 3 items. p is NaN when
    no difference exists.
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    out = {"n_a": len(a), "n_b": len(b), "kc_median_a": float(np.median(a)), "kc_median_b": float(np.median(b))}
    if paired:
        d = b - a
        out["test"] = "wilcoxon"
        out["p"] = float(st.wilcoxon(d).pvalue) if (d != 0).sum() >= 1 else math.nan
        out["effect"] = float(_rank_biserial_paired(d))
        out["effect_name"] = "rank-biserial"
        lo, hi = _bootstrap_ci((d,), lambda x, axis=-1: _rank_biserial_paired(x, axis), False, n_boot, seed)
    else:
        out["test"] = "mann-whitney"
        same = np.unique(np.concatenate([a, b])).size == 1
        out["p"] = math.nan if same else float(st.mannwhitneyu(b, a, alternative="two-sided").pvalue)
        out["effect"] = float(_cliffs_delta(b, a))
        out["effect_name"] = "cliffs-delta"
        lo, hi = (math.nan, math.nan) if same else _bootstrap_ci((b, a), _cliffs_delta, False, n_boot, seed)
    out["effect_lo"], out["effect_hi"] = lo, hi
    return out


def group_names(paths: Sequence[str | os.PathLike], other: Sequence[str | os.PathLike]) -> tuple[str, str]:
    """Names for two groups of inputs, from what the user named: the folders' (or files') names
    joined by '+', with parent folders added until the two differ (``a/images`` vs ``b/images``)."""
    def name(ps: Sequence[str | os.PathLike], depth: int) -> str:
        return "+".join("/".join(Path(os.path.abspath(p)).parts[-depth:]) for p in ps)

    for depth in range(1, 6):
        a, b = name(paths, depth), name(other, depth)
        if a != b:
            return a, b
    return name(paths, 1), name(other, 1) + " (other)"


def familiarity(paths: Sequence[str | os.PathLike], model: torch.nn.Module,
                other: Sequence[str | os.PathLike] | None = None, controls: Sequence[str] = CONTROLS,
                eps: Sequence[float] = EPS_SERIES, method: str | None = None, n_boot: int = BOOTSTRAP,
                sample: int | None = None, seed: int = 0, batch_size: int = IN_MEMORY_BATCH_SIZE,
                device: str | torch.device | None = None, progress: Progress | None = None) -> Study:
    """KC of familiar against unfamiliar images (KARL paper §4.5). With ``other`` (a second set of
    images, out of distribution) the groups are ``paths`` vs ``other`` (Mann–Whitney U); without it
    each image is compared with its ``controls`` (Wilcoxon signed-rank, paired). Groups are named by
    their folders with ``other`` (``group_names``), else ``original`` and the controls. Rows: path, group,
    eps, kc, l1. Summary (``compare_kc``): one row per (group, ε)."""
    method, dev = _prep(model, method, device)
    eps_v = sorted(validate_eps(eps))
    r = model.config.resolution
    items, bad = load_inputs(paths, resolution=r, sample=sample, seed=seed)
    base_name, other_name = group_names(paths, other) if other else ("original", "")
    groups: list[tuple[str, list[tuple[str, np.ndarray]]]] = [(base_name, items)]
    if other:
        more, bad2 = load_inputs(other, resolution=r, sample=sample, seed=seed)
        groups.append((other_name, more))
        bad += bad2
    else:
        for c in controls:
            groups.append((c, [(p, make_control(a, c)) for p, a in items]))
    inputs = np.stack([a for _, g in groups for _, a in g])
    kc, l1 = measure_kc(model, inputs, eps_v, method, batch_size, _stage(progress, "familiarity"))
    recs, i = [], 0
    for name, g in groups:
        for p, _ in g:
            recs += [{"path": p, "group": name, "eps": e, "kc": int(kc[i, j]), "l1": round(float(l1[i, j]), 6)}
                     for j, e in enumerate(eps_v)]
            i += 1
    rows = pd.DataFrame(recs)
    summary, findings = [], []
    for name, _ in groups[1:]:
        parts = []
        for e in eps_v:
            base = rows[(rows["group"] == base_name) & (rows["eps"] == e)]["kc"].to_numpy()
            vs = rows[(rows["group"] == name) & (rows["eps"] == e)]["kc"].to_numpy()
            s = {"group": name, "eps": e, **compare_kc(base, vs, paired=not other, n_boot=n_boot, seed=seed)}
            summary.append(s)
            if not math.isfinite(s["p"]):
                parts.append(f"ε {e:g}: no difference (every KC equal)")
                continue
            parts.append(f"ε {e:g}: median KC {s['kc_median_a']:g} -> {s['kc_median_b']:g}, {s['effect_name']} "
                         f"{s['effect']:+.2f} [{s['effect_lo']:+.2f}, {s['effect_hi']:+.2f}], p {s['p']:.2g}"
                         + ("" if s["p"] < 0.05 else " (n.s.)"))
        findings.append(f"{name} vs {base_name}: " + "; ".join(parts))
    return Study("familiarity", rows, pd.DataFrame(summary), method, model.config.max_tokens, findings, bad,
                 {"eps": eps_v, "paired": not other})


# --- where the tokens go ---------------------------------------------------------------------------
def token_map(model: torch.nn.Module, image: np.ndarray, eps: Sequence[float] = EPS_SERIES, patch: int = 4,
              device: str | torch.device | None = None) -> dict:
    """Per ``patch`` x ``patch`` block of the model input: the smallest budget whose reconstruction's
    mean absolute error over that block (all channels, 0-1 scale) is <= ε. Works for every model
    (``oracle.budget_reconstructions``). image: uint8 (R, R, 3) at the model size.

    Returns {"budgets": float (E, R/patch, R/patch) (NaN: no budget reaches ε there),
    "kc": int (E,) the whole image's oracle KC (``measure``, method prefix for KARL, search for ALIT),
    "eps": list}. ``patch`` must divide R.
    """
    r = model.config.resolution
    if patch < 1 or r % patch:
        raise UsageError(f"--patch must divide the {r} px model input, got {patch}")
    eps_v = sorted(validate_eps(eps))
    dev = resolve_device(device, model)
    prepare_model(model, dev)
    g = r // patch
    found = np.full((len(eps_v), g, g), np.nan)
    eps_t = torch.tensor(eps_v, device=dev).view(-1, 1, 1)
    with inference(dev):
        x = to_model_input(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None], dev)
        for t, rec in budget_reconstructions(model, x):
            err = (rec - x.float()).abs().mean(dim=1)                                  # (1, R, R)
            local = torch.nn.functional.avg_pool2d(err[:, None], patch)[0, 0]         # (g, g)
            new = (local[None] <= eps_t).cpu().numpy() & np.isnan(found)
            found[new] = t
            if not np.isnan(found).any():
                break
    oracle = measure(model, x, eps_v, oracle_method(model))
    return {"budgets": found, "kc": oracle.kc[0].numpy(), "eps": eps_v}


def token_maps(paths: Sequence[str | os.PathLike], model: torch.nn.Module, eps: Sequence[float] = EPS_SERIES,
               patch: int = 4, sample: int | None = None, seed: int = 0, device: str | torch.device | None = None,
               progress: Progress | None = None) -> Study:
    """``token_map`` for every image. Rows (the map's values): path, eps, row, col, y, x (the block's
    top-left pixel at the model input), budget (empty where no budget reaches ε). Summary per image and
    ε: the whole-image oracle KC, the median and maximum block budget, and the share of blocks that
    never reach ε. ``extra["maps"]``: path -> (uint8 image, token_map result) for the figures."""
    dev = resolve_device(device, model)
    prepare_model(model, dev)
    r = model.config.resolution
    items, bad = load_inputs(paths, resolution=r, sample=sample, seed=seed)
    recs, summary, maps = [], [], {}
    for n, (p, img) in enumerate(items):
        m = token_map(model, img, eps, patch, dev)
        maps[p] = (img, m)
        for j, e in enumerate(m["eps"]):
            b = m["budgets"][j]
            rr, cc = np.indices(b.shape)
            recs.append(pd.DataFrame({"path": p, "eps": e, "row": rr.ravel(), "col": cc.ravel(),
                                      "y": rr.ravel() * patch, "x": cc.ravel() * patch,
                                      "budget": pd.Series(b.ravel()).astype("Int64")}))
            ok = b[np.isfinite(b)]
            summary.append({"path": p, "eps": e, "kc": int(m["kc"][j]),
                            "block_median": float(np.median(ok)) if ok.size else math.nan,
                            "block_max": float(ok.max()) if ok.size else math.nan,
                            "unreached": float(np.isnan(b).mean())})
        if progress:
            progress(n + 1, len(items), "maps")
    method = oracle_method(model)
    return Study("map", pd.concat(recs, ignore_index=True), pd.DataFrame(summary), method,
                 model.config.max_tokens, [], bad, {"maps": maps, "patch": patch, "eps": sorted(validate_eps(eps))})


# --- output ----------------------------------------------------------------------------------------
def save_rows(study: Study, csv: str | os.PathLike | None = None, json: str | os.PathLike | None = None) -> None:
    """Write ``study.rows`` as CSV and/or JSON records (``io.rows.write_table``: atomic, valid UTF-8)."""
    for path, fmt in ((csv, "csv"), (json, "json")):
        if path is not None:
            write_table(study.rows, path, fmt)


def summary_view(study: Study) -> pd.DataFrame:
    """The study's summary as the terminal shows it: a small table, numbers rounded."""
    s = study.summary
    if study.name == "profile":
        eps = study.extra["eps"]
        show = [e for e in EPS_SERIES if e in eps] or [eps[0], eps[len(eps) // 2], eps[-1]]
        out = []
        for folder, g in study.rows.groupby("folder", sort=True):
            rec = {"folder": folder, "images": len(g), "kc_area (median)": round(float(g["kc_area"].median()), 1)}
            rec.update({f"KC ε {e:g} (median)": float(g[f"kc@{e:g}"].median()) for e in dict.fromkeys(show)})
            out.append(rec)
        return pd.DataFrame(out)
    if study.name == "noise":
        out = []
        for (kind, strength), g in s.groupby(["kind", "strength"], sort=True):
            rec = {"kind": kind, "strength": strength}
            for e, ge in g.groupby("eps", sort=True):
                kc = ge.set_index("where")["kc_median"]
                rec[f"KC ε {e:g} input/image"] = f"{kc.get('input', np.nan):g}/{kc.get('image', np.nan):g}"
            seen = g.groupby("where")["seen"].mean()
            rec["RMS in/img"] = f"{seen.get('input', np.nan):.3f}/{seen.get('image', np.nan):.3f}"
            out.append(rec)
        return pd.DataFrame(out)
    if study.name == "structure":
        v = s.pivot_table(index=["step_index", "step"], columns="eps", values="kc_median")
        v.columns = [f"KC ε {e:g}" for e in v.columns]
        return v.reset_index().drop(columns="step_index")
    if study.name == "familiarity":
        v = s[["group", "eps", "kc_median_a", "kc_median_b", "effect", "effect_lo", "effect_hi", "p"]]
        return v.rename(columns={"kc_median_a": "KC in", "kc_median_b": "KC group"}).round(3)
    if study.name == "map":
        return s.assign(path=[Path(p).name for p in s["path"]]).round(3)
    return s
