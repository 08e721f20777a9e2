"""Figures for ``karl correlate``: per-category scatter plots, a grid of all categories, a heat map of
rating bucket vs token bucket (as the KARL paper's Fig. 14), and ρ with its CI per category.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no GUI, no global
backend switch), in one style, and written atomically.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from karl_cli.io.atomic import atomic_path
from karl_cli.analysis.stats import spearman

STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
    "legend.fontsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.25, "grid.linewidth": 0.6, "figure.dpi": 100, "savefig.dpi": 150,
    "savefig.bbox": "tight", "font.family": "DejaVu Sans",
}
POINT = "#2b6cb0"
FIT = "#c53030"
METHOD_COLORS = {"karl_kc": "#2b6cb0", "karl_kc_soft": "#63b3ed", "karl_search_kc": "#2c7a7b",
                 "karl_prefix_kc": "#38a169", "jpeg_bpp": "#dd6b20", "png_bpp": "#a0aec0"}
METHOD_LABELS = {"karl_kc": "KARL KC", "karl_kc_soft": "KARL soft KC", "karl_search_kc": "search KC",
                 "karl_prefix_kc": "prefix KC", "jpeg_bpp": "JPEG-75 bytes/px", "png_bpp": "PNG bytes/px"}
SCORE_LABELS = {"kc": "KC (tokens)", "kc_soft": "soft KC (Σ 1 − p_halt)", "jpeg_bpp": "JPEG-75 bytes / pixel",
                "png_bpp": "PNG bytes / pixel"}
POOLED = None   # the ``category`` argument that means every image (the pooled rows of the results)
POOLED_LABEL = "all (pooled)"


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def slug(text: str) -> str:
    """A file-name-safe form of a category name ('Interior Design' -> 'interior-design')."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


def _eps_tag(eps: float) -> str:
    return f"eps{float(eps):g}"


def _ok(per_image: pd.DataFrame, eps: float | None, score: str) -> pd.DataFrame:
    d = per_image[per_image["status"] == "ok"]
    if eps is not None:
        d = d[np.isclose(d["eps"].astype(float), float(eps))]
    d = d.assign(_x=pd.to_numeric(d["rating"], errors="coerce").astype("float64"),
                 _y=pd.to_numeric(d[score], errors="coerce").astype("float64"))
    return d[np.isfinite(d["_x"]) & np.isfinite(d["_y"])]


def _results_of(results: pd.DataFrame, category: str | None) -> pd.Series:
    """Rows of ``results`` for a category, or the pooled rows for ``POOLED``."""
    pooled = results["pooled"].astype(bool)
    return pooled if category is POOLED else (~pooled & (results["category"] == category))


def _rho_text(results: pd.DataFrame | None, category: str | None, method: str, eps: float | None,
              x: np.ndarray, y: np.ndarray) -> str:
    row = None
    if results is not None and len(results):
        sel = _results_of(results, category) & (results["method"] == method)
        sel &= results["eps"].isna() if eps is None else np.isclose(results["eps"].astype(float), float(eps))
        if sel.any():
            row = results[sel].iloc[0]
    if row is not None and math.isfinite(row["spearman"]):
        ci = (f" [{row['spearman_lo']:.2f}, {row['spearman_hi']:.2f}]"
              if math.isfinite(row["spearman_lo"]) else "")
        return f"ρ = {row['spearman']:.2f}{ci}, n = {int(row['n'])}"
    rho = spearman(x, y)
    return f"ρ = {rho:.2f}, n = {len(x)}" if math.isfinite(rho) else f"ρ undefined, n = {len(x)}"


def _scatter_axes(ax, d: pd.DataFrame, title: str, xlabel: str, ylabel: str, small: bool = False) -> None:
    x, y = d["_x"].to_numpy(float), d["_y"].to_numpy(float)
    ax.scatter(x, y, s=8 if small else 14, alpha=0.55, color=POINT, edgecolors="none", rasterized=len(x) > 2000)
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        xs = np.array([x.min(), x.max()])
        ax.plot(xs, slope * xs + icpt, color=FIT, lw=1.5, label="least-squares fit")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def scatter_figure(per_image: pd.DataFrame, category: str | None, eps: float | None = None, score: str = "kc",
                   results: pd.DataFrame | None = None, method: str = "karl_kc") -> Figure:
    """One category (or ``POOLED``: every image): score vs human rating, least-squares line, ρ [CI]
    in the title."""
    with rc_context(STYLE):
        d = _ok(per_image, eps, score)
        if category is not POOLED:
            d = d[d["category"] == category]
        fig = _figure(4.2, 3.4)
        ax = fig.add_subplot()
        label = POOLED_LABEL if category is POOLED else category
        eps_txt = f", ε = {eps:g}" if eps is not None and score in ("kc", "kc_soft") else ""
        rho = _rho_text(results, category, method, eps if score in ("kc", "kc_soft") else None,
                        d["_x"].to_numpy(float), d["_y"].to_numpy(float))
        _scatter_axes(ax, d, f"{label}{eps_txt}\n{rho}", "human complexity rating", SCORE_LABELS.get(score, score))
        if len(d) >= 2:
            ax.legend(loc="upper left", frameon=False)
        return fig


