"""Figures of the ``karl analyze`` studies, sized for a paper: 7 in (two columns) or 3.5 in (one) wide,
8 pt text, labelled axes with units, written as PNG (300 dpi) and PDF (vector) side by side.

Each function takes a ``studies.Study`` (or a token map) and a path stem; it returns the PNG's path.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, to_rgb  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from karl_cli.analysis.studies import Study, structure_steps  # noqa: E402
from karl_cli.io.atomic import atomic_path  # noqa: E402

WIDE, NARROW = 7.0, 3.5     # inches: a two-column and a one-column figure
UNREACHED_RGB = to_rgb("#56B4E9")   # map blocks that never meet ε: a colour the magma scale never takes
_STYLE = {"font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "xtick.labelsize": 7,
          "ytick.labelsize": 7, "legend.fontsize": 7, "lines.linewidth": 1.3, "axes.spines.top": False,
          "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.5,
          "legend.frameon": False, "savefig.dpi": 300, "pdf.fonttype": 42}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    with plt.rc_context(_STYLE):
        yield


def _save(fig: "plt.Figure", stem: str | os.PathLike) -> Path:
    """Write ``stem``.png and ``stem``.pdf atomically; returns the PNG's path."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        with atomic_path(stem.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return stem.with_suffix(".png")


def _colors(n: int) -> list:
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    return [plt.get_cmap("viridis")(v) for v in np.linspace(0.05, 0.9, n)]


def _eps_colors(n: int) -> list:
    return [plt.get_cmap("viridis")(v) for v in (np.linspace(0.0, 0.8, n) if n > 1 else [0.3])]


def _tmax(ax, t_max: int) -> None:
    """A KC axis: from 0 to just above T_max, with T_max marked."""
    ax.set_ylim(0, 1.1 * t_max)
    ax.axhline(t_max, color="0.4", linestyle=":", linewidth=0.9)
    ax.annotate(f"$T_{{max}}$ = {t_max}", (1.0, t_max), xycoords=("axes fraction", "data"), xytext=(-2, -2),
                textcoords="offset points", ha="right", va="top", fontsize=6.5, color="0.3")


def profile_figure(study: Study, stem: str | os.PathLike, max_groups: int = 8) -> Path:
    """(a) KC against ε, (b) reconstruction L1 against tokens: median per folder with the 10-90 %
    band (folders pooled into one curve beyond ``max_groups``)."""
    rows, eps, budgets = study.rows, study.extra["eps"], study.extra["budgets"]
    groups = list(rows.groupby("folder", sort=True)) if rows["folder"].nunique() <= max_groups else [("all", rows)]
    with paper_style():
        rows_of_legend = -(-len(groups) // (3 if budgets else 2))
        fig, axes = plt.subplots(1, 2 if budgets else 1, figsize=(WIDE if budgets else NARROW, 2.6 + 0.16 * rows_of_legend),
                                 squeeze=False, layout="constrained")
        ax = axes[0, 0]
        for (name, g), c in zip(groups, _colors(len(groups))):
            kc = g[[f"kc@{e:g}" for e in eps]].to_numpy(float)
            q10, med, q90 = np.quantile(kc, [0.1, 0.5, 0.9], axis=0)
            ax.fill_between(eps, q10, q90, color=c, alpha=0.15, linewidth=0)
            ax.plot(eps, med, color=c, label=f"{name} (n={len(g)})", marker="o", markersize=2)
        ax.set_xscale("log")
        ax.set_xlabel("ε: target reconstruction L1 (0–1 pixel scale)")
        ax.set_ylabel("KC (tokens)")
        ax.set_title(f"(a) complexity profile ({study.method})", loc="left")
        _tmax(ax, study.max_tokens)
        if budgets:
            ax = axes[0, 1]
            for (name, g), c in zip(groups, _colors(len(groups))):
                l1 = g[[f"l1@{t}" for t in budgets]].to_numpy(float)
                q10, med, q90 = np.quantile(l1, [0.1, 0.5, 0.9], axis=0)
                ax.fill_between(budgets, q10, q90, color=c, alpha=0.15, linewidth=0)
                ax.plot(budgets, med, color=c, label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            # Plain numbers on the log axes: matplotlib's minor labels (3×10¹, 4×10¹) ran into each other.
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(mticker.NullFormatter())
            ax.set_xlabel("budget (tokens)")
            ax.set_ylabel("reconstruction L1 (0–1 scale)")
            ax.set_title("(b) rate–distortion", loc="left")
        # Lines: median per folder; bands: 10–90 % (said once, in the legend's title). The legend sits
        # below the panels, off the data, in as many columns as the figure's width holds.
        handles, names = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 3 if budgets else 2),
                   title="per folder: median (line), 10–90 % of images (band)", title_fontsize=7)
        return _save(fig, stem)


