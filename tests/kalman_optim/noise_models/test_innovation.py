"""Mode "innovation" (D7): its read-out against an independent numpy implementation on a textbook filter,
its step against AdamW, and its calibration on data from the model and off it. The tests of what it shares with
mode "fitted" (same step and state, same read-out interface) run for both modes."""

import math

import numpy as np
import pytest
import torch

from derivations import d1_steady_state as d1
from kalman_optim import KalmanAdam
from kalman_optim.closed_forms import constant_noise_gain
from kalman_optim.noise_models import INNOVATION_MODELS, innovation
from kalman_optim.schedules import student_t_quantile
from tests.kalman_optim.helpers import filtered_posterior, small_network, train


def local_level(ratio_to_filter, beta, r, steps, coordinates, seed, trend=0.0):
    """x_t = x_{t-1} + w_t + trend, Var w = ratio * lambda(beta) * r; g_t = x_t + v_t: (levels, observations)."""
    rng = np.random.default_rng(seed)
    q = ratio_to_filter * d1.beta_to_noise_ratio_oracle(beta) * r
    levels = 3.0 * rng.normal(size=coordinates) + np.cumsum(rng.normal(0, np.sqrt(q), (steps, coordinates)) + trend, axis=0)
    return levels, levels + rng.normal(0, np.sqrt(r), (steps, coordinates))


def textbook_innovation_readout(observations, beta1, noise_beta, stride):
    """D7 written out plainly: the diffuse-prior filter with Adam's gain k_t = (1-b)/(1-b^t), its innovations,
    R = bias-corrected EWMA of (1 - k_t) nu_t^2, the pooled lag-1 ratio phi over every `stride`-th coordinate
    (each weighted by 1 / R_{t-1} once R has innovation.MIN_NOISE_SAMPLES innovations, EWMA coefficient innovation.LAG_BETA, shrunk to 1 by innovation.PRIOR_COUNT
    pseudo-samples), and P_t = R [(1 - k)(1 - phi) + k phi]."""
    lag_beta = innovation.LAG_BETA
    steps, n = observations.shape
    mean = np.zeros(n)
    R = np.zeros(n)
    num = den = 0.0
    prev = None
    out = []
    for t in range(1, steps + 1):
        g = observations[t - 1]
        k = (1 - beta1) / (1 - beta1**t)
        if t >= 2:
            nu = g - mean
            sample = nu[::stride]
            if t >= innovation.MIN_NOISE_SAMPLES + 2:  # once R has MIN_NOISE_SAMPLES innovations
                k_prev = (1 - beta1) / (1 - beta1 ** (t - 1))
                d = sample - (1 - k_prev) * prev
                r_prev = R[::stride] / (1 - noise_beta ** (t - 2))
                w = np.divide(1.0, r_prev, out=np.zeros_like(r_prev), where=r_prev > 0)
                num = lag_beta * num + (1 - lag_beta) * np.sum(-prev * d * w)
                den = lag_beta * den + (1 - lag_beta) * (1 - k_prev) * np.sum(prev**2 * w)
            R = noise_beta * R + (1 - noise_beta) * (1 - k) * nu**2
            prev = sample
        mean = mean + k * (g - mean)
        if t == 1:
            out.append(np.full(n, np.inf))
            continue
        used = max(0, t - innovation.MIN_NOISE_SAMPLES - 1)
        lag_weights = lag_beta ** np.arange(used - 1, -1, -1.0)
        count = (lag_weights.sum() ** 2 / (lag_weights**2).sum() if used else 0.0) * len(prev)
        measured = num / den if den > 0 else 1.0
        phi = (measured * count + innovation.PRIOR_COUNT) / (count + innovation.PRIOR_COUNT)
        phi = min(max(phi, 0.0), 1 / (1 - k))
        out.append(R / (1 - noise_beta ** (t - 1)) * ((1 - k) * (1 - phi) + k * phi))
    return np.array(out)


def posterior_path(observations, **options):
    """(optimizer, parameter, means, variances) of mode "innovation" filtering `observations` at lr = 0."""
    return filtered_posterior(observations, noise="innovation", **options)[:4]


@pytest.mark.parametrize("coordinates", [1, 64, 3000], ids=["scalar", "vector", "sampled"])
@pytest.mark.parametrize("noise_beta", [0.9, 0.99])
def test_readout_equals_the_textbook_d7_estimator(coordinates, noise_beta):
    _, observations = local_level(3.0, 0.8, 2.0, 120, coordinates, seed=coordinates)
    _, _, _, variances = posterior_path(observations, betas=(0.8, 0.95), noise_beta=noise_beta)
    expected = textbook_innovation_readout(observations, 0.8, noise_beta, innovation.sample_stride(coordinates))
    assert np.isinf(variances[0]).all()
    np.testing.assert_allclose(variances[1:], expected[1:], rtol=1e-9)


#: The modes that read the uncertainty off Adam's innovations, and the 0-dim entries of their state ("step" included).
INNOVATION_MODES = {"innovation": 3, "fitted": 4}


