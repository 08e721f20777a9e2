"""Figures for ``karl correlate``: per-category scatter plots, a grid of all categories, a heat map of
rating bucket vs token bucket (as the KARL paper's Fig. 14), and ρ with its CI per category.

Figures use the project's one style (``style.py``: paper column widths, 300 dpi, colour-blind-safe
colours) and are written atomically.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from karl_cli.analysis.stats import spearman
from karl_cli.analysis.style import ACCENT, DOUBLE_COLUMN, PALETTE, SERIES, SINGLE_COLUMN, colors, figure, save, style
from karl_cli.scoring.baselines import REGISTRY

POINT = PALETTE[0]
FIT = ACCENT
METHOD_COLORS = {"karl_kc": PALETTE[0], "karl_kc_soft": PALETTE[4], "karl_search_kc": PALETTE[2],
                 "karl_prefix_kc": PALETTE[5], "jpeg_bpp": PALETTE[1], "png_bpp": PALETTE[8]}
METHOD_LABELS = {"karl_kc": "KARL KC", "karl_kc_soft": "KARL soft KC", "karl_search_kc": "search KC",
                 "karl_prefix_kc": "prefix KC", "jpeg_bpp": "JPEG-75 bytes/px", "png_bpp": "PNG bytes/px"}
SCORE_LABELS = {"kc": "KC (tokens)", "kc_soft": "soft KC (Σ 1 − p_halt)", "jpeg_bpp": "JPEG-75 bytes / pixel",
                "png_bpp": "PNG bytes / pixel"}


def method_label(method: str) -> str:
    """The display name of a results ``method`` (``karl_kc`` -> 'KARL KC', ``webp_bpp`` -> 'WebP
    bytes/px', ``edge_density`` -> 'edge density'): never the raw column name when one is known."""
    if method in METHOD_LABELS:
        return METHOD_LABELS[method]
    if method in REGISTRY:
        label = REGISTRY[method].label
        return label[:-4] + " bytes/px" if label.endswith(" bpp") else label
    return method


def score_label(score: str) -> str:
    """An axis label for a per-image score column (``kc``, ``jpeg_bpp``, ``webp_bpp``, ...)."""
    return SCORE_LABELS.get(score) or method_label(score)


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """A distinct colour per method: KC and the JPEG/PNG baselines keep theirs (``METHOD_COLORS``),
    the others take the unused ``SERIES`` colours in order (distinct up to 14 series)."""
    out: dict[str, str] = {}
    for m in methods:
        c = METHOD_COLORS.get(m)
        if c is not None and c not in out.values():
            out[m] = c
    free = iter([c for c in SERIES if c not in out.values()])
    for k, m in enumerate(methods):
        if m not in out:
            out[m] = next(free, SERIES[k % len(SERIES)])
    return out


POOLED = None   # the ``category`` argument that means every image (the pooled rows of the results)
POOLED_LABEL = "all (pooled)"


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
              x: np.ndarray, y: np.ndarray, sep: str = ", ") -> str:
    row = None
    if results is not None and len(results):
        sel = _results_of(results, category) & (results["method"] == method)
        sel &= results["eps"].isna() if eps is None else np.isclose(results["eps"].astype(float), float(eps))
        if sel.any():
            row = results[sel].iloc[0]
    if row is not None and math.isfinite(row["spearman"]):
        ci = (f" [{row['spearman_lo']:.2f}, {row['spearman_hi']:.2f}]"
              if math.isfinite(row["spearman_lo"]) else "")
        return f"ρ = {row['spearman']:.2f}{ci}{sep}n = {int(row['n'])}"
    rho = spearman(x, y)
    return f"ρ = {rho:.2f}{sep}n = {len(x)}" if math.isfinite(rho) else f"ρ undefined{sep}n = {len(x)}"


