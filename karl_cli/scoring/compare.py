"""KARL and its peers side by side, in the shape of the KARL paper's Table 2.

    from karl_cli.scoring.compare import compare, load_models
    df = compare(["imgs/"], load_models(["weights/karl-small", "weights/alit-small"]), [0.03, 0.05, 0.09])

For each ε and each (model, method) — KARL ``single`` (one pass), KARL ``search``, ALIT ``search`` — one row:

- ``tokens``: mean token count used (single pass: tokens kept by the halting head; search: the
  smallest budget whose reconstruction reaches pixel L1 <= ε, T_max when none does).
- ``over_target``: share of images whose reconstruction misses ε (l1 > ε), the paper's failure rate.
- ``l1`` / ``psnr`` / ``ssim``: mean reconstruction quality of the reconstruction from those tokens,
  at the model resolution, pixels in [0, 1] (SSIM: Gaussian window σ=1.5, 11 taps, per channel).
- ``encoder_runs`` / ``decoder_runs``: mean model passes per image. Single pass: 1 / 1. KARL search:
  k / k (it re-encodes at every budget tried, k = budgets tried). ALIT search: k / k where one
  encoder run is one recurrent iteration (it continues the rollout, it does not restart it).
- ``sec_per_image``: wall time of the model work (no image loading) / images, measured per
  (ε, model, method) after an untimed warm-up batch.

Every number comes from the measuring core (``measure.measure`` with ``keep_recon``, one ε at a
time), the one ``karl complexity`` runs; PSNR and SSIM are computed here from its reconstructions.
Both searches are the oracle's (``oracle.sweep``): KARL re-encodes at every budget conditioned on
the smallest ε bin (the setting phase 1 trains every budget under) and decodes all tokens; ALIT
continues its rollout one iteration a step.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from karl_cli.defaults import EPS_SERIES, IN_MEMORY_BATCH_SIZE
from karl_cli.errors import UsageError
from karl_cli.models.pretrained import load, weights_path
from karl_cli.runtime import inference, prepare_model, resolve_device, to_model_input
from karl_cli.scoring.measure import load_inputs, measure
from karl_cli.scoring.methods import check_eps, methods_for, validate_eps

COLUMNS = ["eps", "model", "method", "images", "tokens", "over_target", "l1", "psnr", "ssim",
           "encoder_runs", "decoder_runs", "sec_per_image"]
SINGLE, SEARCH = "single", "search"   # the methods of the paper's Table 2 (of ``methods.METHODS``)
TABLE_METHODS = (SINGLE, SEARCH)


# --- metrics -------------------------------------------------------------------------------------
def _gaussian_window(sigma: float, truncate: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of (B, C, H, W) batches: Gaussian window σ=1.5 (11 taps),
    K1=0.01, K2=0.03, population covariances, mean over channels and the positions where the window
    fits (the definition of ``skimage.metrics.structural_similarity(gaussian_weights=True,
    use_sample_covariance=False, channel_axis=...)``). Returns (B,) float64."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    x, y = x.double(), y.double()
    c = x.shape[1]
    g = _gaussian_window(sigma, 3.5, x.device, x.dtype)
    if min(x.shape[-2:]) < g.numel():
        raise ValueError(f"ssim needs images of at least {g.numel()}x{g.numel()} pixels, got {tuple(x.shape[-2:])}")
    gh = g.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    gv = g.view(1, 1, -1, 1).expand(c, 1, -1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, gh, groups=c), gv, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (MSE floored at 1e-10, i.e. at most 100 dB for data_range 1)."""
    mse = (x.double() - y.double()).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return 10.0 * torch.log10(data_range ** 2 / mse)


# --- the methods ---------------------------------------------------------------------------------
def table_methods(model: torch.nn.Module) -> list[str]:
    """The Table-2 rows a model gets: of ``TABLE_METHODS``, those it supports (``methods.methods_for``)."""
    return [m for m in TABLE_METHODS if m in methods_for(model)]


