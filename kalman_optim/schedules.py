"""Per-step scalars of the moment filters: one set per tensor and step, never per element.

A moment estimate is stored as a tensor `s` whose posterior mean is `s / correction`, updated as
`s <- decay * s + weight * x` (x = g for the first moment, g^2 for the second). The normalized
posterior variance of the mean (P_t / r, D1) is `gain`.

- noise="adam" (D2): Adam's raw EWMA, weight = 1 - beta, decay = beta, correction = 1 - beta^t; the
  posterior-mean gain is (1 - beta) / (1 - beta^t). Floats are computed as torch.optim.Adam does, so
  the update is bit-for-bit Adam's.
- noise="constant" (D1): the filter with the constant ratio lambda(beta), state = posterior mean
  (correction = 1), weight = gain = the Riccati gain k_t from the chosen prior (closed form).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from kalman_optim.closed_forms import constant_noise_gain


#: Modes whose two moments are Adam's own EWMAs (the step is AdamW's unless the uncertainty is used).
ADAM_FILTER_MODES = ("adam", "innovation", "fitted")


class MomentCoefficients(NamedTuple):
    weight: float  # coefficient of the new observation
    decay: float  # coefficient of the stored estimate
    correction: float  # posterior mean = stored / correction
    gain: float  # Kalman gain of the posterior mean = normalized posterior variance P_t / r


def adam_coefficients(beta: float, step: int) -> MomentCoefficients:
    """Adam's EWMA with bias correction (D2: the Kalman filter with q_t / r from a diffuse prior)."""
    correction = 1 - beta**step
    return MomentCoefficients(weight=1 - beta, decay=beta, correction=correction, gain=(1 - beta) / correction)


def constant_coefficients(beta: float, step: int, prior_gain: float | None) -> MomentCoefficients:
    """The constant-noise Kalman filter (D1) with lambda = (1 - beta)^2 / beta and prior P_0 = prior_gain * r."""
    gain = float(constant_noise_gain(beta, step, prior_gain=prior_gain))
    return MomentCoefficients(weight=gain, decay=1 - gain, correction=1.0, gain=gain)


@functools.lru_cache(maxsize=1024)
def moment_coefficients(noise: str, beta: float, step: int, prior_gain: float | None) -> MomentCoefficients:
    """Coefficients for a moment filter; the adaptive mode's second moment uses the constant filter."""
    if noise == "adam":
        return adam_coefficients(beta, step)
    return constant_coefficients(beta, step, prior_gain)


def second_moment_coefficients(noise: str, beta2: float, step: int, prior_gain: float | None) -> MomentCoefficients:
    """The second moment's filter: Adam's in the modes built on Adam's filter, the constant-noise filter otherwise."""
    return moment_coefficients("adam" if noise in ADAM_FILTER_MODES else "constant", beta2, step, prior_gain)


def ewma_effective_samples(count: int, beta: float) -> float:
    """n_eff = (sum w)^2 / sum w^2 of a bias-corrected EWMA (coefficient `beta`) of `count` samples (D7):
    (1 - beta^n)^2 (1 + beta) / ((1 - beta)(1 - beta^(2n))); 0 for count <= 0. Its reciprocal is the variance
    factor of such an average (D8's standard error of the curvature)."""
    if count <= 0:
        return 0.0
    return (-math.expm1(count * math.log(beta))) ** 2 * (1 + beta) / ((1 - beta) * -math.expm1(2 * count * math.log(beta)))


def state_noise_bias(beta1: float, beta2: float) -> float:
    """E[v - m^2] / r for steady-state EWMAs on a random walk at the ratio matched to beta1 (D3).

    c = beta1 + (1 - beta1)^2 beta2 / (beta1 (1 - beta2)); r_hat = max(v - m^2, 0) / c is then an
    unbiased, zero-memory estimate of the observation noise from the optimizer's own moments.
    """
    return beta1 + (1 - beta1) ** 2 * beta2 / (beta1 * (1 - beta2))


def normal_quantile(level: float) -> float:
    """Two-sided standard-normal quantile z with P(|Z| <= z) = level (z(0.95) = 1.959964), D3."""
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0.0 < level < 1.0:
        raise ValueError(f"level must be a number in the open interval (0, 1), got {level!r}")
    return math.sqrt(2.0) * torch.special.erfinv(torch.tensor(float(level), dtype=torch.float64)).item()


def student_t_quantile(level: float, dof: float) -> float:
    """Two-sided Student-t quantile with `dof` (> 0, not necessarily an integer) degrees of freedom (D7).

    inf for dof <= 0 (no data); scipy's stdtrit when scipy is installed, otherwise the Cornish-Fisher expansion
    in 1/dof about the normal quantile (Abramowitz & Stegun 26.7.5; error < 1e-3 relative for dof >= 5), with the
    exact closed forms at dof = 1 (Cauchy) and 2."""
    z = normal_quantile(level)
    if dof <= 0:
        return math.inf
    p = 0.5 + level / 2
    try:
        from scipy.special import stdtrit
    except ImportError:  # the library needs only torch
        if dof == 1:
            return math.tan(math.pi * (p - 0.5))
        if dof == 2:
            return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
        z2 = z * z
        terms = (
            (z2 + 1) * z / 4,
            ((5 * z2 + 16) * z2 + 3) * z / 96,
            (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384,
            ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160,
        )
        return z + sum(term / dof ** (i + 1) for i, term in enumerate(terms))
    return float(stdtrit(float(dof), p))