def noise_figure(study: Study, stem: str | os.PathLike) -> Path:
    """Median KC over sources against noise strength, one panel per noise kind; colour: ε; solid:
    noise added at the model input; dashed: added at the image's own size, then resized."""
    s = study.summary
    kinds = [k for k in ("gaussian", "salt-pepper") if k in set(s["kind"])]
    eps = sorted(s["eps"].unique())
    labels = {"gaussian": ("(a) Gaussian noise", "σ (0–1 pixel scale)"),
              "salt-pepper": ("(b) salt-and-pepper noise", "share of pixels set to black or white")}
    with paper_style():
        fig, axes = plt.subplots(1, len(kinds), figsize=(WIDE, 2.9), squeeze=False, sharey=True)
        for ax, kind in zip(axes[0], kinds):
            for e, c in zip(eps, _eps_colors(len(eps))):
                for where, ls in (("input", "-"), ("image", "--")):
                    g = s[(s["kind"] == kind) & (s["eps"] == e) & (s["where"] == where)].sort_values("strength")
                    ax.plot(g["strength"], g["kc_median"], color=c, linestyle=ls, marker="o", markersize=2.5,
                            label=f"ε {e:g}" if where == "input" else None)
            ax.set_xscale("symlog", linthresh=0.01, linscale=0.5)
            ticks = sorted(s[s["kind"] == kind]["strength"].unique())
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks], rotation=45 if len(ticks) > 6 else 0)
            ax.minorticks_off()
            ax.set_xlim(left=0)
            ax.set_xlabel(labels[kind][1])
            ax.set_title(labels[kind][0], loc="left")
            _tmax(ax, study.max_tokens)
        axes[0, 0].set_ylabel("KC, median over images (tokens)")
        handles, names = axes[0, 0].get_legend_handles_labels()
        handles += [plt.Line2D([], [], color="0.3", linestyle="-"), plt.Line2D([], [], color="0.3", linestyle="--")]
        names += ["added at the model input", "added to the image, then resized"]
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        fig.legend(handles, names, loc="lower center", ncol=len(names), bbox_to_anchor=(0.5, 0.0))
        return _save(fig, stem)


