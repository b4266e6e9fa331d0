"""Mode "transport" (D8): Adam's filter with the optimizer's own step as a control input, the curvature
estimated by instrumental variables. Checked against the textbook Kalman filter with a control input (D8's
oracle), an independent re-implementation of the estimator, the exact curvature of a noise-free quadratic, and
Adam where the curvature cannot be resolved."""

import math

import numpy as np
import pytest
import torch

from derivations import d8_control_input as d8
from kalman_optim import KalmanAdam, KalmanLAMB
from kalman_optim.closed_forms import adam_process_noise
from kalman_optim.noise_models import transport


def quadratic_run(curvature, noise, steps, seed=0, **options):
    """Minimize 1/2 sum h (theta - 1)^2 with gradient noise of standard deviation `noise`; returns the history of
    (observed gradient, theta before the step, exp_avg after it) and the optimizer."""
    generator = torch.Generator().manual_seed(seed)
    theta = torch.nn.Parameter(torch.zeros_like(curvature))
    optimizer = KalmanAdam([theta], noise="transport", **{"lr": 0.05, "weight_decay": 0.0, **options})
    history = []
    for _ in range(steps):
        before = theta.detach().clone()
        theta.grad = curvature * (theta.detach() - 1) + noise * torch.randn(curvature.shape, generator=generator,
                                                                              dtype=curvature.dtype)
        optimizer.step()
        history.append((theta.grad.clone(), before, optimizer.state[theta]["exp_avg"].clone()))
    return optimizer, theta, history


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.1}, {"weight_decay": 0.1, "decoupled_weight_decay": False}],
                         ids=["no-decay", "decoupled-decay", "l2-decay"])
def test_noise_free_quadratic_recovers_the_exact_curvature(options):
    """Without noise y_t = h dtheta_{t-1} exactly, so the IV ratio N / D is h: this needs dtheta_{t-1} recomputed
    exactly from the state (decoupled decay included). With Adam's L2 penalty the observed curvature is h + wd."""
    h = torch.tensor([0.05, 0.3, 1.0, 2.0], dtype=torch.float64)
    optimizer, theta, _ = quadratic_run(h, 0.0, 40, **options)
    state = optimizer.state[theta]
    expected = h + (options.get("weight_decay", 0.0) if options.get("decoupled_weight_decay") is False else 0.0)
    np.testing.assert_allclose(state["curvature_num"] / state["curvature_den"], expected, rtol=1e-6)


def test_posterior_mean_is_the_textbook_filter_with_a_control_input():
    """exp_avg equals D8's Kalman filter with input h_hat_t dtheta_{t-1} (h_hat_t the mode's own estimate, read off
    the step), Adam's process noise q_t and a diffuse prior: the known input leaves the gains Adam's."""
    h = torch.linspace(0.05, 1.5, 16, dtype=torch.float64)
    optimizer, theta, history = quadratic_run(h, 0.05, 80, lr=0.02)
    g = np.stack([x[0].numpy() for x in history])
    before = np.stack([x[1].numpy() for x in history])
    means = np.stack([x[2].numpy() for x in history])
    dtheta = np.zeros_like(g)
    dtheta[1:] = before[1:] - before[:-1]  # theta_{t-1} - theta_{t-2}: the step between g[t-1] and g[t]
    steps = np.arange(1, len(g) + 1)
    gains = (1 - 0.9) / (1 - 0.9**steps)
    predictions = (means - gains[:, None] * g) / (1 - np.minimum(gains, 1 - 1e-300)[:, None])
    shifts = np.zeros_like(g)
    shifts[1:] = predictions[1:] - means[:-1]
    h_used = np.divide(shifts, dtheta, out=np.zeros_like(g), where=dtheta != 0)
    assert (h_used[10:] > 0).any(), "the transport never switched on"
    q = np.array([0.0] + [float(adam_process_noise(0.9, int(t))) for t in steps[1:]])
    oracle_means, _ = d8.transport_filter_oracle(g, dtheta, h_used, q[:, None], 1.0, (0.0, np.inf))
    np.testing.assert_allclose(means[1:], oracle_means[1:], rtol=1e-8, atol=1e-12)