def _scatter_axes(ax, d: pd.DataFrame, title: str, xlabel: str, ylabel: str, small: bool = False,
                  categories: Sequence[str] | None = None) -> None:
    """Score vs rating with a least-squares line; with ``categories`` each point is coloured by its
    category (for the pooled set) and labelled for a legend."""
    x, y = d["_x"].to_numpy(float), d["_y"].to_numpy(float)
    size = 4 if small else 7
    if categories:
        for cat, color in zip(categories, colors(len(categories))):
            sel = (d["category"] == cat).to_numpy()
            ax.scatter(x[sel], y[sel], s=size, alpha=0.7, color=color, edgecolors="none", label=cat,
                       rasterized=len(x) > 2000)
    else:
        ax.scatter(x, y, s=size, alpha=0.6, color=POINT, edgecolors="none", rasterized=len(x) > 2000)
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, icpt = np.polyfit(x, y, 1)
        xs = np.array([x.min(), x.max()])
        ax.plot(xs, slope * xs + icpt, color="black" if categories else FIT, lw=1.0, label="least-squares fit")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _categories_of(d: pd.DataFrame) -> list[str]:
    """The categories of a pooled set in order of appearance; none when there is only one."""
    cats = list(dict.fromkeys(d["category"].astype(str))) if len(d) else []
    return cats if len(cats) > 1 else []


def scatter_figure(per_image: pd.DataFrame, category: str | None, eps: float | None = None, score: str = "kc",
                   results: pd.DataFrame | None = None, method: str = "karl_kc") -> Figure:
    """One category (or ``POOLED``: every image, its points coloured by category): score vs human
    rating, least-squares line, ρ [CI] in the title. Single column wide; the legend sits below the
    axes, off the points."""
    with style():
        d = _ok(per_image, eps, score)
        if category is not POOLED:
            d = d[d["category"] == category]
        cats = _categories_of(d) if category is POOLED else []
        legend_rows = math.ceil((len(cats) + 1) / 3) if cats else 1
        fig = figure(SINGLE_COLUMN, 2.6 + 0.14 * legend_rows)
        ax = fig.add_subplot()
        label = POOLED_LABEL if category is POOLED else category
        eps_txt = f", ε = {eps:g}" if eps is not None and score in ("kc", "kc_soft") else ""
        rho = _rho_text(results, category, method, eps if score in ("kc", "kc_soft") else None,
                        d["_x"].to_numpy(float), d["_y"].to_numpy(float))
        _scatter_axes(ax, d, f"{label}{eps_txt}\n{rho}", "human complexity rating", score_label(score),
                      categories=cats)
        if len(d) >= 2:
            fig.legend(loc="outside lower center", ncols=3 if cats else 1, markerscale=2.0)
        return fig


def grid_figure(per_image: pd.DataFrame, categories: Sequence[str], eps: float | None = None, score: str = "kc",
                results: pd.DataFrame | None = None, method: str = "karl_kc") -> Figure:
    """All categories side by side (plus the pooled set, coloured by category, when there is more than
    one category). Double column wide at 3-4 panels a row."""
    with style():
        panels = list(categories) + ([POOLED] if len(categories) != 1 else [])
        ncols = min(4, len(panels))
        nrows = math.ceil(len(panels) / ncols)
        fig = figure(DOUBLE_COLUMN if ncols > 2 else SINGLE_COLUMN * (1 if ncols == 1 else 1.6), 1.95 * nrows + 0.3)
        axes = fig.subplots(nrows, ncols, squeeze=False)
        d_all = _ok(per_image, eps, score)
        e_for = eps if score in ("kc", "kc_soft") else None
        for ax, cat in zip(axes.flat, panels):
            d = d_all if cat is POOLED else d_all[d_all["category"] == cat]
            rho = _rho_text(results, cat, method, e_for, d["_x"].to_numpy(float), d["_y"].to_numpy(float), sep="\n")
            _scatter_axes(ax, d, f"{POOLED_LABEL if cat is POOLED else cat}\n{rho}", "rating",
                          score_label(score), small=True,
                          categories=_categories_of(d) if cat is POOLED else None)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        what = method_label(method)
        fig.suptitle(f"{what} vs human complexity rating" + (f" (ε = {eps:g})" if e_for is not None else ""))
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
    with style():
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
        fig = figure(DOUBLE_COLUMN if nb > 4 else SINGLE_COLUMN, 1.1 + 0.36 * rating_bins)
        ax = fig.add_subplot()
        ax.grid(False)
        im = ax.imshow(share, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1,
                       extent=(0, nb, 0, rating_bins))
        for i in range(rating_bins):
            for j in range(nb):
                if np.isfinite(share[i, j]):
                    v = share[i, j]
                    ax.text(j + 0.5, i + 0.5, f"{v:.2f}", ha="center", va="center", fontsize=6.5,
                            color="white" if v < 0.6 else "black")
        ax.set_xticks(np.arange(nb) + 0.5, [f"{t_edges[j]:.0f}–{t_edges[j + 1]:.0f}" for j in range(nb)],
                      rotation=45, ha="right")
        ax.set_yticks(np.arange(rating_bins) + 0.5,
                      [f"{r_edges[i]:.0f}–{r_edges[i + 1]:.0f} (n={int(row_sum[i, 0])})" for i in range(rating_bins)])
        ax.set_xlabel(score_label(score) + " bucket")
        ax.set_ylabel("human rating bucket")
        who = POOLED_LABEL if category is POOLED else category
        ax.set_title(f"Token count vs human rating ({who}, ε = {eps:g})\nshare of each rating bucket per token bucket")
        fig.colorbar(im, ax=ax, label="share of rating bucket", shrink=0.9)
        return fig


