#!/usr/bin/env python
"""How good is the single pass? Issue #5's measurements of a KARL model on held-out images.

    python benchmarks/quality.py HELD_OUT_FOLDER [--weights DIR] [--eps 0.03 --eps 0.05 --eps 0.09]
                                 [--limit N] [--savoias ROOT] [--batch-size 64] [--workers 0]
                                 [--device auto] [--threads N] [--family-size 16] [--seed 0]
                                 [--json OUT.json] [--markdown OUT.md]

For each ε it prints (all at the model resolution, pixels in [0, 1], pixel L1 as in training):

1. **Single pass vs oracle.** The share of images whose single-pass reconstruction misses the target
   (l1 > ε: the decoder's reconstruction, ``check="decoder"``, the gate's definition) next to the
   KARL paper's figures (1 / 10 / 18 % at ε = .03 / .05 / .09), and beside it the same share and mean
   L1 for the code's own reconstruction of the kept tokens (``code_l1``, what ``karl complexity``
   checks by default on a wavelet KARL; "—" for a model without it); mean single-pass
   KC (``complexity.score(method="single")``) and mean oracle KC, the smallest budget whose
   reconstruction meets ε (what ``karl complexity --method prefix`` reports; the same as ``--method
   search`` because the encoder is causal in its latents), and their ratio (target: <= 1.05); the
   share of images the oracle cannot bring under ε even at T_max (its KC is then T_max: a floor, not
   a measurement); Spearman ρ between single-pass and oracle KC; the tokens used as a share of T_max
   next to the paper's (253 / 230 / 153 of 256).
2. **Rate–distortion.** L1 / PSNR / SSIM at every budget: prefix decodes of one T_max encoding
   conditioned on the smallest ε bin (the oracle's setting). Beside it, JPEG at matched bytes: the
   tokens are counted at 16 bits per latent value (budget × latent_dim × 2 bytes, no entropy coding,
   no side information), and JPEG's size is its entropy-coded scan data (the bytes between the SOS
   header and EOI; the ~620 bytes of headers and quantisation/Huffman tables a 64 px file carries are
   left out, as a codec with shared tables would not send them). Pillow JPEG (4:2:0, baseline) is run
   at a grid of qualities; its mean L1/PSNR/SSIM are interpolated (in bytes) to the token bytes; "—"
   where the token bytes lie outside JPEG's range.
3. **Monotonicity on synthetic families**: constant < gradient < few shapes < many shapes < texture
   < noise, ``--family-size`` images each at the model resolution from a seeded RNG; mean single-pass
   KC (and oracle KC, JPEG bytes/pixel) per family at each ε, and whether the order holds (strictly;
   Spearman ρ of family rank vs KC over all images as a graded measure).
4. With ``--savoias ROOT``: the Savoias correlation table (Spearman ρ of KC and of the JPEG/PNG
   baselines with human ratings per category) through ``karl_cli.analysis.correlate.correlate`` (scores cached).

Terminal: rich tables. ``--json``: every number. ``--markdown``: a README-ready block naming the
machine (CPU model, cores, device) and the command. ``--limit N`` takes N images spread evenly over
the sorted file list. Held-out images must not be training images (the default model trains on
the shared data's imagenet-sample). Run it under ``nice -n 19`` on a shared machine.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import karl_cli  # noqa: F401 - first: its OpenMP wait policy must be set before torch loads
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))   # the sibling module machine.py
from machine import machine_info  # noqa: E402
from karl_cli.scoring.compare import psnr, ssim
from karl_cli.models.pretrained import DEFAULT_MODEL, load
from karl_cli.scoring.methods import methods_for
from karl_cli.scoring.oracle import budget_reconstructions, smallest_budget
from karl_cli.scoring.complexity import score
from karl_cli.scoring.measure import collect_inputs, image_batches
from karl_cli.scoring.methods import validate_eps
from karl_cli.defaults import EPS_SERIES
from karl_cli.errors import KarlError, UsageError
from karl_cli.runtime import inference, prepare_model, resolve_device, to_model_input
from karl_cli.analysis.correlate import POOLED_LABEL
from karl_cli.analysis.stats import spearman
from karl_cli.io.synthetic import FAMILIES, make_family_image

REPO = Path(__file__).resolve().parent.parent
# KARL paper (ImageNet-100, 256 px): share of images missing ε, and tokens used of 256 (KARL paper, Table 1).
PAPER_MISS = {0.03: 0.01, 0.05: 0.10, 0.07: 0.25, 0.09: 0.18, 0.11: 0.36}
PAPER_TOKENS = {0.03: 253 / 256, 0.05: 230 / 256, 0.09: 153 / 256}
TARGET_RATIO = 1.05
JPEG_QUALITIES = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 35, 40, 50, 60, 70, 75, 80, 85, 90, 95)
BYTES_PER_VALUE = 2   # 16 bits per latent value


# --- the machine -----------------------------------------------------------------------------------
def machine_line(m: dict[str, Any]) -> str:
    s = f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), device {m['device']}"
    if m.get("gpu"):
        s += f" ({m['gpu']})"
    return s + f", torch {m['torch']}, karl {m['karl']}"


# --- helpers ---------------------------------------------------------------------------------------
def spread(items: Sequence[Any], limit: int | None) -> list[Any]:
    """``limit`` items spread evenly over ``items`` (all of them without a limit)."""
    items = list(items)
    if not limit or limit >= len(items):
        return items
    idx = sorted({int(i * len(items) / limit) for i in range(limit)})
    return [items[i] for i in idx]


def _f(v: Any) -> float | None:
    """JSON-safe float (NaN/inf -> None)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def jpeg_scan_bytes(data: bytes) -> int:
    """Bytes of a baseline JPEG's entropy-coded data: from after the SOS header to before EOI."""
    sos = data.find(b"\xff\xda")
    if sos < 0:
        return len(data)
    header = int.from_bytes(data[sos + 2:sos + 4], "big")
    end = len(data) - 2 if data.endswith(b"\xff\xd9") else len(data)
    return max(0, end - (sos + 2 + header))


