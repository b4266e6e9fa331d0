"""Closed forms of the local-level Kalman filter that the optimizers are built on.

Model (derivations/d1_steady_state.py): x_t = x_{t-1} + w_t, w ~ N(0, q); g_t = x_t + v_t,
v ~ N(0, r); noise ratio lambda = q / r. Every function accepts Python numbers (returns a float) or
floating-point torch tensors (returns a tensor of the same dtype, broadcasting), and raises
`ValueError` naming the argument and its allowed range on bad values, `TypeError` on bad types.

The formulas are written in algebraically equal forms with only positive terms, so they keep full
relative precision in float32 over the whole range (the derivations assert the equalities).
"""

from __future__ import annotations

import math
from typing import TypeVar, Union

import torch

from kalman_optim._validation import check_beta, check_noise_ratio, check_prior_gain, check_step

Scalar = Union[float, torch.Tensor]
T = TypeVar("T", float, torch.Tensor)

__all__ = [
    "steady_state_gain",
    "noise_ratio_to_beta",
    "beta_to_noise_ratio",
    "adam_process_noise",
    "adam_gain",
    "constant_noise_gain",
]


def _sqrt(x):
    return torch.sqrt(x) if isinstance(x, torch.Tensor) else math.sqrt(x)


def _neg_expm1_log_power(beta, exponent):
    """1 - beta**exponent without cancellation when beta is close to 1: -expm1(exponent * log beta)."""
    if isinstance(beta, torch.Tensor) or isinstance(exponent, torch.Tensor):
        beta_t = beta if isinstance(beta, torch.Tensor) else torch.as_tensor(beta, dtype=torch.get_default_dtype())
        return -torch.expm1(exponent * torch.log(beta_t))
    return -math.expm1(exponent * math.log(beta))


def steady_state_gain(noise_ratio: T) -> T:
    r"""Steady-state Kalman gain of the local-level model (D1).

    K_inf = (-lambda + sqrt(lambda^2 + 4 lambda)) / 2, computed as
    2 sqrt(lambda) / (sqrt(lambda) + sqrt(lambda + 4)). `noise_ratio` = q / r, finite and >= 0.
    K_inf(0) = 0 (no process noise: the estimate stops moving); K_inf -> 1 as lambda -> inf.
    """
    lam = check_noise_ratio(noise_ratio, "noise_ratio")
    root = _sqrt(lam)
    return 2 * root / (root + _sqrt(lam + 4))


def noise_ratio_to_beta(noise_ratio: T) -> T:
    r"""EWMA coefficient of the steady-state filter: beta = 1 - K_inf(lambda) (D1).

    Computed as 4 / (sqrt(lambda) + sqrt(lambda + 4))^2; lambda = 0 gives beta = 1.
    """
    lam = check_noise_ratio(noise_ratio, "noise_ratio")
    return 4 / (_sqrt(lam) + _sqrt(lam + 4)) ** 2


def beta_to_noise_ratio(beta: T) -> T:
    r"""Noise ratio for which an EWMA with coefficient beta is the steady-state filter (D1).

    lambda = (1 - beta)^2 / beta, for beta in the open interval (0, 1).
    """
    b = check_beta(beta, "beta")
    return (1 - b) ** 2 / b


def adam_gain(beta: T, step) -> T:
    r"""Gain of Adam's bias-corrected EWMA at step t >= 1 (D2): k_t = (1 - beta) / (1 - beta^t).

    It equals the Kalman gain from a diffuse prior with process noise `adam_process_noise(beta, t)`.
    """
    b = check_beta(beta, "beta")
    t = check_step(step, "step")
    return (1 - b) / _neg_expm1_log_power(b, t)


def adam_process_noise(beta: T, step) -> T:
    r"""Noise ratio q_t / r under which the Kalman filter's gain equals Adam's (D2).

    q_t / r = (1 - beta)^2 / (beta (1 - beta^(t-1))) for t >= 2; it decreases to
    `beta_to_noise_ratio(beta)`. At t = 1 the prior is diffuse (infinite variance), so the value is inf.
    """
    b = check_beta(beta, "beta")
    t = check_step(step, "step")
    denominator = b * _neg_expm1_log_power(b, t - 1)
    if not isinstance(denominator, torch.Tensor) and denominator == 0:
        return math.inf  # t = 1: diffuse prior (torch tensors give inf by IEEE division)
    return (1 - b) ** 2 / denominator


def constant_noise_gain(beta: T, step, prior_gain=None) -> T:
    r"""Gain at step t of the filter with the constant noise ratio lambda(beta) (D1, closed form).

    With the diffuse prior (`prior_gain=None`, k_1 = 1): k_t = (1 - beta)(1 + beta^(2t-1)) / (1 - beta^(2t)).
    With a prior variance P_0 = prior_gain * r (k_0 = prior_gain >= 0, the gain before step 1):
    k_t = (1 - beta) + e_0 beta^(2t) / (1 + beta e_0 (1 - beta^(2t)) / (1 - beta^2)), e_0 = k_0 - (1 - beta).
    The error to the steady state 1 - beta shrinks like beta^(2t).
    """
    b = check_beta(beta, "beta")
    t = check_step(step, "step")
    if prior_gain is None:
        return (1 - b) * (1 + b ** (2 * t - 1)) / _neg_expm1_log_power(b, 2 * t)
    k0 = check_prior_gain(prior_gain, "prior_gain")
    e0 = k0 - (1 - b)
    decay = b ** (2 * t)
    return (1 - b) + e0 * decay / (1 + b * e0 * _neg_expm1_log_power(b, 2 * t) / ((1 - b) * (1 + b)))

