"""experiments.stats against hand computations: Student-t means, paired differences, Wilson intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from experiments.stats import Estimate, binomial_ci, mean_ci, paired_difference, paired_ratio

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=2, max_size=30)
levels = st.sampled_from([0.5, 0.8, 0.9, 0.95, 0.99])


def test_mean_ci_is_the_student_t_interval_computed_by_hand():
    """x = 1, 2, 4, 7: mean 3.5, s^2 = (6.25 + 2.25 + 0.25 + 12.25) / 3 = 7, half = t_{0.975, 3} sqrt(7) / 2."""
    estimate = mean_ci([1.0, 2.0, 4.0, 7.0])
    half = scipy_stats.t.ppf(0.975, 3) * math.sqrt(7) / 2
    assert scipy_stats.t.ppf(0.975, 3) == pytest.approx(3.182446305, rel=1e-9)
    assert (estimate.mean, estimate.n, estimate.level) == (3.5, 4, 0.95)
    assert estimate.low == pytest.approx(3.5 - half, rel=1e-12)
    assert estimate.high == pytest.approx(3.5 + half, rel=1e-12)
    assert estimate.half_width == pytest.approx(half, rel=1e-12)
    low, high = scipy_stats.t.interval(0.95, 3, loc=3.5, scale=math.sqrt(7) / 2)
    assert (estimate.low, estimate.high) == pytest.approx((low, high), rel=1e-12)


def test_mean_ci_at_another_level_uses_that_quantile():
    estimate = mean_ci([0.0, 1.0, 2.0], level=0.9)  # s = 1, n = 3
    assert estimate.half_width == pytest.approx(scipy_stats.t.ppf(0.95, 2) / math.sqrt(3), rel=1e-12)
    assert estimate.level == 0.9


def test_mean_ci_degenerate_samples():
    empty = mean_ci([])
    assert empty.n == 0 and all(math.isnan(v) for v in (empty.mean, empty.low, empty.high))
    single = mean_ci([2.5])
    assert (single.mean, single.low, single.high, single.n) == (2.5, -math.inf, math.inf, 1)
    assert single.format() == "2.5"
    # Missing values (a run that recorded none) are dropped, not counted.
    assert mean_ci([1.0, None, 3.0]) == mean_ci([1.0, 3.0])
    assert mean_ci([None]).n == 0


def test_mean_ci_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    draws = rng.normal(loc=10.0, scale=3.0, size=(2000, 5))
    covered = [e.low <= 10.0 <= e.high for e in map(mean_ci, draws)]
    assert 0.93 <= np.mean(covered) <= 0.97  # binomial sd at 2000 draws: 0.005


@given(samples, levels)
def test_mean_ci_is_symmetric_about_the_sample_mean(values, level):
    estimate = mean_ci(values, level)
    assert estimate.mean == pytest.approx(float(np.mean(values)), abs=1e-9)
    assert estimate.low <= estimate.mean <= estimate.high
    assert estimate.high - estimate.mean == pytest.approx(estimate.mean - estimate.low, abs=1e-6, rel=1e-9)


@given(samples, finite)
def test_mean_ci_moves_with_a_shift_and_keeps_its_width(values, shift):
    base, shifted = mean_ci(values), mean_ci([v + shift for v in values])
    assert shifted.mean == pytest.approx(base.mean + shift, abs=1e-6)
    assert shifted.half_width == pytest.approx(base.half_width, abs=1e-3, rel=1e-6)


@given(samples)
def test_a_higher_level_gives_a_wider_interval(values):
    assert mean_ci(values, 0.99).half_width >= mean_ci(values, 0.9).half_width >= mean_ci(values, 0.5).half_width


def test_estimate_format_and_dict():
    estimate = Estimate(mean=1.23456, low=1.0, high=1.5, n=5)
    assert estimate.format() == "1.23 ± 0.25"
    assert estimate.format(digits=2) == "1.2 ± 0.25"
    assert estimate.as_dict() == dict(mean=1.23456, low=1.0, high=1.5, n=5, level=0.95)


def test_paired_difference_is_the_t_interval_of_the_per_seed_differences():
    values, baseline = [1.0, 2.5, 3.0, 5.0], [0.5, 2.0, 3.5, 3.0]
    assert paired_difference(values, baseline) == mean_ci([0.5, 0.5, -0.5, 2.0])
    assert paired_difference(values, baseline, level=0.9) == mean_ci([0.5, 0.5, -0.5, 2.0], level=0.9)
    # Pairing removes the seed-to-seed spread that an unpaired comparison would carry.
    shared = [10.0, 20.0, 30.0, 40.0]
    paired = paired_difference([s + d for s, d in zip(shared, [1.0, 1.1, 0.9, 1.0])], shared)
    unpaired = mean_ci([s + d for s, d in zip(shared, [1.0, 1.1, 0.9, 1.0])])
    assert paired.half_width < 0.2 < unpaired.half_width
    assert paired.low > 0


def test_paired_difference_needs_equal_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])


@given(st.lists(finite, min_size=2, max_size=20), st.floats(min_value=-100, max_value=100))
def test_a_constant_paired_offset_has_a_zero_width_interval(baseline, offset):
    estimate = paired_difference([b + offset for b in baseline], baseline)
    assert estimate.mean == pytest.approx(offset, abs=1e-6)
    assert estimate.half_width == pytest.approx(0.0, abs=1e-6)


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval: (p + z^2/2n ± z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), p = k/n."""
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def test_binomial_ci_matches_the_wilson_interval_by_hand():
    estimate = binomial_ci(5, 10)
    assert (estimate.mean, estimate.n) == (0.5, 10)
    assert (estimate.low, estimate.high) == pytest.approx((0.2365931, 0.7634069), abs=1e-6)  # textbook values
    for k, n in [(0, 10), (1, 10), (19, 20), (20, 20), (950, 1000)]:
        estimate = binomial_ci(k, n)
        assert (estimate.low, estimate.high) == pytest.approx(wilson(k, n), rel=1e-12, abs=1e-15)
    assert binomial_ci(0, 10).high == pytest.approx(0.2775328, abs=1e-6)


