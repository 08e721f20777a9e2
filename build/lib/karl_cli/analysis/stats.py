"""Rank and linear correlation with honest edge cases: Spearman ρ (+ seeded percentile bootstrap CI),
Pearson r and Kendall τ-b, and the paired difference of two measures' ρ (does one beat the other?).

Pairs where either value is NaN/inf are dropped first; ``n`` is the number of pairs used. A
coefficient that is undefined (fewer than 3 pairs, a constant input) is NaN and ``reason`` says why;
nothing here raises or warns on such data.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _st

MIN_N = 3
# Bootstrap resamples are ranked in chunks of at most this many values, to bound memory.
_CHUNK_VALUES = 2_000_000


@dataclass(frozen=True)
class Correlation:
    """Correlation of one pair of variables; NaN coefficients carry a ``reason``."""

    n: int
    spearman: float
    spearman_lo: float
    spearman_hi: float
    pearson: float
    kendall: float
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def undefined_reason(x, y) -> str:
    """Why no correlation of (x, y) is defined ('' if it is): after dropping non-finite pairs."""
    x, y = _pairs(x, y)
    if x.size < MIN_N:
        return f"n={x.size} < {MIN_N}"
    cx, cy = bool(np.all(x == x[0])), bool(np.all(y == y[0]))
    if cx and cy:
        return "both inputs constant"
    if cx:
        return "x is constant"
    if cy:
        return "y is constant"
    return ""


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row of a with the same row of b; NaN for rows where either is constant."""
    const = (a.max(axis=-1) == a.min(axis=-1)) | (b.max(axis=-1) == b.min(axis=-1))
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    num = (a * b).sum(axis=-1)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    return np.where(const, np.nan, np.clip(r, -1.0, 1.0))


def pearson(x, y) -> float:
    """Pearson r; NaN when undefined (see ``undefined_reason``)."""
    x, y = _pairs(x, y)
    if undefined_reason(x, y):
        return math.nan
    return float(_pearson_rows(x[None], y[None])[0])


def spearman(x, y) -> float:
    """Spearman ρ: Pearson r of the ranks, ties get their average rank (as scipy.stats.spearmanr)."""
    x, y = _pairs(x, y)
    if undefined_reason(x, y):
        return math.nan
    return float(_pearson_rows(_st.rankdata(x)[None], _st.rankdata(y)[None])[0])


def kendall(x, y) -> float:
    """Kendall τ-b (tie-corrected); NaN when undefined."""
    x, y = _pairs(x, y)
    if undefined_reason(x, y):
        return math.nan
    return float(_st.kendalltau(x, y, variant="b").statistic)


def _check_bootstrap(n_boot: int, level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")


def _bootstrap(columns: tuple[np.ndarray, ...], n_boot: int, seed: int, stat) -> np.ndarray:
    """``stat`` of the re-ranked columns (average ranks for ties) on ``n_boot`` resamples of the
    items, drawn with replacement from a Generator seeded with ``seed``; in chunks, to bound memory."""
    n = columns[0].size
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_VALUES // n)
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(n_boot, start + chunk) - start, n))
        out[start:start + len(idx)] = stat(*(_st.rankdata(c[idx], axis=1) for c in columns))
    return out


def _percentile_ci(out: np.ndarray, n_boot: int, level: float) -> tuple[float, float]:
    """The percentile interval of the defined resampled values; NaNs if too few are defined (tiny n
    with many ties): no honest interval."""
    good = out[np.isfinite(out)]
    if good.size < max(10, n_boot // 2):
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(good, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def spearman_bootstrap(x, y, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                       ) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap CI of Spearman ρ: (lo, hi, the resampled ρ values).

    Pairs are resampled with replacement ``n_boot`` times (numpy Generator seeded with ``seed``, so
    the same call gives the same interval); each resample is re-ranked (average ranks for ties).
    Resamples that happen to be constant in x or y have no ρ and are left out of the percentiles.
    """
    _check_bootstrap(n_boot, level)
    x, y = _pairs(x, y)
    if n_boot == 0 or undefined_reason(x, y):
        return math.nan, math.nan, np.empty(0)
    out = _bootstrap((x, y), n_boot, seed, _pearson_rows)
    return (*_percentile_ci(out, n_boot, level), out)


def correlation(x, y, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Correlation:
    """Every coefficient for one pair of variables; never raises on degenerate data."""
    x, y = _pairs(x, y)
    reason = undefined_reason(x, y)
    if reason:
        nan = math.nan
        return Correlation(int(x.size), nan, nan, nan, nan, nan, reason)
    lo, hi, boots = spearman_bootstrap(x, y, n_boot=n_boot, seed=seed, level=level)
    note = ""
    if n_boot and not math.isfinite(lo):
        note = "too few bootstrap resamples with a defined ρ"
    return Correlation(int(x.size), spearman(x, y), lo, hi, pearson(x, y), kendall(x, y), note)


@dataclass(frozen=True)
class Difference:
    """ρ(a, y) − ρ(b, y) on the same items, with its paired bootstrap CI; NaN with a ``reason``
    where either ρ is undefined."""

    n: int
    delta: float
    lo: float
    hi: float
    reason: str = ""


def spearman_difference(a, b, y, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Difference:
    """How much better measure ``a`` ranks ``y`` than measure ``b`` does: ρ(a, y) − ρ(b, y).

    The CI is a paired percentile bootstrap: each resample draws one set of items and ranks both
    measures on it. Two measures of the same images are correlated, so this interval is far
    narrower than comparing their separate CIs, and it is the honest test of "a beats b".
    Items where any of the three values is NaN/inf are dropped first.
    """
    _check_bootstrap(n_boot, level)
    a, b, y = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b, y))
    if not a.shape == b.shape == y.shape:
        raise ValueError(f"a, b and y differ in length: {a.size}, {b.size}, {y.size}")
    ok = np.isfinite(a) & np.isfinite(b) & np.isfinite(y)
    a, b, y = a[ok], b[ok], y[ok]
    n = int(a.size)
    reason = undefined_reason(a, y) or undefined_reason(b, y)
    if reason:
        return Difference(n, math.nan, math.nan, math.nan, reason)
    delta = spearman(a, y) - spearman(b, y)
    if n_boot == 0:
        return Difference(n, delta, math.nan, math.nan)
    out = _bootstrap((a, b, y), n_boot, seed, lambda ra, rb, ry: _pearson_rows(ra, ry) - _pearson_rows(rb, ry))
    lo, hi = _percentile_ci(out, n_boot, level)
    return Difference(n, delta, lo, hi, "" if math.isfinite(lo) else "too few bootstrap resamples with a defined ρ")
