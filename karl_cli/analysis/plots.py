"""Figures of ``karl complexity --plot`` and ``karl show``, in the project's one style (``style.py``).

- ``kc_histogram(rows, out_png)``: the distribution of KC per ε (``karl complexity --plot``).
- ``show_figure(model, image_path, out_png, eps_list)``: one image under the tokenizer (``karl show``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from karl_cli.analysis.style import ACCENT, DOUBLE_COLUMN, SINGLE_COLUMN, colors, figure, save, style
from karl_cli.defaults import EPS_SERIES
from karl_cli.errors import UsageError
from karl_cli.io.images import ImageLoadError
from karl_cli.runtime import inference, prepare_model, resolve_device, to_model_input
from karl_cli.scoring.measure import collect_inputs, measure, read_pixels
from karl_cli.scoring.methods import check_eps, default_method, methods_for, validate_eps
from karl_cli.scoring.oracle import budget_reconstructions


def histogram_edges(values: Sequence[float], top: int, max_bins: int = 40) -> np.ndarray:
    """Bin edges for token counts: integer-wide bins from 0 to ``top`` (at most ``max_bins``) with edges
    at half-integers, so every bin holds whole counts and none is split between two bins."""
    top = max([int(top)] + [int(v) for v in values])
    width = max(1, int(np.ceil((top + 1) / max_bins)))
    return np.arange(0, top + width + 1, width) - 0.5


def kc_histogram_figure(rows: Iterable[dict[str, Any]], title: str | None = None) -> Figure:
    """KC (token counts of ``ok`` rows) per ε: one small panel per ε on a shared token axis (step
    histograms, bins on whole token counts (``histogram_edges``), whole image counts on the y axis),
    the median marked and written. Single column wide."""
    per_eps: dict[float, list[float]] = {}
    max_tokens = 0
    for r in rows:
        if r.get("status") != "ok" or r.get("kc") in (None, ""):
            continue
        per_eps.setdefault(round(float(r["eps"]), 9), []).append(float(r["kc"]))
        if r.get("max_tokens") not in (None, ""):
            max_tokens = max(max_tokens, int(float(r["max_tokens"])))
    with style():
        if not per_eps:
            fig = figure(SINGLE_COLUMN, 1.4)
            ax = fig.add_subplot()
            ax.text(0.5, 0.5, "no images scored", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            return fig
        bins = histogram_edges([v for kcs in per_eps.values() for v in kcs], max_tokens)
        fig = figure(SINGLE_COLUMN, 0.55 + 0.95 * len(per_eps))
        axes = fig.subplots(len(per_eps), 1, sharex=True, squeeze=False)[:, 0]
        for ax, color, (e, kcs) in zip(axes, colors(len(per_eps)), sorted(per_eps.items())):
            kcs_a = np.asarray(kcs)
            med = float(np.median(kcs_a))
            counts = np.histogram(kcs_a, bins=bins)[0]
            ax.stairs(counts, bins, fill=True, color=color, alpha=0.25, linewidth=0)
            ax.stairs(counts, bins, color=color, linewidth=1.0)
            ax.axvline(med, color="black", linestyle="--", linewidth=0.8)
            ax.text(0.99, 0.95, f"ε = {e:g}   n = {kcs_a.size}   median {med:g}", transform=ax.transAxes,
                    ha="right", va="top")
            ax.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
            ax.set_ylim(0, 1.45 * max(1, int(counts.max())))   # room for the label above the bars
            ax.grid(axis="x", visible=False)
            ax.set_ylabel("images")
        axes[0].set_xlim(bins[0], bins[-1])
        axes[-1].set_xlabel("KC: tokens needed at ε" + (f" (of T_max = {max_tokens})" if max_tokens else ""))
        if title:
            fig.suptitle(title)
        return fig


def kc_histogram(rows: Iterable[dict[str, Any]], out_png: str | os.PathLike, title: str | None = None) -> Path:
    """``kc_histogram_figure`` written to ``out_png`` (``karl complexity --plot``)."""
    return save(kc_histogram_figure(rows, title), out_png)


def _show_budgets(budgets: list[int], n: int = 5) -> list[int]:
    if len(budgets) <= n:
        return budgets
    picks = np.unique(np.round(np.geomspace(1, len(budgets), n)).astype(int)) - 1
    return [budgets[i] for i in picks]


def _tokens(t: int) -> str:
    return f"{t} token" + ("" if t == 1 else "s")


def show_figure(model: torch.nn.Module, image_path: str | os.PathLike, out_png: str | os.PathLike,
                eps_list: Sequence[float] = EPS_SERIES, device: str | torch.device | None = None,
                budgets: Sequence[int] | None = None) -> dict[str, Any]:
    """One image under the tokenizer: the input; reconstructions at growing budgets with every token
    kept (``oracle.budget_reconstructions``: prefixes of one T_max encoding under the smallest ε bin
    for KARL); the adaptive reconstruction at each ε with its KC; and, for a model with a halting head,
    p_halt per token at each ε against the halting threshold. A search-only model (ALIT) shows its
    search's KC at each ε instead. KC, L1 and p_halt come from the measuring core (``measure``);