@pytest.mark.parametrize("noise", INNOVATION_MODES)
def test_step_is_adamws_bit_for_bit(noise):
    model_a, model_b = small_network(), small_network()
    reference = torch.optim.AdamW(model_a.parameters(), lr=1e-2)
    tested = KalmanAdam(model_b.parameters(), lr=1e-2, noise=noise)
    train(model_a, reference, 50)
    train(model_b, tested, 50)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 1.0, 10.0, 100.0])
def test_intervals_cover_95_percent_whatever_the_true_noise_ratio(ratio):
    """2000 coordinates of a local level whose noise ratio is `ratio` times the filter's, 1500 steps: the 95%
    interval covers the true level 0.93-0.97 of the time (pooled over coordinates, steps 1000-1500)."""
    levels, observations = local_level(ratio, 0.9, 1.0, 1500, 2000, seed=7)
    optimizer, p, means, variances = posterior_path(observations)
    quantiles = np.array([student_t_quantile(0.95, innovation.degrees_of_freedom(t, 0.99)) for t in range(1, 1501)])
    inside = np.abs(levels - means) <= quantiles[:, None] * np.sqrt(variances)
    assert 0.93 <= inside[1000:].mean() <= 0.97
    lower, upper = optimizer.confidence_interval(p, 0.95)
    last = ((lower.numpy() <= levels[-1]) & (levels[-1] <= upper.numpy())).mean()
    assert 0.9 <= last <= 0.99  # the documented read-out, at the last step only (2000 coordinates)


def test_posterior_variance_tracks_the_exact_filter_on_the_issue_series():
    """beta1 = 0.9, lambda = lambda(0.9), r = 0.25, one parameter at lr = 0: the exact filter's posterior variance
    is k_t r -> 0.025. The read-out is never 0, and for most series (one coordinate: its r estimate has the
    sampling error of ~100 innovations) it stays within a factor 1.5 of the exact one from step 50 to 300."""
    beta, r = 0.9, 0.25
    exact = np.array([float(constant_noise_gain(beta, t)) * r for t in range(1, 301)])
    within = []
    for seed in range(20):
        _, observations = local_level(1.0, beta, r, 300, 1, seed=seed)
        _, _, _, variances = posterior_path(observations)
        assert (variances[1:] > 0).all()
        ratio = variances[49:, 0] / exact[49:]
        within.append(1 / 1.5 <= ratio.min() and ratio.max() <= 1.5)
        assert 1 / 2.5 <= ratio.min() and ratio.max() <= 2.5
    assert np.mean(within) >= 0.75


@pytest.mark.parametrize("noise", INNOVATION_MODES)
def test_only_a_constant_series_has_zero_variance(noise):
    constant = np.full((30, 4), 2.5)
    _, _, _, variances = filtered_posterior(constant, noise=noise)[:4]
    assert (variances[1:] <= 1e-28).all()  # rounding of the bias correction only
    _, observations = local_level(0.0, 0.9, 1e-6, 30, 4, seed=3)
    _, _, _, variances = filtered_posterior(observations, noise=noise)[:4]
    assert (variances[1:] > 0).all()


@pytest.mark.parametrize("noise", INNOVATION_MODES)
def test_state_is_one_tensor_per_parameter_plus_a_bounded_sample(noise):
    """3 floats per parameter plus the mode's sample (innovation 1024, fitted 8192 coordinates) and its scalars."""
    sample_size = INNOVATION_MODELS[noise].SAMPLE_SIZE
    p = torch.nn.Parameter(torch.zeros(200, 50))  # 10000 > both sample sizes: a strided sample
    optimizer = KalmanAdam([p], noise=noise)
    p.grad = torch.ones_like(p)
    optimizer.step()
    state = optimizer.state[p]
    full = [k for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape]
    assert sorted(full) == ["exp_avg", "exp_avg_sq", "innovation_sq_avg"]
    assert state["lag_prev"].numel() <= sample_size
    assert sum(v.numel() for v in state.values()) <= 3 * p.numel() + sample_size + INNOVATION_MODES[noise]


@pytest.mark.parametrize("dof", [1.0, 2.0, 3.5, 10.0, 200.0])
@pytest.mark.parametrize("level", [0.5, 0.9, 0.95, 0.99])
def test_student_t_quantile_matches_scipy(dof, level):
    from scipy import stats

    assert student_t_quantile(level, dof) == pytest.approx(stats.t.ppf(0.5 + level / 2, dof), rel=1e-9)
    assert math.isinf(student_t_quantile(level, 0.0))


@pytest.mark.parametrize("dof", [1.0, 2.0, 5.0, 12.5, 200.0])
@pytest.mark.parametrize("level", [0.5, 0.9, 0.95, 0.99])
def test_student_t_quantile_without_scipy_uses_its_documented_fallback(monkeypatch, dof, level):
    """The library needs only torch: without scipy the quantile is exact at 1 and 2 degrees of freedom and the
    Cornish-Fisher expansion within 1e-3 relative from 5 on."""
    from scipy import stats

    expected = stats.t.ppf(0.5 + level / 2, dof)
    monkeypatch.setitem(__import__("sys").modules, "scipy.special", None)  # `from scipy.special import` now fails
    got = student_t_quantile(level, dof)
    assert got == pytest.approx(expected, rel=1e-12 if dof <= 2 else 1e-3)
