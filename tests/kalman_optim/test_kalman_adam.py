"""KalmanAdam: equivalence with torch's AdamW/Adam, every mode trains, uncertainty read-out."""

import math

import pytest
import torch

from kalman_optim import KalmanAdam
from tests.kalman_optim.helpers import full_loss, max_relative_difference, small_network, train, twin

MODES = [
    dict(noise="adam"),
    dict(noise="constant"),
    dict(noise="constant", prior_variance=0.5),
    dict(noise="adaptive"),
    dict(noise="adam", variance_adaptation=True),
    dict(noise="adaptive", variance_adaptation=True, adaptation_scale=3.84),
]


@pytest.mark.parametrize("foreach", [False, True], ids=["reference", "foreach"])
@pytest.mark.parametrize(
    "dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-13)], ids=["float32", "float64"]
)
@pytest.mark.parametrize("decoupled", [True, False], ids=["AdamW", "Adam-L2"])
def test_noise_adam_reproduces_torch_adamw_for_1000_steps(foreach, dtype, tolerance, decoupled):
    model = small_network(dtype)
    reference_model = twin(model)
    reference_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    reference = reference_cls(reference_model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.05, foreach=foreach)
    optimizer = KalmanAdam(
        model.parameters(), lr=3e-3, betas=(0.9, 0.99), weight_decay=0.05, foreach=foreach, decoupled_weight_decay=decoupled
    )
    train(reference_model, reference, 1000, dtype)
    train(model, optimizer, 1000, dtype)
    assert max_relative_difference(list(model.parameters()), list(reference_model.parameters())) <= tolerance
    # The state is Adam's too: same tensors under the same names.
    for p, q in zip(model.parameters(), reference_model.parameters()):
        torch.testing.assert_close(optimizer.state[p]["exp_avg"], reference.state[q]["exp_avg"], rtol=tolerance, atol=1e-12)
        torch.testing.assert_close(optimizer.state[p]["exp_avg_sq"], reference.state[q]["exp_avg_sq"], rtol=tolerance, atol=1e-15)


