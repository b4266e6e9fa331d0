"""Mode "fitted" (D7, model-based read-out): its read-out against an independent numpy implementation, the model's
tables against Monte Carlo, and its calibration from the first steps on. What it shares with mode "innovation" (the
step is AdamW's, zero variance only for a constant series, the state's size) is tested for both in test_innovation."""

import math

import numpy as np
import pytest
import torch

from derivations import d7_noise_from_innovations as d7
from kalman_optim import KalmanAdam
from kalman_optim.closed_forms import beta_to_noise_ratio, constant_noise_gain
from kalman_optim.noise_models import fitted, innovation
from kalman_optim.schedules import ewma_effective_samples, student_t_quantile
from tests.kalman_optim.helpers import filtered_posterior
from tests.kalman_optim.noise_models.test_innovation import local_level


def textbook_tables(beta1, noise_beta, steps, grid):
    """D7 section 9's oracle (explicit sums, numpy) at the library's LAG_BETA."""
    return d7.fitted_model_tables_oracle(beta1, noise_beta, innovation.LAG_BETA, steps, grid)


def textbook_fitted_readout(observations, beta1, noise_beta, stride):
    """The mode's statistics and read-out in numpy: Adam's filter, R, the lag statistic with weights fixed before the
    innovation they weight and shrunk to its expectation at the filter's own ratio, the phi -> rho inversion by
    linear interpolation on the textbook tables."""
    lag_beta, prior = innovation.LAG_BETA, innovation.PRIOR_COUNT
    steps, n = observations.shape
    grid = fitted.RATIO_GRID.numpy()
    tables = textbook_tables(beta1, noise_beta, steps, grid)
    mean, R = np.zeros(n), np.zeros(n)
    num = den = prev_sq = 0.0
    prev_weighted = None
    out = [np.full(n, np.inf)]
    for t in range(1, steps + 1):
        g = observations[t - 1]
        k = (1 - beta1) / (1 - beta1**t)
        if t >= 2:
            nu = g - mean
            sample = nu[::stride]
            if t >= 3:
                kept = 1 - (1 - beta1) / (1 - beta1 ** (t - 1))
                num = lag_beta * num - (1 - lag_beta) * (prev_weighted @ sample - kept * prev_sq)
                den = lag_beta * den + (1 - lag_beta) * kept * prev_sq
                scale = R[::stride] / (1 - noise_beta ** (t - 2))
                u = 1 / (scale + scale.mean() / ewma_effective_samples(t - 2, noise_beta))
                u = u / (u @ scale)
            else:
                u = np.ones_like(sample) / ((1 - k) * np.sum(sample**2))
            prev_weighted, prev_sq = u * sample, (u * sample) @ sample
            R = noise_beta * R + (1 - noise_beta) * (1 - k) * nu**2
        mean = mean + k * (g - mean)
        if t == 1:
            continue
        expected_phi, factor = tables[t]
        if expected_phi is None:
            f = np.interp(beta_to_noise_ratio(beta1), grid, factor)
        else:
            count = ewma_effective_samples(t - 2, lag_beta) * len(sample)
            # The prior's target: the statistic's expectation under the filter's own ratio, log-linear on the grid.
            target = np.interp(np.log(beta_to_noise_ratio(beta1)), np.log(grid[1:]), expected_phi[1:])
            phi = ((num / den if den > 0 else target) * count + prior * target) / (count + prior)
            if len(sample) < fitted.MIN_SAMPLED_COORDINATES:  # too few coordinates: the filter's own model
                phi = target
            f = np.interp(phi, np.maximum.accumulate(expected_phi[::-1]), factor[::-1])
        out.append(R / (1 - noise_beta ** (t - 1)) * f)
    return np.array(out)


def posterior_path(observations, **options):
    return filtered_posterior(observations, noise="fitted", **options)[:4]


@pytest.mark.parametrize("coordinates", [1, 64, 9000], ids=["scalar", "vector", "sampled"])  # 9000 > fitted.SAMPLE_SIZE
@pytest.mark.parametrize("noise_beta", [0.9, 0.99])
def test_readout_equals_the_textbook_estimator(coordinates, noise_beta):
    _, observations = local_level(3.0, 0.8, 2.0, 80, coordinates, seed=coordinates)
    _, _, _, variances = posterior_path(observations, betas=(0.8, 0.95), noise_beta=noise_beta)
    expected = textbook_fitted_readout(observations, 0.8, noise_beta, innovation.sample_stride(coordinates, fitted.SAMPLE_SIZE))
    assert np.isinf(variances[0]).all()
    np.testing.assert_allclose(variances[1:], expected[1:], rtol=1e-8)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 30.0])
