"""Mode "extrapolated" (D8 with the input measured by the gradient): the gradient is taken at an extrapolated point,
so that on a quadratic Adam's filter of it is the textbook Kalman filter with the exact control input H dtheta.
Checked against that filter (D8's oracle), against AdamW where the gradient does not depend on the parameter,
path against path, and for the eval()/train() swap of iterate and extrapolated point."""

import copy
import io
import math

import numpy as np
import pytest
import torch

from derivations import d8_control_input as d8
from kalman_optim import KalmanAdam, KalmanLAMB
from kalman_optim.closed_forms import adam_process_noise
from kalman_optim.noise_models import extrapolated


def quadratic_run(curvature, noise, steps, seed=0, **options):
    """Minimize 1/2 sum h (theta - 1)^2 with gradient noise of standard deviation `noise`, the gradient taken at the
    parameter (the extrapolated point). Returns per step (noise draw, iterate before the step, exp_avg after it)."""
    generator = torch.Generator().manual_seed(seed)
    theta = torch.nn.Parameter(torch.zeros_like(curvature))
    optimizer = KalmanAdam([theta], noise="extrapolated", **{"lr": 0.05, "weight_decay": 0.0, **options})
    history = []
    iterate = theta.detach().clone()
    for _ in range(steps):
        draw = noise * torch.randn(curvature.shape, generator=generator, dtype=curvature.dtype)
        theta.grad = curvature * (theta.detach() - 1) + draw
        optimizer.step()
        history.append((draw, iterate, optimizer.state[theta]["exp_avg"].clone()))
        iterate = optimizer.state[theta]["iterate"].clone()
    return optimizer, theta, history


@pytest.mark.parametrize("options", [{}, {"weight_decay": 0.1}], ids=["no-decay", "decoupled-decay"])
def test_posterior_mean_is_the_textbook_filter_with_the_exact_input(options):
    """exp_avg equals D8's Kalman filter of the gradient AT THE ITERATE, g(theta_{t-1}) = h (theta_{t-1} - 1) + n_t
    (the same noise draw), with the exact input h dtheta_{t-1}, Adam's process noise q_t and a diffuse prior."""
    h = torch.linspace(0.05, 1.5, 16, dtype=torch.float64)
    _, _, history = quadratic_run(h, 0.05, 80, lr=0.02, **options)
    draws = np.stack([x[0].numpy() for x in history])
    iterates = np.stack([x[1].numpy() for x in history])  # theta_{t-1} for the gradient of step t
    means = np.stack([x[2].numpy() for x in history])
    observed = h.numpy() * (iterates - 1) + draws
    dtheta = np.zeros_like(observed)
    dtheta[1:] = iterates[1:] - iterates[:-1]
    assert np.abs(dtheta[1:]).min() > 0  # the input is never trivially 0
    steps = np.arange(1, len(observed) + 1)
    q = np.array([0.0] + [float(adam_process_noise(0.9, int(t))) for t in steps[1:]])
    oracle_means, _ = d8.transport_filter_oracle(observed, dtheta, h.numpy(), q[:, None], 1.0, (0.0, np.inf))
    np.testing.assert_allclose(means, oracle_means, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("foreach", [False, True])
def test_a_gradient_that_does_not_depend_on_the_parameter_gives_adamw(foreach):
    """h = 0: the extrapolation changes nothing the gradient sees, so the iterate follows torch's AdamW."""
    torch.manual_seed(0)
    grads = torch.randn(100, 30, dtype=torch.float64)
    a = torch.nn.Parameter(torch.zeros(30, dtype=torch.float64))
    b = torch.nn.Parameter(torch.zeros(30, dtype=torch.float64))
    reference = torch.optim.AdamW([a], lr=1e-2, weight_decay=0.05)
    tested = KalmanAdam([b], lr=1e-2, weight_decay=0.05, noise="extrapolated", foreach=foreach)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        reference.step()
        tested.step()
    torch.testing.assert_close(tested.state[b]["iterate"], a.detach(), rtol=1e-12, atol=1e-14)
    assert not torch.equal(b.detach(), a.detach())  # the parameter holds the extrapolated point


def test_parameter_is_the_extrapolated_point():
    """phi_{t+1} = theta_t + c_{t+1} (theta_t - theta_{t-1}), c_{t+1} = (1 - k_{t+1}) / k_{t+1}."""
    p = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    optimizer = KalmanAdam([p], lr=0.1, weight_decay=0.0, noise="extrapolated", betas=(0.8, 0.99))
    previous = p.detach().clone()
    for t in range(1, 6):
        p.grad = torch.arange(5, dtype=torch.float64) - p.detach()
        optimizer.step()
        theta = optimizer.state[p]["iterate"]
        k_next = (1 - 0.8) / (1 - 0.8 ** (t + 1))
        torch.testing.assert_close(p.detach(), theta + (1 - k_next) / k_next * (theta - previous), rtol=1e-12, atol=1e-14)
        assert extrapolated.extrapolation(0.8, t) == pytest.approx((1 - k_next) / k_next, rel=1e-12)
        previous = theta.clone()


@pytest.mark.parametrize("beta1", [0.5, 0.9, 0.99])
def test_extrapolation_distance_is_d8s(beta1):
    """c_{t+1} = (1 - k_{t+1}) / k_{t+1} with Adam's gain: D8's asserted closed form, exported as an oracle."""
    for step in (1, 2, 7, 100, 10_000):
        assert extrapolated.extrapolation(beta1, step) == pytest.approx(float(d8.adam_extrapolation_oracle(beta1, step)),
                                                                        rel=1e-12)


@pytest.mark.parametrize("options", [dict(weight_decay=0.1), dict(weight_decay=0.1, decoupled_weight_decay=False),
                                     dict(weight_decay=0.0, maximize=True)], ids=["decoupled", "coupled", "maximize"])
def test_foreach_path_equals_the_reference_step_by_step(options):
    """The foreach step against the per-tensor reference, float64, every step, tensors joining late."""
    shapes = [(20, 3), (50,), (4,)]
    runs = []
    for foreach in (False, True):
        params = [torch.nn.Parameter(torch.ones(s, dtype=torch.float64)) for s in shapes]
        optimizer = KalmanAdam(params, lr=0.02, noise="extrapolated", foreach=foreach, **options)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eval_puts_the_iterate_in_and_train_restores_the_point_bit_for_bit(dtype):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(40).to(dtype))
    optimizer = KalmanAdam([p], lr=0.05, noise="extrapolated")
    optimizer.eval()  # before any step: nothing to swap, and step() must still refuse
    with pytest.raises(ValueError, match=r"optimizer.train\(\)"):
        p.grad = torch.ones_like(p)
        optimizer.step()
    optimizer.train()
    for _ in range(5):
        p.grad = torch.randn(40).to(dtype)
        optimizer.step()
    point, iterate = p.detach().clone(), optimizer.state[p]["iterate"].clone()
    optimizer.eval()
    assert torch.equal(p.detach(), iterate.to(dtype))
    optimizer.eval()  # idempotent
    assert torch.equal(p.detach(), iterate.to(dtype))
    saved = copy.deepcopy(optimizer.state_dict())
    state_before = {k: v.clone() for k, v in optimizer.state[p].items()}
    p.grad = torch.randn(40).to(dtype)
    with pytest.raises(ValueError, match=r"optimizer.train\(\)"):
        optimizer.step()
    assert torch.equal(p.detach(), iterate.to(dtype))  # the failed step changed nothing
    assert all(torch.equal(state_before[k], v) for k, v in optimizer.state[p].items())
    optimizer.train()
    assert torch.equal(p.detach(), point) and torch.equal(optimizer.state[p]["iterate"], iterate)
    # A state saved in eval mode resumes: load, train() restores the point, the next steps agree.
    q = torch.nn.Parameter(iterate.to(dtype).clone())
    resumed = KalmanAdam([q], lr=0.05, noise="extrapolated")
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    resumed.train()
    assert torch.equal(q.detach(), point)
    for _ in range(3):
        g = torch.randn(40).to(dtype)
        p.grad, q.grad = g.clone(), g.clone()
        optimizer.step()
        resumed.step()
    assert torch.equal(p.detach(), q.detach())


