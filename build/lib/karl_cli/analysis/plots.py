"""Figures, one function each, drawn with matplotlib's Agg backend (no display needed).

- ``kc_histogram(rows, out_png)``: the distribution of KC per ε (``karl complexity --plot``).
- ``show_figure(model, image_path, out_png, eps_list)``: one image under the tokenizer (``karl show``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.gridspec import GridSpec  # noqa: E402

from karl_cli.io.atomic import atomic_path  # noqa: E402
from karl_cli.errors import UsageError  # noqa: E402
from karl_cli.scoring.complexity import check_eps, validate_eps
from karl_cli.io.images import ImageLoadError, load_for_model
from karl_cli.runtime import inference, prepare_model, resolve_device, to_model_input

DEFAULT_SHOW_EPS = (0.03, 0.05, 0.09)


def _save(fig: "plt.Figure", out_png: str | os.PathLike, dpi: int = 130) -> Path:
    out = Path(out_png)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return out


def _colors(n: int) -> list:
    cmap = plt.get_cmap("viridis")
    return [cmap(v) for v in (np.linspace(0.1, 0.85, n) if n > 1 else [0.35])]


def kc_histogram(rows: Iterable[dict[str, Any]], out_png: str | os.PathLike, title: str | None = None) -> Path:
    """Histogram of KC (token counts of ``ok`` rows) for every ε, overlaid, with the medians marked."""
    per_eps: dict[float, list[float]] = {}
    max_tokens = 0
    for r in rows:
        if r.get("status") != "ok" or r.get("kc") in (None, ""):
            continue
        per_eps.setdefault(round(float(r["eps"]), 9), []).append(float(r["kc"]))
        if r.get("max_tokens") not in (None, ""):
            max_tokens = max(max_tokens, int(float(r["max_tokens"])))
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    if not per_eps:
        ax.text(0.5, 0.5, "no images scored", ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set_axis_off()
        return _save(fig, out_png)
    top = max(max_tokens, int(max(max(v) for v in per_eps.values())))
    width = max(1, int(np.ceil((top + 1) / 40)))
    bins = np.arange(0, top + width + 1, width) - 0.5
    for color, (e, kcs) in zip(_colors(len(per_eps)), sorted(per_eps.items())):
        kcs_a = np.asarray(kcs)
        ax.hist(kcs_a, bins=bins, histtype="stepfilled", alpha=0.35, color=color, edgecolor=color, linewidth=1.5,
                label=f"ε = {e:g}  (n = {kcs_a.size}, median {np.median(kcs_a):g})")
        ax.axvline(float(np.median(kcs_a)), color=color, linestyle="--", linewidth=1.2)
    ax.set_xlim(bins[0], bins[-1])
    ax.set_xlabel("KC: tokens needed at ε" + (f"  (of T_max = {max_tokens})" if max_tokens else ""))
    ax.set_ylabel("images")
    ax.set_title(title or "KARL complexity per ε")
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    return _save(fig, out_png)


def _show_budgets(budgets: list[int], n: int = 5) -> list[int]:
    if len(budgets) <= n:
        return budgets
    picks = np.unique(np.round(np.geomspace(1, len(budgets), n)).astype(int)) - 1
    return [budgets[i] for i in picks]


def show_figure(model: torch.nn.Module, image_path: str | os.PathLike, out_png: str | os.PathLike,
                eps_list: Sequence[float] = DEFAULT_SHOW_EPS, device: str | torch.device | None = None,
                budgets: Sequence[int] | None = None) -> dict[str, Any]:
    """One image under the tokenizer: the input; reconstructions from growing prefixes of one T_max
    encoding (smallest ε bin); KARL's adaptive reconstruction at each ε with its KC; and p_halt per
    token at each ε as bars against the halting threshold. Returns the numbers drawn."""

    eps_list = validate_eps(eps_list)
    check_eps(model, "single", eps_list)
    dev = resolve_device(device, model)
    prepare_model(model, dev)
    cfg = model.config
    try:
        arr = load_for_model(image_path, cfg.resolution)
    except ImageLoadError as e:
        raise UsageError(f"cannot read {image_path}: {e}") from None
    budgets = list(budgets) if budgets else _show_budgets(cfg.budgets)
    with inference(dev):
        x = to_model_input(torch.from_numpy(arr.transpose(2, 0, 1).copy()).unsqueeze(0), dev)
        lat = model.encode_tokens(x, torch.zeros(1, dtype=torch.long, device=dev), cfg.max_tokens)[0]
        prefix = []
        for t in budgets:
            rec = model.decode_tokens(lat[:, :t]).float().clamp(0, 1)
            prefix.append((t, rec[0].permute(1, 2, 0).cpu().numpy(), float((rec - x).abs().mean())))
        adaptive = []
        for e in eps_list:
            enc = model.encode(x, e)
            rec = model.decode(enc)
            adaptive.append({"eps": e, "kc": int(enc.kc[0]), "kc_soft": float(enc.kc_soft[0]),
                             "l1": float((rec - x).abs().mean()), "p_halt": enc.p_halt[0].float().cpu().numpy(),
                             "image": rec[0].permute(1, 2, 0).float().cpu().numpy()})

    ncols = max(len(budgets) + 1, len(eps_list) + 1)
    fig = plt.figure(figsize=(2.1 * ncols, 7.4))
    gs = GridSpec(3, ncols, figure=fig, height_ratios=[1, 1, 1.05], hspace=0.45, wspace=0.12)
    # A non-UTF-8 file name (surrogate-escaped str) cannot be drawn: show its bad bytes as \xNN.
    name = os.fsencode(Path(image_path).name).decode("utf-8", "backslashreplace").replace("$", r"\$")

    def panel(r: int, c: int, img: np.ndarray, title: str) -> None:
        ax = fig.add_subplot(gs[r, c])
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    panel(0, 0, arr / 255.0, f"input ({cfg.resolution}px)")
    for c, (t, img, l1) in enumerate(prefix, start=1):
        panel(0, c, img, f"first {t} tokens\nL1 {l1:.3f}")
    tax = fig.add_subplot(gs[1, 0])
    tax.set_axis_off()
    lines = ["KC at each ε", ""] + [f"ε={a['eps']:<5g} KC {a['kc']:>3d}  L1 {a['l1']:.3f}" for a in adaptive]
    tax.text(0.0, 0.95, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=8,
             transform=tax.transAxes)
    for c, a in enumerate(adaptive, start=1):
        hit = "✓" if a["l1"] <= a["eps"] else "✗"
        panel(1, c, a["image"], f"ε={a['eps']:g}: KC {a['kc']}/{cfg.max_tokens}\nL1 {a['l1']:.3f} {hit}")

    ax = fig.add_subplot(gs[2, :])
    colors = _colors(len(adaptive))
    idx = np.arange(cfg.max_tokens)
    # Step lines, not bars: side-by-side bars for several ε blur together at hundreds of tokens.
    for a, color in zip(adaptive, colors):
        ax.step(idx, a["p_halt"], where="mid", color=color, linewidth=1.4,
                label=f"ε={a['eps']:g}: KC {a['kc']} (soft {a['kc_soft']:.1f})")
        ax.axvline(a["kc"] - 0.5, color=color, linestyle=":", linewidth=1)   # first dropped token
    ax.axhline(cfg.halt_threshold, color="crimson", linestyle="--", linewidth=1,
               label=f"halt threshold {cfg.halt_threshold:g}")
    ax.set_xlim(-0.6, cfg.max_tokens - 0.4)
    ax.set_ylim(0, 1.32)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xlabel("1D token index")
    ax.set_ylabel("p_halt")
    ax.set_title("halting probability per token (tokens above the line are dropped)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=8, ncol=min(4, len(adaptive) + 1), loc="upper center")
    fig.suptitle(f"KARL on {name}", fontsize=12, fontweight="bold")
    _save(fig, out_png)
    return {"budgets": [{"tokens": t, "l1": l1} for t, _, l1 in prefix],
            "eps": [{k: a[k] for k in ("eps", "kc", "kc_soft", "l1")} for a in adaptive]}