def test_tables_are_the_monte_carlo_means_of_the_model(ratio):
    """On series drawn from the model (rho = ratio * lambda(beta1), r = 1): the mean over series of the bias-corrected
    R_t is M_t(rho) and the mean squared error of m_hat_t is E_t(rho), at early steps where they move most."""
    beta1, noise_beta, steps, series = 0.9, 0.99, 30, 40000
    rho = ratio * beta_to_noise_ratio(beta1)
    grid = np.array([rho])
    levels, observations = local_level(ratio, beta1, 1.0, steps, series, seed=11)
    optimizer, p, means, _ = posterior_path(observations)
    R = optimizer.state[p]["innovation_sq_avg"].numpy() / -math.expm1((steps - 1) * math.log(noise_beta))
    tables = textbook_tables(beta1, noise_beta, steps, grid)
    error = np.mean((levels[-1] - means[-1]) ** 2)
    E_over_M = tables[steps][1][0]
    assert R.mean() * E_over_M == pytest.approx(error, rel=0.03)
    _, library = fitted.model_tables(beta1, noise_beta, steps)
    index = int(np.argmin(np.abs(fitted.RATIO_GRID.numpy() - rho))) if rho > 0 else 0
    exact = textbook_tables(beta1, noise_beta, steps, fitted.RATIO_GRID.numpy()[[index]])[steps][1][0]
    assert float(library[index]) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 10.0, 100.0])
def test_intervals_cover_95_percent_from_the_first_steps(ratio):
    """3000 coordinates, 150 steps, the documented read-out (confidence_interval): the 95% interval covers the true
    level 0.925-0.975 at EVERY step from 2 on (mode "innovation" covers 0.87 at step 9 at ratio 10, E7; the Student-t
    interval of this read-out 0.985 at ratio 100 around step 10, D7 section 9b)."""
    levels, observations = local_level(ratio, 0.9, 1.0, 150, 3000, seed=5)
    p = torch.nn.Parameter(torch.zeros(3000, dtype=torch.float64))
    optimizer = KalmanAdam([p], lr=0.0, weight_decay=0.0, noise="fitted")
    coverage = []
    for t, g in enumerate(observations, start=1):
        p.grad = torch.from_numpy(g.copy())
        optimizer.step()
        if t >= 2:
            lower, upper = (bound.numpy() for bound in optimizer.confidence_interval(p, 0.95))
            coverage.append(np.mean((lower <= levels[t - 1]) & (levels[t - 1] <= upper)))
    coverage = np.array(coverage)
    assert 0.925 <= coverage.min() and coverage.max() <= 0.975, (coverage.min(), coverage.argmin() + 2, coverage.max())


@pytest.mark.parametrize("step, ratio_index, level", [(2, 8, 0.95), (3, 10, 0.95), (10, 10, 0.95), (10, 14, 0.9),
                                                      (25, 14, 0.5), (25, 12, 0.99), (60, 12, 0.95)])
def test_simulated_quantiles_have_the_exact_coverage(step, ratio_index, level):
    """The simulated quantile's coverage under the model, computed exactly (D7 section 9b, Imhof), is the level
    within 0.008 (3.3 Monte Carlo standard errors at 95%) at simulated ratios 1e-1, 1 and 10 (0.09, 0.9 and 9 lambda)."""
    rho = float(fitted.SIMULATED_RATIOS[ratio_index])
    quantile = float(fitted.simulated_quantiles(0.9, 0.99)[step, fitted.SIMULATED_LEVELS.index(level), ratio_index])
    assert d7.fitted_interval_coverage_oracle(0.9, 0.99, step, rho, quantile) == pytest.approx(level, abs=0.008)


def test_interval_quantile_reads_the_table_at_the_tensors_ratio(monkeypatch):
    """At a simulated ratio and level the table's value; between levels its ratio to the Student-t quantile
    interpolated (exact coverage within 0.01, Imhof); after SIMULATED_STEPS the Student-t quantile."""
    monkeypatch.setattr(fitted, "noise_ratio", lambda *args: 1.0)
    table = fitted.simulated_quantiles(0.9, 0.99)
    index = int(torch.argmin((fitted.SIMULATED_RATIOS - 1.0).abs()))
    assert fitted.interval_quantile({}, 12, 0.9, 0.99, 0.95) == pytest.approx(float(table[12, 6, index]), rel=1e-12)
    between = fitted.interval_quantile({}, 12, 0.9, 0.99, 0.93)
    assert d7.fitted_interval_coverage_oracle(0.9, 0.99, 12, 1.0, between) == pytest.approx(0.93, abs=0.01)
    late = fitted.SIMULATED_STEPS + 1
    assert fitted.interval_quantile({}, late, 0.9, 0.99, 0.95) == student_t_quantile(0.95, fitted.degrees_of_freedom(late, 0.99))
    assert fitted.simulated_quantiles(0.9, 0.99) is table  # cached, and deterministic:
    fitted._SIMULATED.clear()
    torch.testing.assert_close(fitted.simulated_quantiles(0.9, 0.99), table, rtol=0, atol=0, equal_nan=True)


