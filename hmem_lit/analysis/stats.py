"""Noise-aware comparisons: bootstrap confidence intervals over items and seeds, and the verdict rule.

Every comparison the suite prints is `difference [95% CI] verdict`:

    RULE: holds = the 95% CI of the difference lies entirely on the claimed side of 0; does not hold = it lies
          entirely on the other side; within noise = it contains 0. No CI (one seed and no item records) = no verdict.

The interval is a percentile bootstrap (`bootstrap`):
- items are resampled **within strata** (a probe, a task; so each probe keeps its size and a mean over probes stays
  a mean over probes) and **paired**: both arms are scored on the same resampled items;
- when an arm has several seeds, each replicate also resamples that arm's seeds (independently per arm), so the
  interval holds both sources of noise: which items were asked and which seed trained the model.
A metric is `sum(num * count) / sum(den * count)` over items (`den` None: the weights sum to one, a weighted
mean): accuracy means over probes, bits per byte (bits over bytes) and the like are all of this form.
`seed_interval` is the fallback when only per-run numbers exist (no item records): a Welch t interval over seeds,
which needs two seeds per arm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RULE = (
    "holds: the 95% CI of the difference lies on the claimed side of 0; does not hold: it lies on the other side; "
    "within noise: it contains 0 (CI: paired bootstrap over items, stratified by probe, and over seeds when an "
    "arm has several)"
)
N_BOOT = 2000


@dataclass
class Metric:
    """One arm's values of one metric on aligned items: rows = seeds, columns = items (the same items, in the same
    order, for every seed and for the arm it is compared with)."""

    num: np.ndarray  # (S, N)
    den: np.ndarray | None  # (S, N), or None: `num` already carries the weights (the estimate is sum(num))
    strata: np.ndarray  # (N,) int stratum of each item

    def estimate(self) -> float:
        """The point estimate: the mean over seeds of the metric on all items."""
        return float(np.mean(self._ratio(self.num.sum(1), None if self.den is None else self.den.sum(1))))

    @staticmethod
    def _ratio(num: np.ndarray, den: np.ndarray | None) -> np.ndarray:
        return num if den is None else num / np.where(den == 0, np.nan, den)


@dataclass
class Interval:
    estimate: float
    lo: float
    hi: float
    n_items: int
    n_seeds: tuple[int, ...]

    def fmt(self, scale: float = 1.0, dec: int = 1) -> str:
        if math.isnan(self.lo):
            return f"{self.estimate * scale:.{dec}f}"
        return f"{self.estimate * scale:.{dec}f} [{self.lo * scale:.{dec}f}, {self.hi * scale:.{dec}f}]"


def _counts(strata: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, N) float32 resample counts: each replicate draws every stratum's items with replacement, as many as
    it holds. The same counts serve every arm of a comparison (paired) and every metric on the same items."""
    key = (strata.tobytes(), len(strata), n_boot, seed)
    got = _COUNTS.get(key)
    if got is not None:
        return got
    rng = np.random.default_rng([seed, 7])
    n = len(strata)
    w = np.zeros(n_boot * n, np.float32)
    for s in np.unique(strata):
        g = np.nonzero(strata == s)[0]
        idx = g[rng.integers(0, len(g), size=(n_boot, len(g)))]  # (B, |g|) items drawn in this stratum
        w += np.bincount((np.arange(n_boot)[:, None] * n + idx).ravel(), minlength=n_boot * n).astype(np.float32)
    got = w.reshape(n_boot, n)
    if len(_COUNTS) > 8:
        _COUNTS.clear()
    _COUNTS[key] = got
    return got


_COUNTS: dict[tuple, np.ndarray] = {}


def _replicates(metrics: list[Metric], n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, len(metrics)) bootstrap replicates of each metric's estimate with shared item draws."""
    strata = metrics[0].strata
    n = len(strata)
    for m in metrics:
        if m.num.shape[1] != n or (m.den is not None and m.den.shape != m.num.shape):
            raise ValueError("metrics compared must hold the same items")
    w = _counts(np.asarray(strata), n_boot, seed).T  # (N, B)
    rng = np.random.default_rng([seed, 11])
    out = np.empty((n_boot, len(metrics)))
    for k, m in enumerate(metrics):
        num = m.num.astype(np.float32) @ w  # (S, B) each seed's metric on each replicate's items
        per_seed = Metric._ratio(num, None if m.den is None else m.den.astype(np.float32) @ w).astype(np.float64)
        S = per_seed.shape[0]
        if S > 1:  # resample this arm's seeds too
            pick = rng.integers(0, S, size=(n_boot, S))
            out[:, k] = np.take_along_axis(per_seed.T, pick, 1).mean(1)
        else:
            out[:, k] = per_seed[0]
    return out


def bootstrap(metric: Metric, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> Interval:
    """One arm's estimate with its percentile CI."""
    rep = _replicates([metric], n_boot, seed)[:, 0]
    lo, hi = np.nanpercentile(rep, [50 * (1 - level), 50 * (1 + level)])
    return Interval(metric.estimate(), float(lo), float(hi), len(metric.strata), (metric.num.shape[0],))


def bootstrap_diff(a: Metric, b: Metric, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> Interval:
    """a - b on the same items (paired), with its percentile CI."""
    rep = _replicates([a, b], n_boot, seed)
    d = rep[:, 0] - rep[:, 1]
    lo, hi = np.nanpercentile(d, [50 * (1 - level), 50 * (1 + level)])
    return Interval(a.estimate() - b.estimate(), float(lo), float(hi), len(a.strata), (a.num.shape[0], b.num.shape[0]))


def seed_interval(a: list[float], b: list[float], level: float = 0.95) -> Interval:
    """mean(a) - mean(b) with a Welch t interval over seeds (per-run numbers only); NaN bounds when an arm has
    fewer than two seeds."""
    from scipy import stats as st

    a_, b_ = np.asarray(a, float), np.asarray(b, float)
    d = float(a_.mean() - b_.mean())
    if len(a_) < 2 or len(b_) < 2:
        return Interval(d, math.nan, math.nan, 0, (len(a_), len(b_)))
    va, vb = a_.var(ddof=1) / len(a_), b_.var(ddof=1) / len(b_)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(d, d, d, 0, (len(a_), len(b_)))
    df = (va + vb) ** 2 / (va**2 / (len(a_) - 1) + vb**2 / (len(b_) - 1))
    t = float(st.t.ppf(0.5 + level / 2, df))
    return Interval(d, d - t * se, d + t * se, 0, (len(a_), len(b_)))


def verdict(iv: Interval, better: int = 1) -> str:
    """The rule (RULE) for the claim "the difference is on the `better` side of 0" (+1: above, -1: below)."""
    if math.isnan(iv.lo) or math.isnan(iv.hi):
        return "no CI (one seed)"
    lo, hi = sorted((better * iv.lo, better * iv.hi))
    return "holds" if lo > 0 else "does not hold" if hi < 0 else "within noise"