def oracle_kc(l1: np.ndarray, budgets: Sequence[int], eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the oracle KC at ε from its L1 at each budget (N, K) (``oracle.smallest_budget``: T_max
    when none meets ε), and whether one did."""
    kc, met = smallest_budget(torch.from_numpy(np.asarray(l1)), budgets, [eps])
    return kc[:, 0].numpy(), met[:, 0].numpy()


# --- model passes ----------------------------------------------------------------------------------
def budget_curves(items, model, batch_size: int, workers: int, dev: torch.device,
                  jpeg_qualities: Sequence[int] = ()) -> dict[str, Any]:
    """Per image and budget: L1 / PSNR / SSIM of the prefix decode of one T_max encoding conditioned on
    the smallest ε bin; with ``jpeg_qualities`` the same metrics and the bytes of JPEG at each quality."""
    cfg = model.config
    budgets = cfg.budgets
    out: dict[str, list] = {k: [] for k in ("paths", "l1", "psnr", "ssim", "jpeg_bytes", "jpeg_scan",
                                            "jpeg_l1", "jpeg_psnr", "jpeg_ssim")}
    for batch in image_batches(items, cfg.resolution, batch_size, workers, pin_memory=dev.type == "cuda"):
        if batch["images"] is None:
            continue
        out["paths"] += [p for p, e in zip(batch["paths"], batch["errors"]) if e is None]
        with inference(dev):
            x = to_model_input(batch["images"], dev)
            cols: dict[str, list] = {"l1": [], "psnr": [], "ssim": []}
            for _, rec in budget_reconstructions(model, x):
                cols["l1"].append((rec - x).abs().mean(dim=(1, 2, 3)).cpu())
                cols["psnr"].append(psnr(rec, x).cpu())
                cols["ssim"].append(ssim(rec, x).cpu())
        for k, v in cols.items():
            out[k].append(torch.stack(v, 1).double().numpy())
        if jpeg_qualities:
            arrays = batch["images"].permute(0, 2, 3, 1).contiguous().numpy()
            ref = batch["images"].double() / 255.0
            jcols: dict[str, list] = {k: [] for k in ("jpeg_bytes", "jpeg_scan", "jpeg_l1", "jpeg_psnr", "jpeg_ssim")}
            for q in jpeg_qualities:
                sizes, scans, decoded = [], [], []
                for a in arrays:
                    buf = io.BytesIO()
                    Image.fromarray(a).save(buf, format="JPEG", quality=int(q))
                    data = buf.getvalue()
                    sizes.append(len(data))
                    scans.append(jpeg_scan_bytes(data))
                    decoded.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
                dec = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).double() / 255.0
                jcols["jpeg_bytes"].append(torch.tensor(sizes, dtype=torch.float64))
                jcols["jpeg_scan"].append(torch.tensor(scans, dtype=torch.float64))
                jcols["jpeg_l1"].append((dec - ref).abs().mean(dim=(1, 2, 3)))
                jcols["jpeg_psnr"].append(psnr(dec, ref))
                jcols["jpeg_ssim"].append(ssim(dec, ref))
            for k, v in jcols.items():
                out[k].append(torch.stack(v, 1).numpy())
    res: dict[str, Any] = {"paths": out["paths"], "budgets": list(budgets)}
    for k, v in out.items():
        if k != "paths":
            res[k] = np.concatenate(v) if v else None
    return res


def single_rows(items, model, eps_list, batch_size: int, workers: int, dev: torch.device,
                baselines: bool = False, check: str = "decoder") -> dict[str, dict[float, dict]]:
    """``complexity.score(method="single", check=check)``: path -> ε -> row (ok rows only). The
    decoder check (the default) fills ``l1`` and, for a wavelet KARL, ``code_l1``."""
    rows: dict[str, dict[float, dict]] = {}
    for r in score(items, model, eps_list, method="single", baselines=baselines, batch_size=batch_size,
                   workers=workers, device=dev, check=check):
        if r["status"] == "ok":
            rows.setdefault(r["path"], {})[r["eps"]] = r
    return rows


# --- 1. single pass vs oracle ------------------------------------------------------------------------
def single_vs_oracle(curves: dict[str, Any], single: dict[str, dict[float, dict]], eps_list, t_max: int) -> list[dict]:
    paths = [p for p in curves["paths"] if p in single]
    pos = {p: i for i, p in enumerate(curves["paths"])}
    l1 = curves["l1"][[pos[p] for p in paths]] if paths else np.zeros((0, len(curves["budgets"])))
    out = []
    for e in eps_list:
        kc_s = np.array([single[p][e]["kc"] for p in paths], dtype=float)
        l1_s = np.array([single[p][e]["l1"] for p in paths], dtype=float)
        code_s = np.array([np.nan if single[p][e].get("code_l1") is None else single[p][e]["code_l1"]
                           for p in paths], dtype=float)
        has_code = bool(code_s.size) and not np.isnan(code_s).any()
        kc_o, met = oracle_kc(l1, curves["budgets"], e)
        kc_o = kc_o.astype(float)
        n = len(paths)
        mean = (lambda a: float(a.mean()) if a.size else math.nan)
        ratio = mean(kc_s) / mean(kc_o) if n and mean(kc_o) > 0 else math.nan
        ratio_met = (mean(kc_s[met]) / mean(kc_o[met])) if met.any() else math.nan
        out.append({
            "eps": e, "images": n,
            "miss_single": mean((l1_s > e + 1e-12).astype(float)), "paper_miss": PAPER_MISS.get(round(e, 6)),
            "kc_single": mean(kc_s), "kc_oracle": mean(kc_o), "ratio": ratio, "ratio_oracle_met": ratio_met,
            "oracle_unmet": mean((~met).astype(float)),
            "spearman": spearman(kc_s, kc_o) if n >= 3 else math.nan,
            "single_below_oracle": mean((kc_s < kc_o).astype(float)),
            "single_above_oracle": mean((kc_s > kc_o).astype(float)),
            "tokens_share": mean(kc_s) / t_max, "paper_tokens_share": PAPER_TOKENS.get(round(e, 6)),
            "l1_single": mean(l1_s),
            "miss_code": mean((code_s > e + 1e-12).astype(float)) if has_code else math.nan,
            "l1_code": mean(code_s) if has_code else math.nan,
        })
    return out


# --- 2. rate-distortion ------------------------------------------------------------------------------
def rate_distortion(curves: dict[str, Any], latent_dim: int) -> list[dict]:
    rows = []
    have_jpeg = curves.get("jpeg_scan") is not None and len(curves["paths"]) > 0
    if have_jpeg:
        jb = curves["jpeg_scan"].mean(0)
        order = np.argsort(jb)
        jb_sorted = jb[order]
        q_sorted = np.asarray(JPEG_QUALITIES, dtype=float)[order]
        jpeg_means = {k: curves[k].mean(0)[order] for k in ("jpeg_l1", "jpeg_psnr", "jpeg_ssim", "jpeg_bytes")}
    for k, t in enumerate(curves["budgets"]):
        tb = t * latent_dim * BYTES_PER_VALUE
        row = {"budget": t, "token_bytes": tb, "l1": float(curves["l1"][:, k].mean()),
               "psnr": float(curves["psnr"][:, k].mean()), "ssim": float(curves["ssim"][:, k].mean()),
               "jpeg_quality": None, "jpeg_scan_bytes": None, "jpeg_file_bytes": None,
               "jpeg_l1": None, "jpeg_psnr": None, "jpeg_ssim": None}
        if have_jpeg and jb_sorted[0] <= tb <= jb_sorted[-1]:
            row.update(jpeg_quality=float(np.interp(tb, jb_sorted, q_sorted)), jpeg_scan_bytes=float(tb),
                       jpeg_file_bytes=float(np.interp(tb, jb_sorted, jpeg_means["jpeg_bytes"])),
                       jpeg_l1=float(np.interp(tb, jb_sorted, jpeg_means["jpeg_l1"])),
                       jpeg_psnr=float(np.interp(tb, jb_sorted, jpeg_means["jpeg_psnr"])),
                       jpeg_ssim=float(np.interp(tb, jb_sorted, jpeg_means["jpeg_ssim"])))
        rows.append(row)
    return rows


# --- 3. synthetic families ---------------------------------------------------------------------------
def families(model, eps_list, per_family: int, seed: int, batch_size: int, dev: torch.device) -> dict[str, Any]:
    cfg = model.config
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory(prefix="karl-families-") as tmp:
        paths: dict[str, list[str]] = {}
        for fam in FAMILIES:
            for i in range(per_family):
                p = os.path.join(tmp, f"{FAMILIES.index(fam)}-{fam.replace(' ', '_')}-{i:03d}.png")
                Image.fromarray(make_family_image(fam, cfg.resolution, rng)).save(p)
                paths.setdefault(fam, []).append(p)
        items = collect_inputs([tmp])
        single = single_rows(items, model, eps_list, batch_size, 0, dev, baselines=True, check="none")
        curves = budget_curves(items, model, batch_size, 0, dev)
    pos = {p: i for i, p in enumerate(curves["paths"])}
    rows, order = [], {}
    rank_all, kc_all = [], {e: [] for e in eps_list}
    for r, fam in enumerate(FAMILIES):
        ps = [p for p in paths[fam] if p in single and p in pos]
        l1 = curves["l1"][[pos[p] for p in ps]]
        row = {"family": fam, "images": len(ps),
               "jpeg_bpp": float(np.mean([single[p][eps_list[0]]["jpeg_bpp"] for p in ps])), "kc": {}, "oracle": {}}
        for e in eps_list:
            kcs = [single[p][e]["kc"] for p in ps]
            row["kc"][e] = float(np.mean(kcs))
            row["oracle"][e] = float(oracle_kc(l1, curves["budgets"], e)[0].mean())
            kc_all[e] += kcs
        rank_all += [r] * len(ps)
        rows.append(row)
    for e in eps_list:
        means = [row["kc"][e] for row in rows]
        oracle = [row["oracle"][e] for row in rows]
        order[e] = {"strict": all(a < b for a, b in zip(means, means[1:])),
                    "weak": all(a <= b for a, b in zip(means, means[1:])),
                    "violations": [f"{FAMILIES[i]} ≥ {FAMILIES[i + 1]}" for i in range(len(means) - 1)
                                   if not means[i] < means[i + 1]],
                    "spearman": spearman(np.array(rank_all, float), np.array(kc_all[e], float)),
                    "oracle_strict": all(a < b for a, b in zip(oracle, oracle[1:]))}
    return {"per_family": per_family, "seed": seed, "rows": rows, "order": order}


# --- 4. Savoias ----------------------------------------------------------------------------------------
def savoias(root: str, model, eps_list, batch_size: int, workers: int, dev: torch.device, bootstrap: int,
            cache: str | None, no_cache: bool):
    from karl_cli.analysis.correlate import correlate

    return correlate(root, model=model, eps=eps_list, method="single", bootstrap=bootstrap, batch_size=batch_size,
                     workers=workers, device=dev, cache=False if no_cache else cache)


# --- rendering -----------------------------------------------------------------------------------------
def _pct(v: Any, digits: int = 0) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.{digits}f}%"


def _num(v: Any, spec: str) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def tables(report: dict[str, Any], savoias: bool = True) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every section, as plain strings (shared by rich and markdown)."""
    out = []
    t_max = report["model"]["max_tokens"]
    svo = report["single_vs_oracle"]
    rows = [[f"{r['eps']:g}", str(r["images"]), _pct(r["miss_single"]), _pct(r["paper_miss"]),
             _num(r["l1_single"], ".4f"), _pct(r.get("miss_code")), _num(r.get("l1_code"), ".4f"),
             _pct(r["oracle_unmet"])] for r in svo]
    out.append(("Missed targets: share of images with single-pass L1 > ε (decoder; code: code_l1)",
                ["ε", "images", "missed (single)", "paper", "mean L1", "missed (code)", "code L1",
                 "oracle misses at T_max"], rows))
    rows = [[f"{r['eps']:g}", _num(r["kc_single"], ".1f"), _num(r["kc_oracle"], ".1f"), _num(r["ratio"], ".3f"),
             _num(r["ratio_oracle_met"], ".3f"), _num(r["spearman"], ".2f"),
             _pct(r["single_below_oracle"]) + " / " + _pct(r["single_above_oracle"]),
             _pct(r["tokens_share"]) + f" of {t_max}", _pct(r["paper_tokens_share"])] for r in svo]
    out.append((f"Tokens: single pass vs oracle (smallest budget meeting ε; target ratio <= {TARGET_RATIO})",
                ["ε", "KC single", "KC oracle", "ratio", "ratio, oracle met", "ρ", "single < / > oracle",
                 "used", "paper"], rows))
    rows = [[str(r["budget"]), str(r["token_bytes"]), _num(r["l1"], ".4f"), _num(r["psnr"], ".2f"),
             _num(r["ssim"], ".3f"), _num(r["jpeg_quality"], ".1f"), _num(r["jpeg_file_bytes"], ".0f"),
             _num(r["jpeg_l1"], ".4f"), _num(r["jpeg_psnr"], ".2f"), _num(r["jpeg_ssim"], ".3f")]
            for r in report["rate_distortion"]]
    out.append(("Rate–distortion: prefix decodes of a T_max encoding (smallest ε bin) vs JPEG at matched bytes",
                ["tokens", "bytes", "L1", "PSNR", "SSIM", "JPEG q", "file B", "JPEG L1", "PSNR", "SSIM"], rows))
    fam = report["families"]
    eps = report["eps"]
    rows = [[r["family"], str(r["images"]), _num(r["jpeg_bpp"], ".3f")]
            + [_num(r["kc"][e], ".1f") for e in eps] + [_num(r["oracle"][e], ".1f") for e in eps]
            for r in fam["rows"]]
    o = fam["order"]
    rows.append(["order holds?", "", ""]
                + [("yes" if o[e]["strict"] else "ties" if o[e]["weak"] else "no")
                   + f" (ρ {_num(o[e]['spearman'], '.2f')})" for e in eps] + [("yes" if o[e]["oracle_strict"] else "no") for e in eps])
    out.append((f"KC on synthetic families ({fam['per_family']} images each, seed {fam['seed']})",
                ["family", "images", "JPEG bpp"] + [f"KC ε={e:g}" for e in eps] + [f"oracle ε={e:g}" for e in eps],
                rows))
    sav = report.get("savoias")
    if sav and savoias:
        header = ["category", "n"] + sav["columns"]
        out.append((f"Savoias: Spearman ρ with human ratings [95% bootstrap CI, {sav['bootstrap']} resamples]",
                    header, [[r["category"], str(r["n"])] + r["cells"] for r in sav["rows"]]))
    return out


def savoias_table(result) -> dict[str, Any]:
    res = result.results
    cols: list[tuple[str, str, float | None]] = [(f"KC ε={e:g}", "karl_kc", e) for e in result.eps]
    cols += [(f"soft KC ε={e:g}", "karl_kc_soft", e) for e in result.eps]
    cols += [("JPEG bpp", "jpeg_bpp", None), ("PNG bpp", "png_bpp", None)]
    rows = []
    pooled_rows = res["pooled"].astype(bool)
    groups = [(False, c) for c in dict.fromkeys(res.loc[~pooled_rows, "category"])] + [(True, None)]
    for pooled, cat in groups:   # the categories, then the pooled rows (no category name can clash with them)
        sub = res[pooled_rows] if pooled else res[~pooled_rows & (res["category"] == cat)]
        cells, raw = [], {}
        for name, method, e in cols:
            at_eps = sub["eps"].isna() if e is None else np.isclose(sub["eps"].astype(float), e)
            m = sub[(sub["method"] == method) & at_eps]
            if not len(m) or not math.isfinite(m.iloc[0]["spearman"]):
                cells.append("—")
                raw[name] = None
                continue
            r = m.iloc[0]
            ci = f" [{r['spearman_lo']:.2f}, {r['spearman_hi']:.2f}]" if math.isfinite(r["spearman_lo"]) else ""
            cells.append(f"{r['spearman']:.2f}{ci}")
            raw[name] = {"spearman": _f(r["spearman"]), "lo": _f(r["spearman_lo"]), "hi": _f(r["spearman_hi"])}
        for e in result.eps:   # KC − JPEG on the same images, paired bootstrap CI
            name = f"KC − JPEG ε={e:g}"
            m = sub[(sub["method"] == "karl_kc") & np.isclose(sub["eps"].astype(float), e)]
            r = m.iloc[0] if len(m) else None
            if r is None or not math.isfinite(r["vs_jpeg"]):
                cells.append("—")
                raw[name] = None
                continue
            ci = f" [{r['vs_jpeg_lo']:+.2f}, {r['vs_jpeg_hi']:+.2f}]" if math.isfinite(r["vs_jpeg_lo"]) else ""
            cells.append(f"{r['vs_jpeg']:+.2f}{ci}")
            raw[name] = {"delta": _f(r["vs_jpeg"]), "lo": _f(r["vs_jpeg_lo"]), "hi": _f(r["vs_jpeg_hi"])}
        rows.append({"category": POOLED_LABEL if pooled else str(cat), "pooled": pooled,
                     "n": int(sub["n"].max()) if len(sub) else 0, "cells": cells, "rho": raw})
    return {"columns": [c[0] for c in cols] + [f"KC − JPEG ε={e:g}" for e in result.eps], "rows": rows, "bootstrap": result.n_boot,
            "summary": result.rated.summary(), "notes": list(result.rated.notes) + list(result.notes)}


def notes(report: dict[str, Any]) -> list[str]:
    m = report["model"]
    return [
        f"Model {report['weights']} ({m['arch']}, {m['resolution']} px, T_max {m['max_tokens']}, token step "
        f"{m['token_step']}, {m['latent_dim']}-d latents, {m['params'] / 1e6:.1f}M parameters); "
        f"{report['images']['ok']} images from {report['images']['folder']}"
        + (f" ({report['images']['skipped']} unreadable, left out)" if report["images"]["skipped"] else "") + ".",
        "L1 is the mean absolute pixel error in [0, 1] at the model resolution; a miss is L1 > ε. "
        "Single-pass misses and mean L1 are the decoder's reconstruction's (`--check decoder`); the code "
        "columns are the code's own reconstruction of the kept tokens (`code_l1`, the default check of a "
        "wavelet KARL). "
        "Paper figures: KARL on ImageNet-100 at 256 px (T_max 256).",
        f"Token bytes = budget × {m['latent_dim']} latent values × {BYTES_PER_VALUE} bytes (16 bits per value, no "
        "entropy coding). JPEG bytes = entropy-coded scan data only (headers and tables excluded); "
        "metrics interpolated between Pillow qualities; — where the token bytes lie outside JPEG's range.",
        f"Machine: {machine_line(report['machine'])}. Time: {report['seconds']['total']:.0f} s.",
        f"Command: `{report['command']}`",
    ]


def markdown(report: dict[str, Any]) -> str:
    lines = ["### Single-pass quality (`benchmarks/quality.py`)", ""]
    lines += [f"- {n}" for n in notes(report)] + [""]
    for title, header, rows in tables(report):
        lines += [f"**{title}**", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    sav = report.get("savoias")
    if sav:
        lines += [f"Savoias: {sav['summary']}", ""]
    return "\n".join(lines)


def print_report(report: dict[str, Any], savoias_result=None) -> None:
    """Rich tables on stdout; the Savoias table through ``correlate.rich_table`` (best ρ in bold)."""
    from rich import box
    from rich.table import Table

    from karl_cli.progress import make_console

    con = make_console()   # uncut when piped to a file
    for title, header, rows in tables(report, savoias=savoias_result is None):
        t = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAVY, pad_edge=False,
                  collapse_padding=True)
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for i, row in enumerate(rows):
            if i == len(rows) - 1 and row[0] == "order holds?":
                t.add_section()
            t.add_row(*row)
        con.print(t)
    if savoias_result is not None:
        from karl_cli.analysis.correlate import rich_table

        con.print(rich_table(savoias_result))
        con.print(f"[dim]Savoias: {report['savoias']['summary']}[/]", highlight=False)
    for n in notes(report):
        con.print(f"[dim]{n}[/]", highlight=False)


# --- main ------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Single-pass quality of a KARL model (issue #5).")
    ap.add_argument("folder", help="Held-out images (searched recursively); not the model's training images.")
    ap.add_argument("--weights", default=DEFAULT_MODEL, help="A shipped model name or a weights folder "
                    f"(default: {DEFAULT_MODEL}).")
    ap.add_argument("--eps", type=float, action="append", help=f"ε (repeat; default {', '.join(map(str, EPS_SERIES))}).")
    ap.add_argument("--limit", type=int, default=None, help="Use N images spread evenly over the sorted list.")
    ap.add_argument("--savoias", default=None, metavar="ROOT", help="Also the Savoias correlation table.")
    ap.add_argument("--bootstrap", type=int, default=1000, help="Bootstrap resamples for Savoias CIs.")
    ap.add_argument("--cache", default=None, help="Score cache folder for Savoias (default ~/.cache/karl).")
    ap.add_argument("--no-cache", action="store_true", help="Neither read nor write the Savoias score cache.")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0, help="Image-decoding processes.")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    ap.add_argument("--family-size", type=int, default=16, help="Synthetic images per family.")
    ap.add_argument("--seed", type=int, default=0, help="Seed of the synthetic families.")
    ap.add_argument("--json", default=None, help="Write the report as JSON.")
    ap.add_argument("--markdown", default=None, help="Write a README-ready markdown block.")
    args = ap.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        ap.error("--limit must be >= 1")
    if args.batch_size < 1 or args.family_size < 1:
        ap.error("--batch-size and --family-size must be >= 1")
    return args