def test_wilson_bounds_at_zero_and_all_successes_are_exactly_zero_and_one():
    """At k = 0 the lower bound is 0 and at k = n the upper bound is 1 exactly (centre - half = 0 analytically);
    rounding must not push them to 5e-17 or 1 - 1e-16, which would exclude the observed frequency."""
    for n in (3, 6, 7, 10, 13, 100):
        assert binomial_ci(0, n).low == 0.0, n
        assert binomial_ci(n, n).high == 1.0, n


def test_binomial_ci_without_trials_is_nan():
    estimate = binomial_ci(0, 0)
    assert estimate.n == 0 and math.isnan(estimate.mean) and math.isnan(estimate.low)


def test_binomial_ci_covers_p_about_95_percent_exactly_summed_over_outcomes():
    """Coverage = sum of Binomial(n, p) probabilities of the k whose interval contains p (no sampling)."""
    for p, n in [(0.3, 50), (0.9, 100), (0.5, 20)]:
        coverage = sum(scipy_stats.binom.pmf(k, n, p) for k in range(n + 1)
                       if binomial_ci(k, n).low <= p <= binomial_ci(k, n).high)
        assert 0.92 <= coverage <= 0.98, (p, n, coverage)


@given(st.integers(min_value=1, max_value=10_000), st.data())
def test_wilson_bounds_contain_the_frequency_and_stay_in_the_unit_interval(trials, data):
    successes = data.draw(st.integers(min_value=0, max_value=trials))
    estimate = binomial_ci(successes, trials)
    assert estimate.mean == successes / trials
    assert 0 <= estimate.low <= estimate.mean <= estimate.high <= 1


@given(st.integers(min_value=1, max_value=200), st.data(), st.integers(min_value=2, max_value=50))
def test_wilson_intervals_shrink_with_more_trials_at_the_same_frequency(trials, data, factor):
    successes = data.draw(st.integers(min_value=0, max_value=trials))
    few, many = binomial_ci(successes, trials), binomial_ci(successes * factor, trials * factor)
    assert many.mean == pytest.approx(few.mean)
    assert many.high - many.low < few.high - few.low


@given(st.integers(min_value=1, max_value=500), st.data())
def test_wilson_intervals_mirror_under_swapping_successes_and_failures(trials, data):
    successes = data.draw(st.integers(min_value=0, max_value=trials))
    estimate, mirrored = binomial_ci(successes, trials), binomial_ci(trials - successes, trials)
    assert estimate.low == pytest.approx(1 - mirrored.high, abs=1e-12)
    assert estimate.high == pytest.approx(1 - mirrored.low, abs=1e-12)


def test_holm_rejects_step_down_and_stops_at_the_first_failure():
    from experiments.stats import holm_reject
    # m = 4: thresholds 0.0125, 0.0167, 0.025, 0.05 for the sorted p-values.
    assert holm_reject([0.01, 0.04, 0.016, 0.5]) == [True, False, True, False]
    assert holm_reject([0.013, 0.001, 0.9, 0.02]) == [True, True, False, True]  # 0.001, 0.013 <= .0167, 0.02 <= .025
    assert holm_reject([0.03, 0.04]) == [False, False]  # 0.03 > 0.05 / 2: nothing is rejected
    assert holm_reject([float("nan"), 0.001]) == [False, True]  # a nan counts in m, never rejected
    assert holm_reject([]) == []
    with pytest.raises(ValueError, match="alpha"):
        holm_reject([0.1], alpha=0)


def test_paired_t_p_value_matches_scipy_and_edge_cases():
    from scipy import stats as scipy_stats

    from experiments.stats import paired_t_p_value
    a, b = [1.0, 2.0, 3.5, 4.0], [0.5, 2.5, 2.0, 3.0]
    assert paired_t_p_value(a, b) == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert paired_t_p_value([1.0, 2.0], [1.0, 2.0]) == 1.0
    assert paired_t_p_value([1.0], [0.0]) != paired_t_p_value([1.0], [0.0])  # nan: one pair
    with pytest.raises(ValueError, match="equal lengths"):
        paired_t_p_value([1.0], [1.0, 2.0])


def test_paired_ratio_is_the_exponentiated_interval_of_the_log_ratios():
    values, baseline = [200.0, 300.0, 400.0], [400.0, 300.0, 800.0]
    logs = mean_ci([math.log(0.5), 0.0, math.log(0.5)])
    ratio = paired_ratio(values, baseline)
    assert ratio.n == 3
    assert ratio.mean == pytest.approx(math.exp(logs.mean))
    assert (ratio.low, ratio.high) == (pytest.approx(math.exp(logs.low)), pytest.approx(math.exp(logs.high)))
    assert ratio.low < ratio.mean < ratio.high
    # Swapping the roles inverts the ratio and its interval.
    inverse = paired_ratio(baseline, values)
    assert inverse.mean == pytest.approx(1 / ratio.mean) and inverse.low == pytest.approx(1 / ratio.high)


def test_paired_ratio_rejects_non_positive_values_and_unequal_lengths():
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([1.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ratio([1.0], [1.0, 2.0])