def structure_figure(study: Study, stem: str | os.PathLike, example: tuple[str, np.ndarray] | None = None,
                     grids: tuple[int, ...] = (), seed: int = 0) -> Path:
    """The paper's structure-versus-noise axis: an example image at each step on top; below, KC per
    step (median over sources with the quartile band) for each ε, and each source at the middle ε."""
    s, rows = study.summary, study.rows
    eps = sorted(s["eps"].unique())
    steps = s.drop_duplicates("step_index").sort_values("step_index")["step"].tolist()
    names = [st.replace("shuffle ", "") for st in steps]
    x = np.arange(len(steps))
    with paper_style():
        fig = plt.figure(figsize=(WIDE, 4.6 if example is not None else 3.2))
        gs = fig.add_gridspec(2 if example is not None else 1, len(steps) if example is not None else 2,
                              height_ratios=[1, 2.4] if example is not None else None)
        if example is not None:
            imgs = structure_steps(example[1], grids, seed)
            for k, (name, img) in enumerate(imgs):
                a = fig.add_subplot(gs[0, k])
                a.imshow(img, interpolation="nearest")
                a.set_xticks([])
                a.set_yticks([])
                a.grid(False)
                a.spines[:].set_visible(False)
                a.set_title(name.replace("shuffle ", "shuffle\n") if k else f"original\n({Path(str(example[0])).name})", fontsize=7)
        half = len(steps) // 2 if example is not None else 1
        ax1 = fig.add_subplot(gs[-1, :half] if example is not None else gs[0, 0])
        for e, c in zip(eps, _eps_colors(len(eps))):
            g = s[s["eps"] == e].sort_values("step_index")
            ax1.fill_between(x, g["kc_q25"], g["kc_q75"], color=c, alpha=0.15, linewidth=0)
            ax1.plot(x, g["kc_median"], color=c, marker="o", markersize=2.5, label=f"ε {e:g}")
        ax2 = fig.add_subplot(gs[-1, half:] if example is not None else gs[0, 1], sharey=ax1)
        mid = eps[len(eps) // 2]
        r = rows[rows["eps"] == mid]
        for (src, g), c in zip(r.groupby("source", sort=False), _colors(r["source"].nunique())):
            g = g.sort_values("step_index")
            ax2.plot(g["step_index"], g["kc"], color=c, marker="o", markersize=2.5,
                     label=Path(str(src)).name[:18])
        for ax, title in ((ax1, "(a) median and quartiles over images"), (ax2, f"(b) each image, ε {mid:g}")):
            ax.set_xticks(x, names, rotation=35, ha="right")
            ax.set_xlabel("structure destroyed →  (patch grid; phase; pixels)")
            ax.set_title(title, loc="left")
            _tmax(ax, study.max_tokens)
        ax1.set_ylabel("KC (tokens)")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        handles, names = [], []
        for ax in (ax1, ax2):
            h, n = ax.get_legend_handles_labels()
            handles += h
            names += n
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 8), bbox_to_anchor=(0.5, 0.0))
        return _save(fig, stem)


