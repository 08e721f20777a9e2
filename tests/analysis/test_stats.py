"""karl_cli.analysis.stats against scipy, with ties, constant inputs and tiny n."""
import math
import warnings

import numpy as np
import pytest
from scipy import stats as st

from karl_cli.analysis.stats import (correlation, kendall, pearson, spearman, spearman_bootstrap, spearman_difference,
                             undefined_reason)


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = 0.6 * x + rng.normal(size=200)
    return x, y


def test_matches_scipy_continuous(data):
    x, y = data
    assert spearman(x, y) == pytest.approx(st.spearmanr(x, y).statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(st.pearsonr(x, y).statistic, abs=1e-12)
    assert kendall(x, y) == pytest.approx(st.kendalltau(x, y).statistic, abs=1e-12)


def test_matches_scipy_with_heavy_ties():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 5, size=300).astype(float)          # token counts: many ties
    y = np.round(x * 10 + rng.normal(0, 15, size=300))      # ratings: ties too
    assert spearman(x, y) == pytest.approx(st.spearmanr(x, y).statistic, abs=1e-12)
    assert kendall(x, y) == pytest.approx(st.kendalltau(x, y, variant="b").statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(st.pearsonr(x, y).statistic, abs=1e-12)


def test_known_small_values():
    # Hand-checkable: ranks of x = [1, 2.5, 2.5, 4], y strictly increasing.
    x, y = [1, 2, 2, 3], [1, 2, 3, 4]
    assert spearman(x, y) == pytest.approx(0.9486832980505138)
    # tau-b: 5 concordant, 0 discordant, 1 tie in x: 5 / sqrt(5 * 6)
    assert kendall(x, y) == pytest.approx(5 / math.sqrt(30))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_constant_and_tiny_inputs_give_nan_with_reason():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no scipy ConstantInputWarning, no numpy RuntimeWarning
        c = correlation([1.0, 1.0, 1.0, 1.0], [1, 2, 3, 4], n_boot=200)
        assert math.isnan(c.spearman) and math.isnan(c.pearson) and math.isnan(c.kendall)
        assert math.isnan(c.spearman_lo) and c.reason == "x is constant" and c.n == 4
        assert undefined_reason([1, 2, 3], [5, 5, 5]) == "y is constant"
        small = correlation([1, 2], [2, 1])
        assert small.n == 2 and math.isnan(small.spearman) and "n=2" in small.reason
        assert math.isnan(spearman([], []))


def test_non_finite_pairs_are_dropped():
    x = [1, 2, np.nan, 4, 5, 6]
    y = [2, 1, 3, np.inf, 5, 7]
    c = correlation(x, y, n_boot=0)
    assert c.n == 4
    assert c.spearman == pytest.approx(st.spearmanr([1, 2, 5, 6], [2, 1, 5, 7]).statistic)


def test_bootstrap_ci_contains_estimate_and_is_seeded(data):
    x, y = data
    rho = spearman(x, y)
    lo, hi, boots = spearman_bootstrap(x, y, n_boot=2000, seed=7)
    assert lo < rho < hi
    assert boots.shape == (2000,)
    assert spearman_bootstrap(x, y, n_boot=2000, seed=7)[:2] == (lo, hi)
    assert spearman_bootstrap(x, y, n_boot=2000, seed=8)[:2] != (lo, hi)
    # A 95% interval of ρ for n=200 at ρ≈0.5 is roughly ±0.1 wide: not degenerate, not huge.
    assert 0.1 < hi - lo < 0.35
    # Each resample is re-ranked: resample 0 reproduces by hand.
    idx = np.random.default_rng(7).integers(0, len(x), size=(1, len(x)))[0]
    assert boots[0] == pytest.approx(st.spearmanr(x[idx], y[idx]).statistic, abs=1e-12)


def test_bootstrap_agrees_with_scipy_bootstrap(data):
    x, y = data
    lo, hi, _ = spearman_bootstrap(x, y, n_boot=3000, seed=0)
    ref = st.bootstrap((x, y), lambda a, b: st.spearmanr(a, b).statistic, paired=True, vectorized=False,
                       n_resamples=3000, method="percentile", random_state=0).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.03) and hi == pytest.approx(ref.high, abs=0.03)


def test_bootstrap_chunks_give_the_same_answer(data, monkeypatch):
    import karl_cli.analysis.stats as s
    x, y = data
    full = s.spearman_bootstrap(x, y, n_boot=300, seed=3)[2]
    monkeypatch.setattr(s, "_CHUNK_VALUES", 1000)  # 5 resamples per chunk
    np.testing.assert_allclose(s.spearman_bootstrap(x, y, n_boot=300, seed=3)[2], full)


def test_difference_is_the_gap_between_the_two_rhos_and_is_seeded(data):
    x, y = data
    z = x + np.random.default_rng(5).normal(size=x.size)
    d = spearman_difference(x, z, y, n_boot=400, seed=3)
    assert d.n == x.size and d.reason == ""
    assert d.delta == pytest.approx(spearman(x, y) - spearman(z, y))
    assert d.lo < d.delta < d.hi
    assert spearman_difference(x, z, y, n_boot=400, seed=3) == d
    swapped = spearman_difference(z, x, y, n_boot=400, seed=3)   # same resamples, sign flipped
    assert swapped.delta == pytest.approx(-d.delta)
    assert (swapped.lo, swapped.hi) == pytest.approx((-d.hi, -d.lo))


def test_paired_difference_sees_a_gap_that_separate_cis_cannot():
    # b is a slightly noisier copy of a: b ranks y worse on nearly every resample of the same items,
    # while the two separate CIs overlap widely.
    rng = np.random.default_rng(0)
    y = rng.normal(size=300)
    a = y + rng.normal(size=300)
    b = a + 0.3 * rng.normal(size=300)
    d = spearman_difference(a, b, y, n_boot=1000, seed=0)
    a_lo, a_hi, _ = spearman_bootstrap(a, y, n_boot=1000, seed=0)
    b_lo, b_hi, _ = spearman_bootstrap(b, y, n_boot=1000, seed=0)
    assert d.lo > 0
    assert a_lo < b_hi   # the naive comparison would call it a tie
    assert d.hi - d.lo < 0.5 * min(a_hi - a_lo, b_hi - b_lo)


def test_difference_drops_non_finite_items_and_explains_undefined():
    rng = np.random.default_rng(2)
    a, b, y = rng.normal(size=(3, 50))
    a[0], b[1], y[2] = np.nan, np.inf, np.nan
    assert spearman_difference(a, b, y, n_boot=50).n == 47
    flat = spearman_difference(np.ones(50), b, y, n_boot=50)
    assert math.isnan(flat.delta) and flat.reason == "x is constant"
    no_ci = spearman_difference(a, b, y, n_boot=0)
    assert math.isfinite(no_ci.delta) and math.isnan(no_ci.lo) and math.isnan(no_ci.hi)
    with pytest.raises(ValueError):
        spearman_difference(a, b[:10], y)
