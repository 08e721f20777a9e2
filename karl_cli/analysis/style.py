"""The one look of every figure karl writes: sized for a paper's columns, fonts that stay readable
when printed at that size, colour-blind-safe colours, PNGs at 300 dpi, written atomically.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot, no GUI, no global
backend switch): ``figure(width, height)`` inside ``with style():``, then ``save(fig, path)``.
Widths are those of a two-column paper: ``SINGLE_COLUMN`` (3.5 in) and ``DOUBLE_COLUMN`` (7 in); a
saved PNG is exactly width × ``DPI`` pixels wide (no tight bounding box: constrained layout keeps
every label inside the figure).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from karl_cli.io.atomic import atomic_path

SINGLE_COLUMN = 3.5   # inches
DOUBLE_COLUMN = 7.0
DPI = 300

RC = {
    "font.family": "DejaVu Sans", "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "figure.titlesize": 9,
    "axes.spines.top": False, "axes.spines.right": False, "axes.linewidth": 0.6,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5,
    "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.5, "lines.linewidth": 1.2,
    "legend.frameon": False, "figure.dpi": 100, "savefig.dpi": DPI, "savefig.facecolor": "white",
    "figure.facecolor": "white", "axes.titlepad": 4.0,
}

# Okabe & Ito's colour-blind-safe palette (Color Universal Design), then greys.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#000000",
           "#999999", "#555555")
ACCENT = "#D55E00"   # fitted lines, thresholds
# Colours for many series side by side (bars, lines): Okabe & Ito's seven colours and a grey, then six
# of Paul Tol's that stay apart from them (every pair at least 22 CIELAB ΔE apart); no black, which
# hides black error bars.
SERIES = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442", "#999999",
          "#332288", "#661100", "#999933", "#882255", "#AA4499", "#DDCC77")


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The rc settings of every karl figure (fonts, line widths, grid), for building a figure."""
    with rc_context(RC):
        yield


def figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` × ``height`` inches with constrained layout, on the Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained", dpi=RC["figure.dpi"])
    FigureCanvasAgg(fig)
    return fig


def colors(n: int) -> list[str]:
    """``n`` colours from ``SERIES``, distinct up to its 14 (cycling past them)."""
    return [SERIES[i % len(SERIES)] for i in range(n)]


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` atomically at ``DPI``; the format comes from the suffix (PNG by default)."""
    path = Path(path)
    with style(), atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=DPI, facecolor="white")
    return path