def reference_transport(grads_of, theta0, steps, lr, beta1=0.9, beta2=0.999, eps=1e-8, beta_h=0.99):
    """The D8 estimator written out in numpy, as in the prototype that chose it (shrink 9, clip [0, 1/a])."""
    theta = theta0.copy()
    m = np.zeros_like(theta); v = np.zeros_like(theta)
    N = np.zeros_like(theta); D = np.zeros_like(theta); Q = np.zeros_like(theta); g_prev = np.zeros_like(theta)
    for t in range(1, steps + 1):
        g = grads_of(theta, t)
        k = (1 - beta1) / (1 - beta1**t)
        shift = 0.0
        if t >= 2:
            inv_a = (np.sqrt(v / (1 - beta2 ** (t - 1))) + eps) / lr
            dth = -m / inv_a
            y = g - g_prev
            if t >= 3:
                z = dth + g_prev * ((1 - beta1) / (1 - beta1 ** (t - 1))) / inv_a
                N = beta_h * N + (1 - beta_h) * y * z
                D = beta_h * D + (1 - beta_h) * dth * z
                raw = np.where(D > 0, N / np.where(D > 0, D, 1.0), 0.0)
                Q = beta_h * Q + (1 - beta_h) * (y - raw * dth) ** 2
            h_hat = np.zeros_like(theta)
            n = t - 2
            if n >= 2:
                raw = np.where(D > 0, N / np.where(D > 0, D, 1.0), 0.0)
                rho = (1 - beta_h) * (1 + beta_h**n) / ((1 + beta_h) * (1 - beta_h**n))
                se2 = Q * rho / (1 - rho) / np.where(D > 0, D, np.inf)
                h_hat = raw * np.maximum(0.0, 1 - 9.0 * se2 / np.maximum(raw**2, 1e-300))
            shift = np.minimum(np.maximum(h_hat, 0.0), inv_a) * dth
        m = m + shift
        m = m + k * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        theta = theta - lr * m / (np.sqrt(v / (1 - beta2**t)) + eps)
        g_prev = g
    return theta


@pytest.mark.parametrize("foreach", [False, True])
def test_equals_an_independent_implementation_of_the_estimator(foreach):
    h = np.linspace(0.02, 2.0, 50)
    noise = np.random.default_rng(3).normal(size=(200, 50)) * 0.2
    grads_of = lambda theta, t: h * (theta - 1) + noise[t - 1]  # noqa: E731
    expected = reference_transport(grads_of, np.zeros(50), 200, lr=0.03)
    p = torch.nn.Parameter(torch.zeros(50, dtype=torch.float64))
    q = torch.nn.Parameter(torch.zeros(7, dtype=torch.float64))  # a second tensor, so foreach has a list
    optimizer = KalmanAdam([p, q], lr=0.03, weight_decay=0.0, noise="transport", foreach=foreach)
    for t in range(1, 201):
        p.grad = torch.from_numpy(grads_of(p.detach().numpy().copy(), t))
        q.grad = torch.ones_like(q)
        optimizer.step()
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("options", [dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled_weight_decay=False),
                                     dict(weight_decay=0.0, maximize=True)], ids=["decoupled", "coupled", "maximize"])
def test_foreach_path_equals_the_reference_step_by_step(options):
    """The batched foreach step (`transport.step_foreach`) against the per-tensor reference, float64, every step,
    with tensors joining late (a bucket per step count) and options that change the recomputed dtheta."""
    torch.manual_seed(1)
    shapes = [(20, 3), (50,), (4,)]
    runs = []
    for foreach in (False, True):
        params = [torch.nn.Parameter(torch.ones(s, dtype=torch.float64)) for s in shapes]
        optimizer = KalmanAdam(params, lr=0.02, noise="transport", noise_beta=0.9, foreach=foreach, **options)
        torch.manual_seed(2)
        trace = []
        for t in range(60):
            for i, p in enumerate(params):
                p.grad = None if (i == 2 and t < 10) else (p.detach() - 0.5) * (i + 1) + 0.1 * torch.randn(p.shape, dtype=torch.float64)
            optimizer.step()
            trace.append([p.detach().clone() for p in params] + [v.clone() for p in params for v in optimizer.state[p].values()])
        runs.append(trace)
    for a, b in zip(*runs):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_unresolved_curvature_leaves_adams_step():
    """Pure noise (no curvature to find): the shrinkage keeps the transport off for most coordinates, whose steps
    are then AdamW's (a few reach the 3-standard-error threshold by chance)."""
    torch.manual_seed(0)
    grads = torch.randn(100, 30, dtype=torch.float64)
    a = torch.nn.Parameter(torch.zeros(30, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(30, dtype=torch.float64))
    reference = torch.optim.AdamW([a], lr=1e-3)
    tested = KalmanAdam([b], lr=1e-3, noise="transport")
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        reference.step()
        tested.step()
    same = torch.isclose(b, a, rtol=1e-9, atol=1e-12)
    assert same.double().mean() >= 0.8


def test_bad_combinations_are_rejected_and_change_nothing():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="variance_adaptation"):
        KalmanAdam([p], noise="transport", variance_adaptation=True)
    with pytest.raises(ValueError, match="transport"):
        KalmanLAMB([p], noise="transport")
    optimizer = KalmanAdam([p], noise="transport")
    p.grad = torch.ones(3)
    optimizer.step()
    with pytest.raises(ValueError, match="no posterior variance"):
        optimizer.gradient_posterior(p)
    assert math.isfinite(float(p.sum()))
