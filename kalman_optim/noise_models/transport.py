r"""Noise model "transport" (D8): the gradient's drift caused by the optimizer's own step, as a control input.

Model per coordinate: x_t = x_{t-1} + h * dtheta_{t-1} + w_t, g_t = x_t + v_t, with h the diagonal curvature
and dtheta_{t-1} = theta_{t-1} - theta_{t-2} the last step. A known input leaves the Riccati recursion unchanged
(D8), so the gain stays Adam's k_t = (1 - beta1) / (1 - beta1^t); only the prediction moves:

    m^-_t = m_{t-1} + h_hat * dtheta_{t-1},     m_t = m^-_t + k_t (g_t - m^-_t)

(exp_avg stores the posterior mean m_t itself, i.e. Adam's bias-corrected m_hat). With h_hat = 0 this is Adam.

Curvature estimate, per coordinate, by instrumental variables (D8): the secant regression of
y_t = g_t - g_{t-1} on dtheta_{t-1} is biased because dtheta_{t-1} was computed from g_{t-1}, whose noise is in
y_t with the opposite sign. The instrument z_{t-1} = dtheta_{t-1} + a_{t-1} k_{t-1} g_{t-1} (the part of the step
fixed before g_{t-1} was seen; a = lr / (sqrt(v_hat) + eps) the coordinate's step size) is uncorrelated with it:

    N <- b N + (1-b) y z,   D <- b D + (1-b) dtheta z,   h_raw = N / D (0 where D <= 0)
    Q <- b Q + (1-b) (y - h_raw dtheta)^2                    (residual, for the standard error)
    h_hat = clip(h_raw max(0, 1 - SHRINK SE^2 / h_raw^2), 0, 1 / a),   SE^2 = Q rho / ((1 - rho) D)

with rho = sum w^2 / (sum w)^2 of the EWMA weights over the t - 2 informative samples (b = `noise_beta`). The
shrinkage switches the transport off where h is not resolved (small batches); the clip keeps
|h_hat dtheta| <= |m_{t-1}|, i.e. it can cancel the momentum, never reverse it. dtheta_{t-1} and a_{t-1} are
recomputed from the state at the start of the step (exact for Adam's step, with decoupled weight decay too), so
the state is m, v and N, D, Q, prev_grad: 24 B per fp32 parameter (+ one scalar, the previous learning rate).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from kalman_optim._validation import is_dtensor
from kalman_optim.schedules import adam_coefficients, ewma_effective_samples

STATE_KEYS = ("prev_grad", "curvature_num", "curvature_den", "curvature_resid", "prev_lr")
#: Pseudo-t^2 threshold of the shrinkage (9: transport only where h is resolved at ~3 standard errors).
SHRINK = 9.0
#: The largest transport relative to the momentum it corrects: |h_hat dtheta| <= KAPPA |m_{t-1}|.
KAPPA = 1.0


def init_state(exp_avg: Tensor) -> dict[str, Tensor]:
    """Zero statistics shaped like the parameter, and the previous learning rate as a 0-dim tensor (read and
    written only by tensor ops, so that a compiled step neither specializes on it nor loses the write)."""
    zeros = lambda: torch.zeros_like(exp_avg, memory_format=torch.preserve_format)  # noqa: E731
    return {"prev_grad": zeros(), "curvature_num": zeros(), "curvature_den": zeros(), "curvature_resid": zeros(),
            "prev_lr": torch.zeros((), dtype=exp_avg.dtype, device=exp_avg.device)}


def curvature_estimate(state: dict[str, Tensor], step: int, noise_beta: float) -> Tensor:
    """h_hat before clipping: the IV ratio N / D, shrunk to 0 where it is not resolved (D8); no mutation."""
    count = step - 2  # the first sample (step 2) has z = 0: no information
    num, den = state["curvature_num"], state["curvature_den"]
    if count < 2:
        return torch.zeros_like(num)
    tiny = torch.finfo(den.dtype).tiny
    raw = torch.where(den > 0, num / den.clamp_min(tiny), torch.zeros_like(num))
    rho = 1 / ewma_effective_samples(count, noise_beta)  # sum w^2 / (sum w)^2
    se_sq = state["curvature_resid"] * (rho / (1 - rho)) / den.clamp_min(tiny)
    return raw * (1 - SHRINK * se_sq / raw.square().clamp_min(tiny)).clamp_min_(0)


def transport(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, param: Tensor, state: dict[str, Tensor], step: int, *,
              beta1: float, beta2: float, eps: float, weight_decay: float, decoupled_weight_decay: bool,
              noise_beta: float) -> Tensor | None:
    """Update the curvature statistics with g_t and return h_hat * dtheta_{t-1} (None at step 1).

    Call at the start of step t, before any change to param, exp_avg (= m_{t-1}) and exp_avg_sq (= v_{t-1})."""
    if step < 2:
        return None
    lr_prev = state["prev_lr"]
    if is_dtensor(exp_avg):  # a DTensor does not mix with a plain 0-dim tensor
        lr_prev = lr_prev.item()
    # 1 / a_{t-1} = (sqrt(v_{t-1} / (1 - beta2^(t-1))) + eps) / lr_{t-1}
    inverse_step = exp_avg_sq.div(1 - beta2 ** (step - 1)).sqrt_().add_(eps).div_(lr_prev.clamp_min(1e-30) if torch.is_tensor(lr_prev) else max(lr_prev, 1e-30))
    dtheta = exp_avg.div(inverse_step).neg_()
    if decoupled_weight_decay and weight_decay != 0:
        # theta_{t-1} = theta_{t-2}(1 - lr wd) - a m  =>  dtheta = -(a m + lr wd theta_{t-1}) / (1 - lr wd)
        decay = lr_prev * weight_decay
        dtheta.sub_(param * decay).div_(1 - decay)
    y = grad - state["prev_grad"]
    if step >= 3:  # z_{t-1} = dtheta + a k_{t-1} g_{t-1}; at step 2 it is 0 (m_1 = g_1)
        instrument = state["prev_grad"].mul(adam_coefficients(beta1, step - 1).gain).div_(inverse_step).add_(dtheta)
        state["curvature_num"].mul_(noise_beta).addcmul_(y, instrument, value=1 - noise_beta)
        state["curvature_den"].mul_(noise_beta).addcmul_(dtheta, instrument, value=1 - noise_beta)
        den = state["curvature_den"]
        raw = torch.where(den > 0, state["curvature_num"] / den.clamp_min(torch.finfo(den.dtype).tiny),
                          torch.zeros_like(den))
        residual = y.sub_(raw.mul_(dtheta))
        state["curvature_resid"].mul_(noise_beta).addcmul_(residual, residual, value=1 - noise_beta)
    curvature = torch.minimum(curvature_estimate(state, step, noise_beta).clamp_min_(0), inverse_step.mul_(KAPPA))
    return curvature.mul_(dtheta)


def finish(grad: Tensor, state: dict[str, Tensor], lr: float) -> None:
    """Remember g_t and lr_t for the next step's recomputation of dtheta_t."""
    state["prev_grad"].copy_(grad)
    state["prev_lr"].fill_(lr)


def step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, state: dict[str, Tensor], step: int, *,
         lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled_weight_decay: bool,
         noise_beta: float) -> None:
    """One whole "transport" step on one tensor, in place (`grad` already negated when maximizing)."""
    # Adam's L2 penalty is part of the observed gradient; the decoupled decay is part of the step (D8).
    observed = grad if weight_decay == 0 or decoupled_weight_decay else grad.add(param, alpha=weight_decay)
    shift = transport(observed, exp_avg, exp_avg_sq, param, state, step, beta1=beta1, beta2=beta2, eps=eps,
                      weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay, noise_beta=noise_beta)
    if weight_decay != 0 and decoupled_weight_decay:
        param.mul_(1 - lr * weight_decay)
    if shift is not None:
        exp_avg.add_(shift)  # the prediction m^-_t
    exp_avg.lerp_(observed, adam_coefficients(beta1, step).gain)
    exp_avg_sq.mul_(beta2).addcmul_(observed, observed, value=1 - beta2)
    denom = exp_avg_sq.div(1 - beta2**step).sqrt_().add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr)
    finish(observed, state, lr)