def grid_figure(per_image: pd.DataFrame, categories: Sequence[str], eps: float | None = None, score: str = "kc",
                results: pd.DataFrame | None = None, method: str = "karl_kc") -> Figure:
    """All categories side by side (plus the pooled set when there is more than one category)."""
    with rc_context(STYLE):
        panels = list(categories) + ([POOLED] if len(categories) != 1 else [])
        ncols = min(4, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig = _figure(3.0 * ncols, 2.7 * nrows)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        d_all = _ok(per_image, eps, score)
        e_for = eps if score in ("kc", "kc_soft") else None
        for ax, cat in zip(axes.flat, panels):
            d = d_all if cat is POOLED else d_all[d_all["category"] == cat]
            rho = _rho_text(results, cat, method, e_for, d["_x"].to_numpy(float), d["_y"].to_numpy(float))
            _scatter_axes(ax, d, f"{POOLED_LABEL if cat is POOLED else cat}\n{rho}", "rating",
                          SCORE_LABELS.get(score, score), small=True)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        what = METHOD_LABELS.get(method, method)
        fig.suptitle(f"{what} vs human complexity rating" + (f" (ε = {eps:g})" if e_for is not None else ""),
                     fontsize=11)
        return fig


def _rating_edges(r: np.ndarray, n: int) -> np.ndarray:
    lo, hi = (0.0, 100.0) if r.size and r.min() >= 0 and r.max() <= 100 and r.max() > 1 else (
        (float(r.min()), float(r.max())) if r.size else (0.0, 1.0))
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, n + 1)


def heatmap_figure(per_image: pd.DataFrame, eps: float, category: str | None = POOLED, rating_bins: int = 5,
                   token_bins: int = 8, score: str = "kc") -> Figure:
    """Rating bucket (rows) vs token-count bucket (columns); each row is normalised to sum to 1,
    so a row shows how the images humans put in that bucket spread over token counts."""
    with rc_context(STYLE):
        d = _ok(per_image, eps, score)
        if category is not POOLED:
            d = d[d["category"] == category]
        r, k = d["_x"].to_numpy(float), d["_y"].to_numpy(float)
        t_max = float(pd.to_numeric(d["max_tokens"], errors="coerce").astype("float64").max()) if len(d) else 1.0
        if not math.isfinite(t_max) or t_max <= 0:
            t_max = max(1.0, float(k.max()) if k.size else 1.0)
        nb = int(max(1, min(token_bins, t_max)))
        r_edges = _rating_edges(r, rating_bins)
        t_edges = np.linspace(0.0, t_max, nb + 1)
        counts, _, _ = np.histogram2d(np.clip(r, r_edges[0], r_edges[-1]), np.clip(k, 0, t_max),
                                      bins=[r_edges, t_edges])
        row_sum = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(row_sum > 0, counts / row_sum, np.nan)
        fig = _figure(1.0 + 0.62 * nb, 0.9 + 0.5 * rating_bins)
        ax = fig.add_subplot()
        ax.grid(False)
        im = ax.imshow(share, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1,
                       extent=(0, nb, 0, rating_bins))
        for i in range(rating_bins):
            for j in range(nb):
                if np.isfinite(share[i, j]):
                    v = share[i, j]
                    ax.text(j + 0.5, i + 0.5, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
        ax.set_xticks(np.arange(nb) + 0.5, [f"{t_edges[j]:.0f}–{t_edges[j + 1]:.0f}" for j in range(nb)],
                      rotation=45, ha="right")
        ax.set_yticks(np.arange(rating_bins) + 0.5,
                      [f"{r_edges[i]:.0f}–{r_edges[i + 1]:.0f} (n={int(row_sum[i, 0])})" for i in range(rating_bins)])
        ax.set_xlabel(SCORE_LABELS.get(score, score) + " bucket")
        ax.set_ylabel("human rating bucket")
        who = POOLED_LABEL if category is POOLED else category
        ax.set_title(f"Token count vs human rating ({who}, ε = {eps:g})\nshare of each rating bucket per token bucket")
        fig.colorbar(im, ax=ax, label="share of rating bucket", shrink=0.9)
        return fig


def rho_figure(results: pd.DataFrame, eps: float | None = None, methods: Sequence[str] | None = None) -> Figure:
    """Spearman ρ with its bootstrap CI per category, KC next to the codec baselines."""
    with rc_context(STYLE):
        res = results.copy()
        karl = res[res["method"].str.startswith("karl_")]
        if eps is not None:
            karl = karl[np.isclose(karl["eps"].astype(float), float(eps))]
        base = res[~res["method"].str.startswith("karl_")]
        res = pd.concat([karl, base])
        methods = list(methods or dict.fromkeys(res["method"]))
        groups = list(dict.fromkeys(zip(res["pooled"].astype(bool), res["category"])))
        groups = [g for g in groups if not g[0]] + [g for g in groups if g[0]]
        names = [POOLED_LABEL if pooled else str(c) for pooled, c in groups]
        fig = _figure(max(4.5, 1.0 + 0.9 * len(groups) * max(1, len(methods)) / 3), 3.4)
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(methods))
        for m_i, m in enumerate(methods):
            sub = res[res["method"] == m]
            xs, ys, lo, hi = [], [], [], []
            for c_i, (pooled, c) in enumerate(groups):
                x_pos = c_i + (m_i - (len(methods) - 1) / 2) * width
                hit = sub[_results_of(sub, POOLED if pooled else c)]
                if not len(hit):
                    continue
                row = hit.iloc[0]
                if not math.isfinite(row["spearman"]):
                    ax.text(x_pos, 0.02, "n/a", ha="center", va="bottom", fontsize=6, rotation=90,
                            color=METHOD_COLORS.get(m, "black"))
                else:
                    xs.append(x_pos)
                    ys.append(row["spearman"])
                    lo.append(row["spearman_lo"])
                    hi.append(row["spearman_hi"])
            if not xs:  # every ρ undefined: keep the method in the legend, its slots say n/a
                ax.bar([], [], color=METHOD_COLORS.get(m, None), label=METHOD_LABELS.get(m, m))
                continue
            ys_a, lo_a, hi_a = np.array(ys), np.array(lo, float), np.array(hi, float)
            err = np.vstack([np.where(np.isfinite(lo_a), ys_a - lo_a, 0), np.where(np.isfinite(hi_a), hi_a - ys_a, 0)])
            ax.bar(xs, ys, width=width * 0.95, color=METHOD_COLORS.get(m, None), label=METHOD_LABELS.get(m, m))
            ax.errorbar(xs, ys, yerr=np.clip(err, 0, None), fmt="none", ecolor="black", elinewidth=0.8, capsize=2)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(len(groups)), names, rotation=30, ha="right")
        ax.set_ylabel("Spearman ρ with human rating")
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.18)   # room for the legend above ρ = 1
        ax.set_yticks([t for t in ax.get_yticks() if t <= 1.0 + 1e-9])
        ax.set_title("Correlation with human complexity ratings (95% bootstrap CI)"
                     + (f", ε = {eps:g}" if eps is not None else ""))
        ax.legend(frameon=False, ncols=min(4, len(methods)), loc="upper left")
        return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write a figure atomically; the format comes from the suffix."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path