def test_posterior_variance_tracks_the_exact_filter_on_the_issue_series():
    """The issue's one-coordinate series (as test_innovation's): never 0, and within a factor 1.5 of the exact
    filter's from step 50 to 300 for at least half of 20 series (measured 0.6; mode "innovation" 0.8: with one
    coordinate the lag statistic is one coordinate's, and the phi -> rho inversion passes on more of its noise)."""
    beta, r = 0.9, 0.25
    exact = np.array([float(constant_noise_gain(beta, t)) * r for t in range(1, 301)])
    within = []
    for seed in range(20):
        _, observations = local_level(1.0, beta, r, 300, 1, seed=seed)
        _, _, _, variances = posterior_path(observations)
        assert (variances[1:] > 0).all()
        ratio = variances[49:, 0] / exact[49:]
        within.append(1 / 1.5 <= ratio.min() and ratio.max() <= 1.5)
    assert np.mean(within) >= 0.5


def test_foreach_equals_reference_and_state_dict_round_trips():
    torch.manual_seed(0)
    shapes = [(30, 7), (5,), (2000,)]
    grads = [[torch.randn(s, dtype=torch.float64) + 0.1 * t for s in shapes] for t in range(40)]
    results = []
    for foreach in (False, True):
        params = [torch.nn.Parameter(torch.ones(s, dtype=torch.float64)) for s in shapes]
        optimizer = KalmanAdam(params, lr=1e-2, noise="fitted", foreach=foreach, variance_adaptation=True)
        for t, step_grads in enumerate(grads):
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            optimizer.step()
            if t == 19:  # save, reload into a fresh optimizer, continue there
                saved = optimizer.state_dict()
                optimizer = KalmanAdam(params, lr=1e-2, noise="fitted", foreach=foreach, variance_adaptation=True)
                optimizer.load_state_dict(saved)
        results.append(([p.detach().clone() for p in params], [optimizer.gradient_posterior(p)[1] for p in params]))
    for a, b in zip(results[0][0] + results[0][1], results[1][0] + results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_interpolate_is_linear_between_grid_points_and_clamped_outside():
    xs = torch.tensor([0.0, 1.0, 1.0, 3.0], dtype=torch.float64)
    ys = torch.tensor([10.0, 20.0, 20.0, 40.0], dtype=torch.float64)
    for x, y in [(-1.0, 10.0), (0.5, 15.0), (2.0, 30.0), (5.0, 40.0), (1.0, 20.0)]:
        assert float(fitted.interpolate(torch.tensor(x, dtype=torch.float64), xs, ys)) == pytest.approx(y, rel=1e-15)


def test_a_run_switched_from_innovation_to_fitted_keeps_stepping():
    """load_state_dict restores the saved group's mode; a user who then switches the read-out (same step, same R)
    gets the missing statistic initialized, not a KeyError."""
    p = torch.nn.Parameter(torch.zeros(50))
    source = KalmanAdam([p], noise="innovation")
    for _ in range(5):
        p.grad = torch.randn(50)
        source.step()
    target = KalmanAdam([p], noise="fitted")
    target.load_state_dict(source.state_dict())
    target.param_groups[0]["noise"] = "fitted"
    p.grad = torch.randn(50)
    target.step()
    assert "lag_prev_sq" in target.state[p]
    assert torch.isfinite(target.gradient_posterior(p)[1]).all()


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, float("nan"), True])
def test_a_bad_interval_level_is_a_clear_error_in_the_simulated_steps(level):
    """The simulated-quantile path (steps 2..SIMULATED_STEPS) rejects a level outside (0, 1) as the other modes do."""
    p = torch.nn.Parameter(torch.zeros(10))
    optimizer = KalmanAdam([p], noise="fitted")
    for _ in range(3):
        p.grad = torch.randn(10)
        optimizer.step()
    with pytest.raises(ValueError, match="level must be a number in the open interval"):
        optimizer.confidence_interval(p, level=level)