# --- the comparison ------------------------------------------------------------------------------
def _load(paths: Iterable[str | Path], resolution: int) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Every input at the model resolution (``measure.load_inputs``) as uint8 (N, 3, R, R), and the
    (path, reason) of those that could not be read. UsageError when none can be."""
    good, skipped = load_inputs(paths, resolution)
    return torch.from_numpy(np.stack([a for _, a in good]).transpose(0, 3, 1, 2).copy()), skipped


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def compare(paths: str | Path | Sequence[str | Path], models: Mapping[str, torch.nn.Module],
            eps_list: Sequence[float] = EPS_SERIES, batch_size: int = IN_MEMORY_BATCH_SIZE,
            device: str | torch.device | None = None,
            progress: Callable[[int, int, str], None] | None = None) -> pd.DataFrame:
    """The Table-2 comparison (see the module docstring): one row per (ε, model, method), columns
    ``COLUMNS``. Unreadable images are left out; ``df.attrs["skipped"]`` lists (path, reason).
    ``progress(done, total, stage)``: images measured of all (model, method, ε) passes, after each
    batch; ``stage`` names the pass ("karl-small search ε=0.05")."""

    eps_list = validate_eps(eps_list)
    if not models:
        raise UsageError("give at least one model to compare")
    for model in models.values():
        check_eps(model, SINGLE, eps_list)
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows, skipped_all = [], {}
    cache: dict[int, tuple[torch.Tensor, list]] = {}
    for model in models.values():
        if model.config.resolution not in cache:
            cache[model.config.resolution] = _load(paths, model.config.resolution)
    total = sum(cache[m.config.resolution][0].shape[0] * len(eps_list) * len(table_methods(m)) for m in models.values())
    done = 0
    for name, model in models.items():
        data, skipped = cache[model.config.resolution]
        skipped_all.update(dict(skipped))
        dev = resolve_device(device, model)
        prepare_model(model, dev)
        with inference(dev):   # warm-up, untimed: first-call allocations and kernel choices
            x = to_model_input(data[: min(batch_size, 4)], dev)
            for method in table_methods(model):
                measure(model, x, eps_list[:1], method, keep_recon=True)
        for eps in eps_list:
            for method in table_methods(model):
                stage = f"{name} {method} ε={eps:g}"
                if progress:
                    progress(done, total, stage)
                acc: dict[str, list[torch.Tensor]] = {k: [] for k in ("kc", "l1", "psnr", "ssim", "enc", "dec")}
                seconds = 0.0
                for start in range(0, data.shape[0], batch_size):
                    with inference(dev):
                        x = to_model_input(data[start:start + batch_size], dev)
                        _sync(dev)
                        t0 = time.perf_counter()
                        m = measure(model, x, [eps], method, keep_recon=True)
                        _sync(dev)
                        seconds += time.perf_counter() - t0
                        rec, tgt = m.recon[:, 0].float(), x.float()
                        acc["kc"].append(m.kc[:, 0])
                        acc["l1"].append((rec - tgt).abs().mean(dim=(1, 2, 3)).double().cpu())
                        acc["psnr"].append(psnr(rec, tgt).cpu())
                        acc["ssim"].append(ssim(rec, tgt).cpu())
                        acc["enc"].append(m.encoder_runs[:, 0])
                        acc["dec"].append(m.decoder_runs[:, 0])
                    done += x.shape[0]
                    if progress:
                        progress(done, total, stage)
                cat = {k: torch.cat(v).double() for k, v in acc.items()}
                n = int(cat["kc"].numel())
                rows.append({"eps": eps, "model": name, "method": method, "images": n,
                             "tokens": float(cat["kc"].mean()),
                             "over_target": float((cat["l1"] > eps + 1e-12).double().mean()),
                             "l1": float(cat["l1"].mean()), "psnr": float(cat["psnr"].mean()),
                             "ssim": float(cat["ssim"].mean()), "encoder_runs": float(cat["enc"].mean()),
                             "decoder_runs": float(cat["dec"].mean()), "sec_per_image": seconds / n})
    # Grouped by ε like the paper's table; models in the order given, single before search.
    df = pd.DataFrame(rows, columns=COLUMNS).sort_values("eps", kind="stable").reset_index(drop=True)
    df.attrs["skipped"] = sorted(skipped_all.items())
    return df


# --- CLI helpers ---------------------------------------------------------------------------------
def load_models(names_or_dirs: Sequence[str | Path], device: str | torch.device = "cpu") -> dict[str, torch.nn.Module]:
    """Shipped model names or weights directories -> {name: model} (``pretrained.load``); the name is
    the directory's name (made unique)."""
    if not names_or_dirs:
        raise UsageError("give at least one --weights (a shipped model name or a directory)")
    models: dict[str, torch.nn.Module] = {}
    for d in names_or_dirs:
        model = load(d, device=device)
        name = weights_path(d).resolve().name or str(d)
        base, i = name, 2
        while name in models:
            name, i = f"{base}#{i}", i + 1
        models[name] = model
    return models


def render_table(df: pd.DataFrame, title: str | None = None):
    """A rich Table of ``compare``'s frame, one block of rows per ε."""
    from rich.table import Table

    table = Table(title=title or "KARL vs search (KARL paper, Table 2)")
    for col, just in [("ε", "right"), ("model", "left"), ("method", "left"), ("tokens", "right"),
                      ("over ε", "right"), ("L1", "right"), ("PSNR", "right"), ("SSIM", "right"),
                      ("enc runs", "right"), ("dec runs", "right"), ("ms/img", "right")]:
        table.add_column(col, justify=just, no_wrap=col in ("model", "method"))
    last_eps = None
    for r in df.itertuples(index=False):
        if last_eps is not None and r.eps != last_eps:
            table.add_section()
        last_eps = r.eps
        table.add_row(f"{r.eps:g}", str(r.model), str(r.method), f"{r.tokens:.1f}", f"{100 * r.over_target:.0f}%",
                      f"{r.l1:.4f}", f"{r.psnr:.2f}", f"{r.ssim:.3f}", f"{r.encoder_runs:.2f}",
                      f"{r.decoder_runs:.2f}", f"{1000 * r.sec_per_image:.2f}")
    return table