def run(args: argparse.Namespace, command: str) -> tuple[dict[str, Any], Any]:
    """The report (JSON-ready but for float keys) and the Savoias CorrelationResult (None without --savoias)."""
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    eps_list = validate_eps(args.eps or EPS_SERIES)
    dev = resolve_device(args.device)
    model = load(args.weights)
    if "single" not in methods_for(model):
        raise UsageError(f"{args.weights} holds a {type(model).__name__}: it has no single pass to measure "
                         "(use `karl compare` for search-only models)")
    prepare_model(model, dev)
    cfg = model.config
    found = collect_inputs([args.folder])
    items = spread([f for f in found if not f.error], args.limit)
    skipped = len(found) - len([f for f in found if not f.error])
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    log(f"single pass on {len(items)} images …")
    single = single_rows(items, model, eps_list, args.batch_size, args.workers, dev)
    log("budget sweep + JPEG …")
    curves = budget_curves(items, model, args.batch_size, args.workers, dev, JPEG_QUALITIES)
    skipped += len(items) - len(curves["paths"])
    seconds["held_out"] = time.perf_counter() - t0
    report: dict[str, Any] = {
        "command": command, "machine": machine_info(dev), "weights": str(args.weights), "eps": eps_list,
        "model": {"arch": cfg.arch, "resolution": cfg.resolution, "max_tokens": cfg.max_tokens,
                  "token_step": cfg.token_step, "latent_dim": cfg.latent_dim,
                  "params": sum(p.numel() for p in model.parameters())},
        "images": {"folder": str(args.folder), "found": len(found), "used": len(items), "ok": len(curves["paths"]),
                   "skipped": skipped, "limit": args.limit},
        "assumptions": {"token_bytes": f"budget * latent_dim * {BYTES_PER_VALUE}",
                        "jpeg_bytes": "entropy-coded scan data (SOS..EOI), headers and tables excluded",
                        "jpeg_qualities": list(JPEG_QUALITIES), "oracle_conditioning": "smallest ε bin"},
    }
    if not curves["paths"]:
        raise UsageError(f"none of the images under {args.folder} could be read")
    report["single_vs_oracle"] = single_vs_oracle(curves, single, eps_list, cfg.max_tokens)
    report["rate_distortion"] = rate_distortion(curves, cfg.latent_dim)
    t0 = time.perf_counter()
    log("synthetic families …")
    report["families"] = families(model, eps_list, args.family_size, args.seed, args.batch_size, dev)
    seconds["families"] = time.perf_counter() - t0
    report["savoias"] = result = None
    if args.savoias:
        t0 = time.perf_counter()
        log("Savoias …")
        result = savoias(args.savoias, model, eps_list, args.batch_size, args.workers, dev, args.bootstrap,
                         args.cache, args.no_cache)
        report["savoias"] = savoias_table(result)
        seconds["savoias"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start
    report["seconds"] = seconds
    return report, result


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {(f"{k:g}" if isinstance(k, float) else str(k)): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return _f(o)
    if isinstance(o, (np.integer, np.bool_)):
        return o.item()
    return o


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/quality.py " + shlex.join(list(sys.argv[1:] if argv is None else argv))
    try:
        report, savoias_result = run(args, command)
    except KarlError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print_report(report, savoias_result)
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(report), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(markdown(report) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