def test_eval_and_train_are_no_ops_in_other_modes():
    p = torch.nn.Parameter(torch.ones(4))
    optimizer = KalmanAdam([p], lr=0.1)
    p.grad = torch.ones(4)
    optimizer.step()
    value = p.detach().clone()
    optimizer.eval()
    assert torch.equal(p.detach(), value)
    optimizer.step()  # only mode "extrapolated" has two points to keep apart
    optimizer.train()


def test_bad_combinations_are_rejected_and_change_nothing():
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="variance_adaptation"):
        KalmanAdam([p], noise="extrapolated", variance_adaptation=True)
    with pytest.raises(ValueError, match="prior_variance"):
        KalmanAdam([p], noise="extrapolated", prior_variance=1.0)
    with pytest.raises(ValueError, match="extrapolated"):
        KalmanLAMB([p], noise="extrapolated")
    optimizer = KalmanAdam([p], noise="extrapolated")
    p.grad = torch.ones(3)
    optimizer.step()
    with pytest.raises(ValueError, match="no posterior variance"):
        optimizer.gradient_posterior(p)
    assert math.isfinite(float(p.sum()))


@pytest.mark.parametrize("saved_in_eval", [True, False], ids=["saved-after-eval", "saved-in-training"])
def test_a_checkpoint_resumes_bit_for_bit_whether_saved_after_eval_or_during_training(saved_in_eval):
    """The usual loop: evaluate (eval()), save model and optimizer, train() on. A run restored from that checkpoint
    into a fresh model and optimizer continues exactly as the original (the loaded group remembers its mode)."""
    x, y = torch.randn(64, 5, generator=torch.Generator().manual_seed(1)), torch.randn(64, 1)

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def step(net, optimizer, i):
        optimizer.zero_grad()
        batch = slice(i % 4 * 16, i % 4 * 16 + 16)
        torch.nn.functional.mse_loss(net(x[batch]), y[batch]).backward()
        optimizer.step()

    net = model()
    optimizer = KalmanAdam(net.parameters(), lr=1e-2, weight_decay=0.01, noise="extrapolated")
    for i in range(10):
        step(net, optimizer, i)
    if saved_in_eval:
        optimizer.eval()
    weights, state = copy.deepcopy(net.state_dict()), copy.deepcopy(optimizer.state_dict())
    restored = model()
    restored.load_state_dict(weights)
    resumed = KalmanAdam(restored.parameters(), lr=1e-2, weight_decay=0.01, noise="extrapolated")
    resumed.load_state_dict(state)
    assert [g["train_mode"] for g in resumed.param_groups] == [not saved_in_eval]
    for net_, optimizer_ in ((net, optimizer), (restored, resumed)):
        optimizer_.train()
        for i in range(10, 20):
            step(net_, optimizer_, i)
    for a, b in zip(net.parameters(), restored.parameters()):
        assert torch.equal(a, b)
