"""KalmanLAMB: equals plain LAMB (You et al. 2020, Algorithm 2) without precision weighting; the
precision-weighted trust ratio follows D5."""

import copy

import pytest
import torch

from kalman_optim import KalmanLAMB
from kalman_optim.functional import precision_weighted_norm
from tests.kalman_optim.helpers import batches, full_loss, loss_fn, small_network


class PlainLAMB:
    """LAMB written out plainly from the paper (Algorithm 2, bias-corrected moments, phi = identity)."""

    def __init__(self, params, lr, beta1, beta2, eps, weight_decay):
        self.params, self.lr, self.beta1, self.beta2, self.eps, self.wd = list(params), lr, beta1, beta2, eps, weight_decay
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        self.t += 1
        for i, x in enumerate(self.params):
            g = x.grad
            self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * g
            self.v[i] = self.beta2 * self.v[i] + (1 - self.beta2) * g * g
            m_hat = self.m[i] / (1 - self.beta1**self.t)
            v_hat = self.v[i] / (1 - self.beta2**self.t)
            r = m_hat / (v_hat.sqrt() + self.eps)
            update = r + self.wd * x
            x_norm, u_norm = x.norm(), update.norm()
            trust = x_norm / u_norm if x_norm > 0 and u_norm > 0 else 1.0
            x -= self.lr * trust * update


@pytest.mark.parametrize("foreach", [False, True], ids=["reference", "foreach"])
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 2e-5), (torch.float64, 1e-11)], ids=["float32", "float64"])
def test_without_precision_weighting_equals_plain_lamb_step_by_step(foreach, dtype, rtol):
    model, reference_model = small_network(dtype), small_network(dtype)
    optimizer = KalmanLAMB(model.parameters(), lr=5e-3, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.02,
                           precision_weighting=False, foreach=foreach)
    reference = PlainLAMB(reference_model.parameters(), 5e-3, 0.9, 0.99, 1e-6, 0.02)
    for x, y in batches(200, dtype):
        for m, o in [(model, optimizer), (reference_model, reference)]:
            for p in m.parameters():
                p.grad = None
            loss_fn(m, x, y).backward()
            o.step()
        for p, q in zip(model.parameters(), reference_model.parameters()):
            torch.testing.assert_close(p, q, rtol=rtol, atol=rtol * 1e-2)


def test_precision_weighted_norm_reduces_to_the_norm_for_equal_variances():
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(1000, dtype=torch.float64, generator=generator)
    for variance in [torch.full_like(u, 3.0), torch.zeros_like(u)]:
        torch.testing.assert_close(precision_weighted_norm(u, variance, 0.01), u.norm())
    # Scale-free in the variances (D5: the scalar k_t of the non-adaptive modes cancels).
    variance = torch.rand(1000, dtype=torch.float64, generator=generator)
    torch.testing.assert_close(precision_weighted_norm(u, 7.5 * variance, 0.01), precision_weighted_norm(u, variance, 0.01))


def test_precision_weighting_discounts_high_variance_coordinates():
    u = torch.tensor([1.0, 1.0, 10.0, 10.0], dtype=torch.float64)
    certain_large = torch.tensor([1.0, 1.0, 0.01, 0.01], dtype=torch.float64)
    uncertain_large = torch.tensor([0.01, 0.01, 1.0, 1.0], dtype=torch.float64)
    plain = u.norm()
    assert precision_weighted_norm(u, uncertain_large, 0.01) < plain < precision_weighted_norm(u, certain_large, 0.01)
    # Bounded by sqrt(n) times the extreme |u_i|.
    assert 2 * 1.0 <= precision_weighted_norm(u, uncertain_large, 0.01) <= 2 * 10.0


@pytest.mark.parametrize("noise", ["adam", "constant", "adaptive"])
def test_precision_weighted_lamb_trains(noise):
    model = small_network()
    before = full_loss(model)
    optimizer = KalmanLAMB(model.parameters(), lr=1e-2, noise=noise, precision_weighting=True)
    for x, y in batches(300):
        optimizer.zero_grad()
        loss_fn(model, x, y).backward()
        optimizer.step()
    assert full_loss(model) < 0.6 * before