@pytest.mark.parametrize("coordinates", [1, fitted.MIN_SAMPLED_COORDINATES - 1, fitted.MIN_SAMPLED_COORDINATES])
def test_a_tensor_too_small_to_estimate_its_ratio_reads_out_the_filters_own_model(coordinates):
    """Data at 100x the filter's ratio: below MIN_SAMPLED_COORDINATES the read-out is R times the factor at the own
    model's expected lag statistic whatever the data say; from it on the measured statistic moves the factor."""
    beta1, noise_beta, steps = 0.9, 0.99, 200
    _, observations = local_level(100.0, beta1, 1.0, steps, coordinates, seed=3)
    optimizer, p, _, variances = posterior_path(observations, noise_beta=noise_beta)
    R = optimizer.state[p]["innovation_sq_avg"].numpy() / -math.expm1((steps - 1) * math.log(noise_beta))
    own = fitted.model_factor(torch.tensor(fitted.own_model_phi(steps, beta1, noise_beta), dtype=torch.float64),
                              steps, beta1, noise_beta)
    own_readout = R * float(own)
    if coordinates < fitted.MIN_SAMPLED_COORDINATES:
        np.testing.assert_allclose(variances[-1], own_readout, rtol=1e-12)
        assert fitted.noise_ratio(optimizer.state[p], steps, beta1, noise_beta) == pytest.approx(
            beta_to_noise_ratio(beta1), rel=1e-3)  # up to the grid's linear interpolation
    else:  # 100x: the measured ratio raises the read-out well above the own model's
        assert (variances[-1] > 1.5 * own_readout).all()


def test_the_prior_pulls_to_the_own_models_expected_statistic_not_to_one():
    """Under the filter's own model the lag statistic's expectation is above 1 early (Adam's gains are not the steady
    filter's) and 1 at steady state; the read-out at that expectation is the own model's factor."""
    beta1, noise_beta = 0.9, 0.99
    early, late = fitted.own_model_phi(10, beta1, noise_beta), fitted.own_model_phi(5000, beta1, noise_beta)
    assert 1.02 < early < 1.1 and late == pytest.approx(1.0, abs=1e-3)
    expected_phi, factor = fitted.model_tables(beta1, noise_beta, 10)
    index = int(np.argmin(np.abs(np.log(fitted.RATIO_GRID.numpy()[1:]) - np.log(beta_to_noise_ratio(beta1))))) + 1
    assert float(expected_phi[index]) == pytest.approx(early, rel=2e-3)


@pytest.mark.parametrize("beta1", [0.5, 0.9, 0.99, 0.9999])
def test_own_model_phi_is_interpolate_on_the_log_grid_bit_for_bit(beta1):
    """own_model_phi reads two table entries at a bracket fixed per beta1; it equals `interpolate` of log lambda(beta1)
    on the log grid exactly, at every step (also beta1 = 0.9999, whose lambda lies below the grid: clamped)."""
    noise_beta = 0.99
    own = torch.tensor(float(beta_to_noise_ratio(beta1)), dtype=torch.float64).log()
    fitted.own_model_phi.cache_clear()
    for step in [*range(2, 40), 100, 1000]:
        expected_phi, _ = fitted.model_tables(beta1, noise_beta, step)
        formula = 1.0 if expected_phi is None else float(fitted.interpolate(own, fitted.RATIO_GRID[1:].log(),
                                                                             expected_phi[1:]))
        assert fitted.own_model_phi(step, beta1, noise_beta) == formula


def test_interpolation_table_is_computed_once_per_step_and_follows_the_step():
    """Within a step every call returns the same tensors (the eager path reads them per tensor); they equal a fresh
    computation from the tables, and the next step's differ."""
    beta1, noise_beta = 0.9, 0.95
    for step in (2, 3, 50):
        first = fitted.interpolation_table(step, beta1, noise_beta)
        again = fitted.interpolation_table(step, beta1, noise_beta)
        assert first[0] is again[0] and first[1] is again[1]
        expected_phi, factor = fitted.model_tables(beta1, noise_beta, step)
        fresh = fitted._interpolation_of(expected_phi, factor, beta1)
        assert torch.equal(first[0], fresh[0]) and torch.equal(first[1], fresh[1])
    later = fitted.interpolation_table(51, beta1, noise_beta)
    assert not torch.equal(later[1], fitted.interpolation_table(50, beta1, noise_beta)[1])