def rho_limits(results: pd.DataFrame, margin: float = 0.08) -> tuple[float, float]:
    """y limits for ρ: the values, their CIs and 0, with a margin; never beyond [-1, 1] ± margin."""
    cols = [results[c].to_numpy(float) for c in ("spearman", "spearman_lo", "spearman_hi") if c in results]
    vals = np.concatenate(cols) if cols else np.zeros(0)
    vals = vals[np.isfinite(vals)]
    lo = min(0.0, float(vals.min())) if vals.size else 0.0
    hi = max(0.0, float(vals.max())) if vals.size else 1.0
    return max(-1.0, lo) - margin, min(1.0, hi) + margin


def rho_figure(results: pd.DataFrame, eps: float | None = None, methods: Sequence[str] | None = None,
               level: float = 0.95) -> Figure:
    """Spearman ρ with its bootstrap CI per category, KC next to the codec baselines. The legend sits
    below the axes, never on the bars or error bars; y spans the values and CIs (``rho_limits``)."""
    with style():
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
        palette = method_colors(methods)
        ncols = min(4, max(1, len(methods)))
        legend_rows = -(-len(methods) // ncols)
        # Taller with every row of legend, so the axes keep room for their y label.
        fig = figure(DOUBLE_COLUMN if len(groups) * max(1, len(methods)) > 12 else SINGLE_COLUMN,
                     2.6 + 0.25 * max(0, legend_rows - 1))
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
                            color=palette[m])
                else:
                    xs.append(x_pos)
                    ys.append(row["spearman"])
                    lo.append(row["spearman_lo"])
                    hi.append(row["spearman_hi"])
            if not xs:  # every ρ undefined: keep the method in the legend, its slots say n/a
                ax.bar([], [], color=palette[m], label=method_label(m))
                continue
            ys_a, lo_a, hi_a = np.array(ys), np.array(lo, float), np.array(hi, float)
            err = np.vstack([np.where(np.isfinite(lo_a), ys_a - lo_a, 0), np.where(np.isfinite(hi_a), hi_a - ys_a, 0)])
            ax.bar(xs, ys, width=width * 0.95, color=palette[m], label=method_label(m))
            ax.errorbar(xs, ys, yerr=np.clip(err, 0, None), fmt="none", ecolor="black", elinewidth=0.7, capsize=1.5)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(range(len(groups)), names, rotation=30, ha="right")
        ax.set_ylabel("Spearman ρ with human rating")
        ax.set_ylim(*rho_limits(res))
        ax.grid(axis="x", visible=False)
        has_ci = bool(np.isfinite(res[["spearman_lo", "spearman_hi"]].to_numpy(float)).any())
        fig.suptitle("Correlation with human complexity ratings"
                     + (f" ({level:.0%} bootstrap CI)" if has_ci else "")
                     + (f", ε = {eps:g}" if eps is not None else ""))
        fig.legend(loc="outside lower center", ncols=ncols)
        return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write a figure atomically (``style.save``); the format comes from the suffix."""
    return save(fig, path)


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
    baseline, for comparison, when it was chosen). ``<category>`` is ``slug(category)``, with ``-2``, ``-3``, ... added
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
        written.append(save_figure(rho_figure(res, e, level=result.level), out / f"rho_{tag}.{fmt}"))
    if "jpeg_bpp" in result.baselines:
        written.append(save_figure(grid_figure(per, cats, result.eps[0], "jpeg_bpp", res, "jpeg_bpp"),
                                   out / f"scatter_grid_jpeg.{fmt}"))
    return written