@pytest.mark.parametrize("options", MODES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_every_mode_trains_a_small_model_to_a_clearly_lower_loss(options):
    model = small_network()
    before = full_loss(model)
    train(model, KalmanAdam(model.parameters(), lr=1e-2, **options), 300)
    after = full_loss(model)
    assert after < 0.6 * before, (before, after)


def test_constant_mode_gain_converges_to_one_minus_beta():
    # Feed gradients by hand (lr = 0 keeps the parameter fixed) and read the normalized posterior variance.
    p = torch.nn.Parameter(torch.zeros(3))
    optimizer = KalmanAdam([p], lr=0.0, betas=(0.8, 0.99), weight_decay=0.0, noise="constant")
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        p.grad = torch.randn(3, generator=generator) + 1.0
        optimizer.step()
    mean, variance = optimizer.gradient_posterior(p)
    v_hat = optimizer.state[p]["exp_avg_sq"]
    from kalman_optim.schedules import state_noise_bias

    r_hat = (v_hat - mean.square()).clamp_min(0) / state_noise_bias(0.8, 0.99)
    torch.testing.assert_close(variance, (1 - 0.8) * r_hat, rtol=1e-5, atol=0)  # 1e-5: the 4-ulp rounding guard of D3


def test_gradient_posterior_in_adam_mode_is_the_bias_corrected_first_moment():
    model = small_network()
    optimizer = KalmanAdam(model.parameters(), lr=1e-3)
    train(model, optimizer, 7)
    p = next(model.parameters())
    mean, variance = optimizer.gradient_posterior(p)
    torch.testing.assert_close(mean, optimizer.state[p]["exp_avg"] / (1 - 0.9**7))
    assert variance.shape == p.shape and bool((variance >= 0).all()) and bool((variance > 0).any())


def test_confidence_interval_is_symmetric_with_the_normal_quantile():
    model = small_network()
    optimizer = KalmanAdam(model.parameters(), noise="adaptive")
    train(model, optimizer, 20)
    p = next(model.parameters())
    mean, variance = optimizer.gradient_posterior(p)
    low, high = optimizer.confidence_interval(p, level=0.95)
    torch.testing.assert_close((low + high) / 2, mean)
    torch.testing.assert_close((high - low) / 2, 1.959963984540054 * variance.sqrt())
    low50, high50 = optimizer.confidence_interval(p, level=0.5)
    assert bool(((high50 - low50) <= (high - low) + 1e-12).all())
    with pytest.raises(ValueError, match="level must be a number in the open interval"):
        optimizer.confidence_interval(p, level=1.0)


def test_gradient_posterior_before_any_step_is_a_clear_error():
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = KalmanAdam([p])
    with pytest.raises(ValueError, match="no filter state for this parameter yet"):
        optimizer.gradient_posterior(p)
    with pytest.raises(ValueError, match="not managed by this optimizer"):
        optimizer.gradient_posterior(torch.nn.Parameter(torch.zeros(2)))


def test_non_adaptive_modes_keep_adams_state_only():
    model = small_network()
    for noise in ["adam", "constant"]:
        optimizer = KalmanAdam(model.parameters(), noise=noise, variance_adaptation=True)
        train(model, optimizer, 3)
        for state in optimizer.state.values():
            assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    optimizer = KalmanAdam(model.parameters(), noise="adaptive")
    train(model, optimizer, 3)
    for state in optimizer.state.values():
        assert set(state) == {"step", "exp_avg", "exp_avg_sq", "prev_grad", "prev_diff", "diff_sq_avg", "diff_lag_avg"}


def test_variance_adaptation_only_shrinks_steps():
    # With the same gradients, the variance-adapted step is never longer than the plain one, coordinate-wise.
    p_plain = torch.nn.Parameter(torch.zeros(500))
    p_adapted = torch.nn.Parameter(torch.zeros(500))
    plain = KalmanAdam([p_plain], lr=0.1, weight_decay=0.0)
    adapted = KalmanAdam([p_adapted], lr=0.1, weight_decay=0.0, variance_adaptation=True)
    generator = torch.Generator().manual_seed(3)
    signal = torch.linspace(-1, 1, 500)
    for _ in range(50):
        before_plain, before_adapted = p_plain.detach().clone(), p_adapted.detach().clone()
        g = signal + torch.randn(500, generator=generator)
        p_plain.grad, p_adapted.grad = g.clone(), g.clone()
        plain.step()
        adapted.step()
        step_plain = (p_plain.detach() - before_plain).abs()
        step_adapted = (p_adapted.detach() - before_adapted).abs()
        assert bool((step_adapted <= step_plain * (1 + 1e-6) + 1e-12).all())
    # ... and strictly shorter where the signal is weak relative to the noise.
    assert step_adapted[240:260].mean() < 0.9 * step_plain[240:260].mean()


def test_steady_state_gain_matches_betas_meaning():
    # With constant noise, after many steps the first-moment filter is an EWMA with coefficient beta1.
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = KalmanAdam([p], lr=0.0, betas=(0.7, 0.9), weight_decay=0.0, noise="constant")
    for _ in range(100):
        p.grad = torch.ones(1)
        optimizer.step()
    before = optimizer.state[p]["exp_avg"].clone()
    p.grad = torch.full((1,), 11.0)
    optimizer.step()
    after = optimizer.state[p]["exp_avg"]
    assert math.isclose(((after - before) / (11.0 - before)).item(), 0.3, rel_tol=1e-6)


# ------------------------------------------------------------------ options that the path comparisons cannot see
def _feed(optimizer, param, gradients):
    """Step a single-coordinate-vector parameter at lr = 0 through `gradients` (rows); return exp_avg after each."""
    means = []
    for g in gradients:
        param.grad = g.clone()
        optimizer.step()
        means.append(optimizer.state[param]["exp_avg"].clone())
    return means


@pytest.mark.parametrize("path", [False, True], ids=["loop", "foreach"])
def test_noise_statistics_use_noise_beta_not_beta2(path):
    """diff_sq_avg (mode "adaptive") and R (mode "innovation") are EWMAs with coefficient noise_beta, recomputed here by
    hand from the gradients; noise_beta = 0.8 is far from beta2 = 0.999 and from beta1 = 0.9."""
    torch.manual_seed(0)
    grads = torch.randn(12, 5, dtype=torch.float64)
    nb, beta1 = 0.8, 0.9
    p = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    adaptive = KalmanAdam([p], lr=0.0, noise="adaptive", noise_beta=nb, foreach=path)
    _feed(adaptive, p, grads)
    diffs = grads[1:] - grads[:-1]
    expected = sum((1 - nb) * nb ** (len(diffs) - 1 - i) * d**2 for i, d in enumerate(diffs))
    torch.testing.assert_close(adaptive.state[p]["diff_sq_avg"], expected, rtol=1e-12, atol=0)

    q = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    innovation = KalmanAdam([q], lr=0.0, noise="innovation", noise_beta=nb, foreach=path)
    means = _feed(innovation, q, grads)
    expected = torch.zeros(5, dtype=torch.float64)
    for t in range(2, len(grads) + 1):  # R <- nb R + (1 - nb)(1 - k_t) nu_t^2, nu_t = g_t - m_hat_{t-1}
        nu = grads[t - 1] - means[t - 2] / (1 - beta1 ** (t - 1))
        k = (1 - beta1) / (1 - beta1**t)
        expected = nb * expected + (1 - nb) * (1 - k) * nu**2
    torch.testing.assert_close(innovation.state[q]["innovation_sq_avg"], expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("path", [False, True], ids=["loop", "foreach"])
def test_adaptive_gain_stays_inside_beta_range(path):
    """The per-coordinate gain k = (m_t - m_{t-1}) / (g_t - m_{t-1}) lies in [1 - beta_max, 1 - beta_min] once the
    start-up factor has decayed: coordinate 0 is a fast random walk (its unclipped gain would be near 1), coordinate
    1 white noise (a noisy gain estimate around 0)."""
    generator = torch.Generator().manual_seed(3)
    walk = torch.cumsum(10 * torch.randn(400, generator=generator, dtype=torch.float64), 0)
    grads = torch.stack([walk + 0.01 * torch.randn(400, generator=generator, dtype=torch.float64),
                         torch.randn(400, generator=generator, dtype=torch.float64)], dim=1)
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    # betas[0] inside the range: the young statistics are blended with it (D4); noise_beta = 0.9 makes them old by step 300
    optimizer = KalmanAdam([p], lr=0.0, betas=(0.55, 0.999), noise="adaptive", beta_range=(0.5, 0.6), noise_beta=0.9,
                           foreach=path)
    means = _feed(optimizer, p, grads)
    gains = torch.stack([(means[t] - means[t - 1]) / (grads[t] - means[t - 1]) for t in range(300, 400)])
    assert gains.min() >= 0.4 - 1e-9 and gains.max() <= 0.5 + 1e-9
    assert gains[:, 0].min() > 0.5 - 1e-6  # the upper clip binds on the walk
