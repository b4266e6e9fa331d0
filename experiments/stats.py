"""Summary statistics for results: means with Student-t confidence intervals and paired differences."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class Estimate:
    """mean with a two-sided `level` confidence interval [low, high] over n samples (t-interval)."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def format(self, digits: int = 3) -> str:
        if self.n < 2 or not math.isfinite(self.half_width):
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} ± {self.half_width:.2g}"


def mean_ci(values: Sequence[float], level: float = 0.95) -> Estimate:
    """Student-t interval mean ± t_{(1+level)/2, n-1} s / sqrt(n); with one sample the interval is (-inf, inf)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, level)
    mean = float(x.mean())
    if x.size < 2:
        return Estimate(mean, -math.inf, math.inf, 1, level)
    half = float(scipy_stats.t.ppf((1 + level) / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Estimate(mean, mean - half, mean + half, int(x.size), level)


def paired_difference(values: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean of values[i] - baseline[i] (paired by seed) with its t-interval."""
    if len(values) != len(baseline):
        raise ValueError(f"paired_difference needs equal lengths, got {len(values)} and {len(baseline)}")
    return mean_ci([a - b for a, b in zip(values, baseline)], level)


def paired_ratio(values: Sequence[float], baseline: Sequence[float], level: float = 0.95) -> Estimate:
    """Geometric mean of values[i] / baseline[i] (paired by seed) with the t-interval of the log ratios mapped back:
    exp(mean_i log r_i +- t s / sqrt(n)); a ratio of counts (e.g. steps) is skewed, its logarithm much less so.
    Every value must be positive."""
    if len(values) != len(baseline):
        raise ValueError(f"paired_ratio needs equal lengths, got {len(values)} and {len(baseline)}")
    if any(not (a > 0 and b > 0) for a, b in zip(values, baseline)):
        raise ValueError(f"paired_ratio needs positive values, got {list(values)} and {list(baseline)}")
    logs = mean_ci([math.log(a / b) for a, b in zip(values, baseline)], level)
    return Estimate(math.exp(logs.mean), math.exp(logs.low), math.exp(logs.high), logs.n, level)


def significance(estimate: Estimate) -> int:
    """Where the interval lies against 0: -1 wholly below (e.g. a lower loss than the baseline), +1 wholly above,
    0 when it contains 0 or is not finite."""
    if math.isfinite(estimate.high) and estimate.high < 0:
        return -1
    if math.isfinite(estimate.low) and estimate.low > 0:
        return 1
    return 0


def binomial_ci(successes: int, trials: int, level: float = 0.95) -> Estimate:
    """Observed frequency with a Wilson score interval (coverage of confidence intervals)."""
    if trials <= 0:
        return Estimate(math.nan, math.nan, math.nan, 0, level)
    z = float(scipy_stats.norm.ppf((1 + level) / 2))
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    # Rounding can put a bound a hair outside [0, 1] or past p itself at k = 0 or k = n.
    low, high = max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))
    return Estimate(p, low, high, trials, level)


def paired_t_p_value(values: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of values[i] - baseline[i] against 0 (nan with fewer than 2 finite
    pairs; 1 when every difference is 0)."""
    if len(values) != len(baseline):
        raise ValueError(f"paired_t_p_value needs equal lengths, got {len(values)} and {len(baseline)}")
    d = np.asarray([a - b for a, b in zip(values, baseline)], dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return math.nan
    if not np.any(d):
        return 1.0
    if d.std(ddof=1) == 0:
        return 0.0
    return float(scipy_stats.ttest_1samp(d, 0.0).pvalue)


def holm_reject(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise error rate `alpha`.

    Sort the m p-values; reject the k-th smallest while p_(k) <= alpha / (m - k + 1) (k = 1..m), stop at the first
    that is not. A nan p-value (too few seeds) is never rejected and still counts in m."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    m = len(p_values)
    order = sorted(range(m), key=lambda i: (math.isnan(p_values[i]), p_values[i]))
    reject = [False] * m
    for rank, index in enumerate(order):
        p = p_values[index]
        if math.isnan(p) or p > alpha / (m - rank):
            break
        reject[index] = True
    return reject