def familiarity_figure(study: Study, stem: str | os.PathLike) -> Path:
    """KC distributions per group (box: quartiles, whiskers: 5-95 %, dots: images), one row per ε,
    each comparison labelled with its effect size, 95 % CI and p."""
    rows, s = study.rows, study.summary
    eps = sorted(rows["eps"].unique())
    groups = list(dict.fromkeys(rows["group"]))
    paired = study.extra.get("paired")
    name = "r" if paired else "δ"
    with paper_style():
        fig, axes = plt.subplots(len(eps), 1, figsize=(WIDE, 0.6 + 1.75 * len(eps)), squeeze=False, sharex=True)
        rng = np.random.default_rng(0)
        for ax, e in zip(axes[:, 0], eps):
            data = [rows[(rows["group"] == g) & (rows["eps"] == e)]["kc"].to_numpy(float) for g in groups]
            ax.boxplot(data, whis=(5, 95), showfliers=False, widths=0.5, medianprops={"color": "crimson"})
            for k, d in enumerate(data, start=1):
                ax.scatter(k + rng.uniform(-0.15, 0.15, d.size), d, s=3, color="0.35", alpha=0.6, linewidths=0)
            for k, g in enumerate(groups[1:], start=2):
                r = s[(s["eps"] == e) & (s["group"] == g)].iloc[0]
                text = (f"{name} {r['effect']:+.2f} [{r['effect_lo']:+.2f}, {r['effect_hi']:+.2f}], p {r['p']:.2g}"
                        if np.isfinite(r["p"]) else "no difference")
                ax.annotate(text, (k, 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom", fontsize=6.5)
            ax.set_ylabel(f"KC at ε {e:g}\n(tokens)")
            _tmax(ax, study.max_tokens)
        axes[-1, 0].set_xticks(range(1, len(groups) + 1), [f"{g} (n={len(rows[(rows['group'] == g) & (rows['eps'] == eps[0])])})"
                                                            for g in groups])
        axes[-1, 0].set_xlabel(f"group; above each: effect against '{groups[0]}', "
                               + ("matched-pairs rank-biserial r [95 % bootstrap CI], Wilcoxon signed-rank p" if paired
                                  else "Cliff's δ [95 % bootstrap CI], Mann–Whitney U p"))
        fig.tight_layout(h_pad=1.6)
        return _save(fig, stem)


def map_figure(image: np.ndarray, result: dict, stem: str | os.PathLike, title: str = "", t_max: int | None = None,
               patch: int = 4) -> Path:
    """The input, then per ε the budget each block needs as a heat map over the image (log colour
    scale, shared), a flat sky blue (keyed in a legend) where no budget reaches ε; the whole image's
    oracle KC in each title."""
    budgets, eps, kc = result["budgets"], result["eps"], result["kc"]
    finite = budgets[np.isfinite(budgets)]
    lo = max(1.0, float(finite.min())) if finite.size else 1.0
    hi = float(t_max or (finite.max() if finite.size else 2.0))
    grey = image.astype(float).mean(axis=2) / 255.0
    r = image.shape[0]
    with paper_style():
        fig, axes = plt.subplots(1, len(eps) + 1, figsize=(WIDE, WIDE / (len(eps) + 1) + 0.55), squeeze=False)
        axes = axes[0]
        axes[0].imshow(image, interpolation="nearest")
        axes[0].set_title(f"input ({r} px)" + (f"\n{title}" if title else ""), fontsize=7)
        im = None
        unreached = 0
        for ax, e, b, k in zip(axes[1:], eps, budgets, kc):
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            never = ~np.isfinite(b)
            if never.any():   # blocks no budget brings under ε: a flat colour outside magma's range, keyed below
                unreached += int(never.sum())
                ax.imshow(np.where(never[..., None], np.array([*UNREACHED_RGB, 0.85]), 0.0),
                          extent=(-0.5, r - 0.5, r - 0.5, -0.5), interpolation="nearest")
            im = ax.imshow(np.ma.masked_invalid(b), cmap="magma", norm=LogNorm(lo, max(hi, lo * 1.01)), alpha=0.8,
                           extent=(-0.5, r - 0.5, r - 0.5, -0.5), interpolation="nearest")
            ax.set_title(f"ε {e:g}: KC {int(k)}", fontsize=7)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            ax.spines[:].set_visible(False)
        fig.tight_layout()
        if im is not None:
            cb = fig.colorbar(im, ax=list(axes[1:]), fraction=0.025, pad=0.01)
            cb.set_label(f"tokens until each {patch}×{patch} px block meets ε", fontsize=7)
        if unreached:
            fig.legend([Patch(facecolor=(*UNREACHED_RGB, 0.85), edgecolor="0.3", linewidth=0.5)],
                       [f"block never meets ε, even with all {t_max or 'the'} tokens"], loc="lower center",
                       bbox_to_anchor=(0.5, -0.04), fontsize=7)
        return _save(fig, stem)


def draw_study(study: Study, folder: str | os.PathLike) -> list[Path]:
    """Every figure of ``study`` (by its name: profile, noise, structure, familiarity, map) into
    ``folder`` (PNG + PDF each); the files written (PNG paths)."""
    folder = Path(folder)
    if study.name == "structure":
        return [structure_figure(study, folder / "structure", study.extra["example"], tuple(study.extra["grids"]),
                                 study.extra["seed"])]
    if study.name == "map":
        return [map_figure(img, m, folder / f"map_{i:03d}_{Path(p).stem}", Path(p).name, study.max_tokens,
                           study.extra["patch"]) for i, (p, (img, m)) in enumerate(study.extra["maps"].items())]
    one = {"profile": profile_figure, "noise": noise_figure, "familiarity": familiarity_figure}[study.name]
    return [one(study, folder / study.name)]