``image_path`` may name a file or a tar member (``shard.tar/KEY.EXT``). Returns the numbers drawn."""
    eps_list = validate_eps(eps_list)
    check_eps(model, "single", eps_list)
    dev = resolve_device(device, model)
    prepare_model(model, dev)
    cfg = model.config
    single = "single" in methods_for(model)
    found = collect_inputs([image_path])
    if len(found) != 1:
        raise UsageError(f"show draws one image; {os.fsdecode(image_path)} holds {len(found)} "
                         "(name one file or one tar member, shard.tar/KEY.EXT)")
    try:
        arr = read_pixels(found[0], cfg.resolution)
    except ImageLoadError as e:
        raise UsageError(f"cannot read {image_path}: {e}") from None
    budgets = list(budgets) if budgets else _show_budgets(cfg.budgets)
    with inference(dev):
        x = to_model_input(torch.from_numpy(arr.transpose(2, 0, 1).copy()).unsqueeze(0), dev)
        prefix = [(t, rec[0].permute(1, 2, 0).cpu().numpy(), float((rec - x).abs().mean()))
                  for t, rec in budget_reconstructions(model, x, budgets)]
    m = measure(model, x, eps_list, default_method(model), keep_recon=True, keep_halting=single)
    adaptive = [{"eps": e, "kc": int(m.kc[0, j]), "kc_soft": float(m.kc_soft[0, j]), "l1": float(m.l1[0, j]),
                 "p_halt": m.p_halt[0, j].numpy() if single else None,
                 "image": m.recon[0, j].permute(1, 2, 0).float().cpu().numpy()} for j, e in enumerate(eps_list)]

    ncols = max(len(budgets) + 1, len(eps_list) + 1)
    rows = 3 if single else 2
    with style():
        fig = figure(DOUBLE_COLUMN, 1.5 * 2 + (1.7 if single else 0) + 0.3)
        grid = fig.add_gridspec(rows, ncols, height_ratios=[1, 1, 1.15][:rows])
        # A non-UTF-8 file name (surrogate-escaped str) cannot be drawn: show its bad bytes as \xNN.
        name = os.fsencode(Path(image_path).name).decode("utf-8", "backslashreplace").replace("$", r"\$")

        def panel(r: int, c: int, img: np.ndarray, title: str) -> None:
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)

        panel(0, 0, arr / 255.0, f"input ({cfg.resolution} px)")
        first = "first " if "prefix" in methods_for(model) else ""   # ALIT's tokens are not prefixes
        for c, (t, img, l1) in enumerate(prefix, start=1):
            panel(0, c, img, f"{first}{_tokens(t)}\nL1 {l1:.3f}")
        tax = fig.add_subplot(grid[1, 0])
        tax.set_axis_off()
        tax.text(0.5, 0.5, "adaptive:\nKC at each ε\n(" + ("single pass" if single else "search") + ")",
                 ha="center", va="center", transform=tax.transAxes)
        for c, a in enumerate(adaptive, start=1):
            hit = "✓" if a["l1"] <= a["eps"] else "✗"
            # One fact per line: "ε=0.05: KC 108/384" on one line ran into the next panel's title.
            panel(1, c, a["image"], f"ε={a['eps']:g}\nKC {a['kc']}/{cfg.max_tokens}\nL1 {a['l1']:.3f} {hit}")
        if single:
            ax = fig.add_subplot(grid[2, :])
            idx = np.arange(cfg.max_tokens)
            # Step lines, not bars: side-by-side bars for several ε blur together at hundreds of tokens.
            for a, color in zip(adaptive, colors(len(adaptive))):
                ax.step(idx, a["p_halt"], where="mid", color=color, linewidth=1.0,
                        label=f"ε={a['eps']:g}: KC {a['kc']} (soft {a['kc_soft']:.1f})")
                ax.axvline(a["kc"] - 0.5, color=color, linestyle=":", linewidth=0.8)   # first dropped token
            ax.axhline(cfg.halt_threshold, color=ACCENT, linestyle="--", linewidth=0.8,
                       label=f"halt threshold {cfg.halt_threshold:g}")
            ax.set_xlim(-0.6, cfg.max_tokens - 0.4)
            ax.set_ylim(-0.05, 1.05)    # below 0, so a p_halt of 0 is a visible line, not the axis
            ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
            ax.set_xlabel("1D token index")
            ax.set_ylabel("p_halt")
            ax.set_title("halting probability per token (tokens above the threshold are dropped)")
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncols=min(len(adaptive) + 1, 3))   # off the lines
        fig.suptitle(f"KARL on {name}" if single else f"{type(model).__name__} on {name}")
        save(fig, out_png)
    return {"budgets": [{"tokens": t, "l1": l1} for t, _, l1 in prefix],
            "eps": [{k: a[k] for k in ("eps", "kc", "kc_soft", "l1")} for a in adaptive]}
