"""KalmanLAMB: equals plain LAMB (You et al. 2020, Algorithm 2) without precision weighting; the
precision-weighted trust ratio follows D5."""

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