def test_trust_clip_bounds_the_ratio():
    p = torch.nn.Parameter(torch.full((4,), 100.0))
    optimizer = KalmanLAMB([p], lr=1.0, weight_decay=0.0, trust_clip=2.0, precision_weighting=False)
    p.grad = torch.ones(4)
    optimizer.step()
    # m_hat / sqrt(v_hat) = 1 per coordinate: ||p|| / ||u|| = 100 unclipped, 2 clipped: p moves by 2.
    torch.testing.assert_close(p.detach(), torch.full((4,), 98.0), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("foreach", [False, True], ids=["reference", "foreach"])
def test_previous_precision_mean_weighs_by_the_last_steps_layer_mean(foreach):
    """precision_mean="previous" (the default): step t's weights divide by the layer mean of P_{t-1}, stored as state (the
    posterior read-out's variance, averaged); at step 2 that mean is P_1's, 0 in mode "adam" (v_hat = m_hat^2
    after one gradient), so the first two steps are plain LAMB's, and step 3 is the weighted norm with P_2's mean."""
    lr, wd, eps = 5e-3, 0.02, 1e-6
    models = [small_network(torch.float64) for _ in range(3)]
    lagged = KalmanLAMB(models[0].parameters(), lr=lr, eps=eps, weight_decay=wd, foreach=foreach)  # the default
    plain = KalmanLAMB(models[1].parameters(), lr=lr, eps=eps, weight_decay=wd, precision_weighting=False)
    current = KalmanLAMB(models[2].parameters(), lr=lr, eps=eps, weight_decay=wd, precision_mean="current")
    for step, (x, y) in enumerate(batches(3, torch.float64), start=1):
        before = [p.detach().clone() for p in models[0].parameters()]
        previous = [lagged.state[p]["layer_mean_variance"].clone() if step > 1 else None
                    for p in models[0].parameters()]
        for model, optimizer in zip(models, (lagged, plain, current)):
            optimizer.zero_grad()
            loss_fn(model, x, y).backward()
            optimizer.step()
        for p, start, mean in zip(models[0].parameters(), before, previous):
            posterior_mean, variance = lagged.gradient_posterior(p)
            torch.testing.assert_close(lagged.state[p]["layer_mean_variance"], variance.mean())
            if step == 3:  # recompute the step from the state: u = m_hat / (sqrt(v_hat) + eps) + wd p
                v_hat = lagged.state[p]["exp_avg_sq"] / (1 - 0.999**3)
                update = posterior_mean / (v_hat.sqrt() + eps) + wd * start
                assert mean > 0
                norm = precision_weighted_norm(update, variance, 0.01, mean=mean)
                torch.testing.assert_close(p.detach(), start - lr * (start.norm() / norm) * update)
        # Equal weights give ||u|| up to rounding (a weighted mean of u^2 instead of a plain sum).
        gap_to_plain = max((p - q).abs().max().item() for p, q in zip(models[0].parameters(), models[1].parameters()))
        assert (gap_to_plain < 1e-13) == (step <= 2), f"step {step}: {gap_to_plain}"
    assert max((p - q).abs().max().item() for p, q in zip(models[0].parameters(), models[2].parameters())) > 1e-8


def test_previous_precision_mean_survives_a_state_dict_round_trip():
    model = small_network()
    optimizer = KalmanLAMB(model.parameters(), lr=1e-2, noise="innovation", precision_mean="previous")
    data = list(batches(10))
    for x, y in data[:5]:
        optimizer.zero_grad()
        loss_fn(model, x, y).backward()
        optimizer.step()
    clone = small_network()
    clone.load_state_dict(model.state_dict())
    restored = KalmanLAMB(clone.parameters(), lr=1e-2, noise="innovation", precision_mean="previous")
    restored.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # load_state_dict keeps same-device tensors
    assert all(float(s["layer_mean_variance"]) > 0 for s in restored.state.values())
    for x, y in data[5:]:
        for m, o in [(model, optimizer), (clone, restored)]:
            o.zero_grad()
            loss_fn(m, x, y).backward()
            o.step()
    for p, q in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
