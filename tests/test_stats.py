"""Noise-aware statistics (analysis/stats.py): the bootstrap against cases computed by hand or by enumeration, the
three verdicts on constructed data, seeds widening the interval, and the Welch fallback against scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from hmem_lit.analysis import stats


def _mean_metric(values, strata=None) -> stats.Metric:
    x = np.atleast_2d(np.asarray(values, float))
    n = x.shape[1]
    strata = np.zeros(n, int) if strata is None else np.asarray(strata)
    w = np.array([1.0 / (len(np.unique(strata)) * (strata == s).sum()) for s in strata])
    return stats.Metric(x * w, None, strata)


def test_bootstrap_interval_matches_exhaustive_enumeration():
    """Four items [0, 0, 1, 3]: all 4^4 = 256 resamples are equally likely; the percentile interval of a large
    bootstrap lands on the exact 2.5% / 97.5% quantiles of the enumerated distribution of resample means."""
    vals = [0.0, 0.0, 1.0, 3.0]
    means = np.sort([np.mean(c) for c in itertools.product(vals, repeat=4)])
    cdf = np.arange(1, len(means) + 1) / len(means)
    lo_exact = means[np.searchsorted(cdf, 0.025)]
    hi_exact = means[np.searchsorted(cdf, 0.975)]
    assert (lo_exact, hi_exact) == (0.0, 2.25)  # by hand: 16 of 256 resamples (all four draws a 0) have mean 0
    iv = stats.bootstrap(_mean_metric(vals), n_boot=40_000, seed=3)
    assert iv.estimate == pytest.approx(1.0)
    assert iv.lo == pytest.approx(lo_exact) and iv.hi == pytest.approx(hi_exact)  # P(mean <= 2) = 0.949 < 0.975


def test_a_constant_paired_difference_has_a_zero_width_interval():
    rng = np.random.default_rng(0)
    b = rng.random(50)
    iv = stats.bootstrap_diff(_mean_metric(b + 0.1), _mean_metric(b), n_boot=500)
    assert iv.estimate == pytest.approx(0.1) and iv.lo == pytest.approx(0.1) and iv.hi == pytest.approx(0.1)
    assert stats.verdict(iv) == "holds" and stats.verdict(iv, better=-1) == "does not hold"


def test_the_three_verdicts_on_constructed_data():
    rng = np.random.default_rng(1)
    n = 400
    base = (rng.random(n) < 0.4).astype(float)
    better = np.where(rng.random(n) < 0.2, 1.0, base)  # ~12 points better, paired
    worse = np.where(rng.random(n) < 0.2, 0.0, base)
    noisy = np.where(rng.random(n) < 0.1, 1.0 - base, base)  # flips both ways: no systematic difference
    B = _mean_metric(base)
    assert stats.verdict(stats.bootstrap_diff(_mean_metric(better), B)) == "holds"
    assert stats.verdict(stats.bootstrap_diff(_mean_metric(worse), B)) == "does not hold"
    iv = stats.bootstrap_diff(_mean_metric(noisy), B)
    assert stats.verdict(iv) == "within noise" and iv.lo < 0 < iv.hi
    # lower is better (bits per byte): the same intervals read the other way round
    assert stats.verdict(stats.bootstrap_diff(_mean_metric(worse), B), better=-1) == "holds"


def test_strata_weight_each_probe_equally():
    # probe 0: 10 items all right, probe 1: 2 items all wrong -> mean over probes 0.5 (not 10/12)
    m = _mean_metric([1.0] * 10 + [0.0] * 2, strata=[0] * 10 + [1] * 2)
    iv = stats.bootstrap(m, n_boot=300)
    assert iv.estimate == pytest.approx(0.5) and iv.lo == pytest.approx(0.5) and iv.hi == pytest.approx(0.5)


def test_seed_variation_widens_the_interval():
    rng = np.random.default_rng(2)
    items = (rng.random(300) < 0.5).astype(float)
    same = _mean_metric(np.stack([items, items, items]))
    shifted = _mean_metric(np.stack([np.clip(items + d, 0, 1) * (1 - abs(d)) for d in (-0.2, 0.0, 0.2)]))
    w_same = stats.bootstrap(same, seed=0)
    w_shift = stats.bootstrap(shifted, seed=0)
    assert (w_shift.hi - w_shift.lo) > 1.5 * (w_same.hi - w_same.lo)
    assert w_same.n_seeds == (3,)


def test_ratio_metric_is_a_ratio_of_sums():
    num = np.array([[10.0, 30.0, 60.0]])
    den = np.array([[10.0, 10.0, 20.0]])
    m = stats.Metric(num, den, np.zeros(3, int))
    assert m.estimate() == pytest.approx(100.0 / 40.0)
    iv = stats.bootstrap(m, n_boot=500)
    assert 1.0 <= iv.lo <= iv.estimate <= iv.hi <= 3.0


def test_welch_fallback_matches_scipy_and_refuses_one_seed():
    from scipy import stats as st

    a, b = [40.0, 42.5, 41.0], [37.0, 39.5, 36.0, 38.0]
    iv = stats.seed_interval(a, b)
    ref = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert iv.lo == pytest.approx(ref.low) and iv.hi == pytest.approx(ref.high)
    one = stats.seed_interval([40.0], [37.0, 38.0])
    assert one.estimate == pytest.approx(2.5) and math.isnan(one.lo)
    assert stats.verdict(one) == "no CI (one seed)"


def test_metrics_must_hold_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        stats.bootstrap_diff(_mean_metric([1.0, 0.0]), _mean_metric([1.0, 0.0, 1.0]))


def test_arm_labels_drop_the_seed_and_colours_are_unique_per_arm():
    """Arms pool seeds, so their labels carry no seed (quickstart `_seed<k>` names, sweep trial `seed-<k>` params and
    the trial hash that covers them), and Fig. 1 never draws two arms in one colour (a sweep's several memory
    configurations all evaluated `fetched`)."""
    from hmem_lit.analysis.compare import Arm, _arm_name, _colors

    assert _arm_name({"name": "memory_seed2"}) == "memory"
    assert _arm_name({"name": "dense_2x"}) == "dense_2x"
    assert _arm_name({"name": "type-ffn_seed-0_82c220"}) == "type-ffn"
    assert _arm_name({"name": "fetched-36864_level-2_seed-1_0a1b2c"}) == "fetched-36864_level-2"
    assert _arm_name({"name": "level-2_fetched-9_abcdef"}) == "level-2_fetched-9_abcdef"  # no seed: name kept
    arms = [
        Arm(f"{n} [{m}]" if m != "prior" else n, m, [], [], [])
        for n in ("type-ffn", "type-kv", "type-lora", "level-1", "level-2", "level-3")
        for m in ("fetched", "generic")
    ] + [Arm("anchor", "none", [], [], []), Arm("leaf prior", "prior", [], [], [])]
    colors = _colors(arms)
    assert len(set(colors.values())) == len(arms)
    assert colors["type-ffn [fetched]"] == "#1f77b4" and colors["anchor"] == "#7f7f7f"  # the fixed ones stay
    assert colors["leaf prior"] == "#d62728"