def _file_names(categories: Sequence[str]) -> dict[str | None, str]:
    """A distinct file-name part per category, and ``pooled`` for ``POOLED`` (``grid`` is the grid's)."""
    names: dict[str | None, str] = {POOLED: "pooled"}
    taken = {"pooled", "grid"}
    for c in categories:
        base = name = slug(c)
        k = 1
        while name in taken:
            k += 1
            name = f"{base}-{k}"
        taken.add(name)
        names[c] = name
    return names


def write_plots(result, out_dir: str | os.PathLike, fmt: str = "png") -> list[Path]:
    """Every figure for a ``CorrelationResult`` into ``out_dir``; returns the files written.

    Per ε: ``scatter_<category>_<eps>`` (``scatter_pooled_<eps>`` for every image),
    ``scatter_grid_<eps>``, ``heatmap_<eps>``, ``rho_<eps>``; once: ``scatter_grid_jpeg`` (the JPEG
    baseline, for comparison). ``<category>`` is ``slug(category)``, with ``-2``, ``-3``, ... added
    where two categories (or a category and ``pooled`` or ``grid``) would share a file name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per, res, cats = result.per_image, result.results, result.rated.categories
    kc_method = "karl_kc" if result.method == "single" else f"karl_{result.method}_kc"
    written: list[Path] = []
    names = _file_names(cats)
    for e in result.eps:
        tag = _eps_tag(e)
        for c in cats + [POOLED]:
            written.append(save_figure(scatter_figure(per, c, e, "kc", res, kc_method),
                                       out / f"scatter_{names[c]}_{tag}.{fmt}"))
        written.append(save_figure(grid_figure(per, cats, e, "kc", res, kc_method), out / f"scatter_grid_{tag}.{fmt}"))
        written.append(save_figure(heatmap_figure(per, e), out / f"heatmap_{tag}.{fmt}"))
        written.append(save_figure(rho_figure(res, e), out / f"rho_{tag}.{fmt}"))
    written.append(save_figure(grid_figure(per, cats, result.eps[0], "jpeg_bpp", res, "jpeg_bpp"),
                               out / f"scatter_grid_jpeg.{fmt}"))
    return written
