"""The noisy quadratic model (NQM) of Zhang et al. (2019), "Which algorithmic choices matter at which batch
sizes? Insights from a noisy quadratic model", as a torch problem that any torch optimizer can minimize.

Model. Curvature h_i = 1 / i for i = 1..d (condition number d). Each example is a quadratic
ell(theta; c) = 1/2 sum_i h_i (theta_i - c_i)^2 with a random centre c ~ N(0, H^{-1}); a mini-batch of B
examples averages B of them, so its gradient is

    g = h * (theta - c_bar),   c_bar ~ N(0, H^{-1} / B)   <=>   g = h * theta + sqrt(h / B) * eps,  eps ~ N(0, I)

(the sign of the noise is immaterial): gradient noise with diagonal covariance C = H / B, as in the paper.
The expected mini-batch loss is E[L_B(theta)] = L(theta) + d / 2, with the excess loss

    L(theta) = 1/2 sum_i h_i theta_i^2

deterministic given theta: noise enters only through the gradients, so L of the current iterate is the
exact expected (excess) loss and is tracked exactly, without evaluation noise. The initial point is fixed,
theta_0 = 1 in every coordinate (no initialisation randomness), so L(theta_0) = H_d / 2 (H_d the d-th
harmonic number), spread evenly over log-scales of curvature.

`NoisyQuadratic` holds R independent replicas of theta as the rows of one (R, d) tensor; each row is also
exposed as its own leaf nn.Parameter (sharing the row's memory), so each replica can sit in its own
optimizer param group (its own learning rate) while the gradient and loss of all replicas are computed in
one vectorized operation. Every replica gets its own independent noise draws.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def curvatures(dim: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """h_i = 1 / i for i = 1..dim."""
    return 1.0 / torch.arange(1, dim + 1, dtype=dtype, device=device)


def exact_loss(theta: torch.Tensor, curvature: torch.Tensor) -> torch.Tensor:
    """L(theta) = 1/2 sum_i h_i theta_i^2 over the last dimension (one value per replica), in float64."""
    return 0.5 * (theta.double().square() * curvature.double()).sum(-1)


def initial_loss(dim: int) -> float:
    """L(theta_0) with theta_0 = 1: H_dim / 2, half the dim-th harmonic number."""
    return 0.5 * math.fsum(1.0 / i for i in range(1, dim + 1))


def noisy_gradient(theta: torch.Tensor, curvature: torch.Tensor, batch_size: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """g = h * theta + sqrt(h / B) * eps, eps ~ N(0, I) drawn independently for every entry of theta."""
    eps = torch.randn(theta.shape, generator=generator, dtype=theta.dtype, device=theta.device)
    return torch.addcmul(curvature * theta, (curvature / batch_size).sqrt(), eps)


def sample_minibatch_loss(theta: torch.Tensor, curvature: torch.Tensor, batch_size: int,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """One mini-batch loss L_B(theta) = (1/B) sum_b 1/2 sum_i h_i (theta_i - c_bi)^2, c_b ~ N(0, H^{-1}).

    Differentiable in theta; slow (draws B x d centres) -- the reference the fast path is tested against."""
    centres = torch.randn((batch_size, theta.shape[-1]), generator=generator, dtype=theta.dtype,
                          device=theta.device) / curvature.sqrt()
    return 0.5 * (curvature * (theta - centres).square()).sum(-1).mean()


class NoisyQuadratic:
    """R independent replicas of the d-dimensional NQM at batch size B, ready for a torch optimizer.

    `params[r]` is a leaf nn.Parameter viewing row r of `theta`; `set_noisy_gradients()` draws fresh noise
    for every replica and stores each row's gradient in `params[r].grad`; `loss()` is the exact excess
    loss of every replica."""

    def __init__(self, dim: int, batch_size: int, replicas: int = 1, *, init: float = 1.0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu",
                 generator: torch.Generator | None = None):
        if dim < 1 or batch_size < 1 or replicas < 1:
            raise ValueError(f"Invalid NQM size: dim={dim}, batch_size={batch_size}, replicas={replicas} must be >= 1")
        self.dim, self.batch_size, self.replicas = dim, batch_size, replicas
        self.curvature = curvatures(dim, dtype, device)
        self.noise_scale = (self.curvature / batch_size).sqrt()
        self.generator = generator
        self.theta = torch.full((replicas, dim), float(init), dtype=dtype, device=device)
        # nn.Parameter(row) shares the row's storage, so optimizer updates land in self.theta in place.
        self.params = [nn.Parameter(self.theta[r]) for r in range(replicas)]
        self._grad = torch.empty_like(self.theta)
        for r, p in enumerate(self.params):
            p.grad = self._grad[r]

    def loss(self) -> torch.Tensor:
        """Exact excess loss L(theta_r) of every replica, shape (R,), float64."""
        return exact_loss(self.theta, self.curvature)

    @torch.no_grad()
    def set_noisy_gradients(self) -> None:
        """Draw g_r = h * theta_r + sqrt(h / B) * eps_r for all replicas at once (independent eps_r)."""
        eps = torch.randn(self.theta.shape, generator=self.generator, dtype=self.theta.dtype,
                          device=self.theta.device)
        torch.addcmul(self.curvature * self.theta, self.noise_scale, eps, out=self._grad)
        for r, p in enumerate(self.params):
            if p.grad is None:  # after zero_grad(set_to_none=True): point it back at the shared buffer
                p.grad = self._grad[r]
