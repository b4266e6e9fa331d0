"""Adam's moment update and step denominator, shared by the modes that keep Adam's gain and move its prediction or
the point where the gradient is taken (D8: "transport", "extrapolated"):

    m <- m + k_t (g - m),  k_t = (1 - beta1) / (1 - beta1^t)   (exp_avg holds the posterior mean m_hat itself)
    v <- beta2 v + (1 - beta2) g^2,   denom = sqrt(v / (1 - beta2^t)) + eps
"""

from __future__ import annotations

import torch
from torch import Tensor

from kalman_optim.schedules import adam_coefficients


def update(exp_avg: Tensor, exp_avg_sq: Tensor, observed: Tensor, step: int, *, beta1: float, beta2: float,
           eps: float) -> Tensor:
    """Both moments in place with the observed gradient of step `step`; returns Adam's denominator (a new tensor)."""
    exp_avg.lerp_(observed, adam_coefficients(beta1, step).gain)
    exp_avg_sq.mul_(beta2).addcmul_(observed, observed, value=1 - beta2)
    return exp_avg_sq.div(1 - beta2**step).sqrt_().add_(eps)


def update_foreach(exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], observed: list[Tensor], step: int, *,
                   beta1: float, beta2: float, eps: float) -> list[Tensor]:
    """`update` on lists of tensors sharing `step`, op for op as foreach calls."""
    torch._foreach_lerp_(exp_avgs, observed, adam_coefficients(beta1, step).gain)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, observed, observed, 1 - beta2)
    denoms = torch._foreach_div(exp_avg_sqs, 1 - beta2**step)
    torch._foreach_sqrt_(denoms)
    torch._foreach_add_(denoms, eps)
    return denoms
