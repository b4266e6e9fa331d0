"""The optimizers' filters against the derivations' exported expressions and an independent,
textbook Kalman filter written plainly in numpy."""

import numpy as np
import pytest
import torch

from derivations import d1_steady_state as d1
from derivations import d2_adam_is_kalman as d2
from derivations import d3_uncertainty as d3
from kalman_optim import KalmanAdam
from tests.kalman_optim.helpers import filtered_posterior


def local_level_series(q, r, steps, coordinates, seed):
    """x_t = x_{t-1} + w_t (var q), g_t = x_t + v_t (var r): returns (states, observations), float64."""
    rng = np.random.default_rng(seed)
    states = 1.0 + np.cumsum(rng.normal(0, np.sqrt(q), (steps, coordinates)), axis=0)
    return states, states + rng.normal(0, np.sqrt(r), (steps, coordinates))


def textbook_kalman(observations, q_of_t, r, prior_variance):
    """Scalar local-level Kalman filter per coordinate: returns posterior means and variances."""
    mean = np.zeros(observations.shape[1])
    variance = prior_variance
    means, variances = [], []
    for t, g in enumerate(observations, start=1):
        prior = variance + q_of_t(t)
        gain = prior / (prior + r)
        mean = mean + gain * (g - mean)
        variance = prior * r / (prior + r)  # = (1 - gain) prior, without cancellation when the prior is huge
        means.append(mean.copy())
        variances.append(variance)
    return np.array(means), np.array(variances)


def run_optimizer(observations, **options):
    """Feed the observations as gradients (lr = 0 keeps the parameter still); collect the posterior."""
    return filtered_posterior(observations, **options)[2:]


def r_hat_from_moments(means, second_moments, beta1, beta2):
    """D3's zero-memory estimate of r, with the bias factor c taken from the derivation's oracle."""
    c = d3.adam_state_noise_bias_oracle(beta1, beta2, d1.beta_to_noise_ratio_oracle(beta1))
    return np.maximum(second_moments - means**2, 0) / c


@pytest.mark.parametrize("coordinates", [1, 64], ids=["scalar", "vector"])
def test_constant_mode_is_the_textbook_filter(coordinates):
    beta1, beta2, r = 0.8, 0.95, 2.0
    q = d1.beta_to_noise_ratio_oracle(beta1) * r
    _, observations = local_level_series(q, r, 300, coordinates, seed=coordinates)
    means, variances, second = run_optimizer(observations, betas=(beta1, beta2), noise="constant")
    kf_means, kf_variances = textbook_kalman(observations, lambda t: q, r, prior_variance=1e15)
    np.testing.assert_allclose(means, kf_means, rtol=1e-9, atol=1e-12)
    # Variance: the filter's P_t / r (one scalar per step, D1) times the moment estimate of r (D3).
    steps = np.arange(1, 301)
    normalized = d1.constant_noise_gain_diffuse_oracle(beta1, steps)
    np.testing.assert_allclose(normalized, kf_variances / r, rtol=1e-9)
    expected = normalized[:, None] * r_hat_from_moments(means, second / 1.0, beta1, beta2)
    np.testing.assert_allclose(variances[5:], expected[5:], rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("coordinates", [1, 64], ids=["scalar", "vector"])
def test_adam_mode_is_the_textbook_filter_with_adams_process_noise(coordinates):
    beta1, beta2, r = 0.9, 0.99, 0.5
    _, observations = local_level_series(0.01, r, 400, coordinates, seed=10 + coordinates)
    means, variances, second = run_optimizer(observations, betas=(beta1, beta2), noise="adam")
    # q_t / r from D2's exported expression; q_1 is infinite (diffuse prior), represented by a huge prior.
    q_of_t = lambda t: 0.0 if t == 1 else d2.adam_process_noise_oracle(beta1, t) * r  # noqa: E731
    kf_means, kf_variances = textbook_kalman(observations, q_of_t, r, prior_variance=1e15)
    np.testing.assert_allclose(means, kf_means, rtol=1e-8, atol=1e-12)
    steps = np.arange(1, 401)
    np.testing.assert_allclose(d2.adam_gain_oracle(beta1, steps), kf_variances / r, rtol=1e-8)
    v_hat = second / (1 - beta2 ** steps[:, None])
    expected = d2.adam_gain_oracle(beta1, steps)[:, None] * r_hat_from_moments(means, v_hat, beta1, beta2)
    np.testing.assert_allclose(variances[5:], expected[5:], rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("noise_ratio", [0.01, 0.1, 1.0])
def test_adaptive_mode_recovers_known_noise_ratios(noise_ratio):
    r = 1.0
    _, observations = local_level_series(noise_ratio * r, r, 3000, 2000, seed=int(1000 * noise_ratio))
    p = torch.nn.Parameter(torch.zeros(2000, dtype=torch.float64))
    optimizer = KalmanAdam([p], lr=0.0, weight_decay=0.0, noise="adaptive", noise_beta=0.999, beta_range=(0.01, 0.9999))
    for g in observations:
        p.grad = torch.from_numpy(g.copy())
        optimizer.step()
    state = optimizer.state[p]
    n = 3000
    c0 = state["diff_sq_avg"].numpy() / (1 - 0.999 ** (n - 1))
    c1 = state["diff_lag_avg"].numpy() / (1 - 0.999 ** (n - 2))
    pooled = np.mean(c0 + 2 * c1) / np.mean(-c1)
    per_coordinate = np.median((c0 + 2 * c1) / -c1)
    # Pooled over 2000 coordinates the moment estimator is within 10%; a single coordinate's estimate from
    # ~1000 effective samples is noisy, its median within 35% (tolerances from a Monte-Carlo of D4's estimator).
    assert abs(pooled / noise_ratio - 1) < 0.10, pooled
    assert abs(per_coordinate / noise_ratio - 1) < 0.35, per_coordinate
    # And the optimizer's gain is the steady-state gain of that ratio (D1), at the median coordinate.
    _, variance = optimizer.gradient_posterior(p)
    r_hat = np.maximum(-c1, 0)
    implied_gain = np.median(variance.numpy() / r_hat)
    assert abs(implied_gain / d1.steady_state_gain_oracle(noise_ratio) - 1) < 0.25


def test_gains_and_steady_state_match_the_derivations():
    from kalman_optim.schedules import adam_coefficients, constant_coefficients, state_noise_bias

    for beta in [0.5, 0.9, 0.99]:
        for step in [1, 2, 5, 50, 500]:
            assert adam_coefficients(beta, step).gain == pytest.approx(d2.adam_gain_oracle(beta, step), rel=1e-12)
            assert constant_coefficients(beta, step, None).gain == pytest.approx(
                d1.constant_noise_gain_diffuse_oracle(beta, step), rel=1e-12
            )
        assert constant_coefficients(beta, 100_000, None).gain == pytest.approx(1 - beta, rel=1e-12)
        assert constant_coefficients(beta, 100_000, None).gain == pytest.approx(
            d1.steady_state_gain_oracle(d1.beta_to_noise_ratio_oracle(beta)), rel=1e-9
        )
    for beta1, beta2 in [(0.9, 0.999), (0.8, 0.99)]:
        assert state_noise_bias(beta1, beta2) == pytest.approx(
            d3.adam_state_noise_bias_oracle(beta1, beta2, d1.beta_to_noise_ratio_oracle(beta1)), rel=1e-12
        )
