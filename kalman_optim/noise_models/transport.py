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
from kalman_optim.noise_models import adam_moments
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
    denom = adam_moments.update(exp_avg, exp_avg_sq, observed, step, beta1=beta1, beta2=beta2, eps=eps)
    param.addcdiv_(exp_avg, denom, value=-lr)
    finish(observed, state, lr)


def _ratio_or_zero(num: list[Tensor], den: list[Tensor]) -> list[Tensor]:
    """N / D per tensor, 0 where D <= 0 (the raw IV ratio of `transport` and `curvature_estimate`)."""
    tiny = torch.finfo(den[0].dtype).tiny
    return [torch.where(d > 0, n / d.clamp_min(tiny), torch.zeros_like(d)) for n, d in zip(num, den)]


def step_foreach(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                 states: dict[str, list[Tensor]], step: int, *, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, decoupled_weight_decay: bool, noise_beta: float) -> None:
    """`step` on a bucket of plain tensors sharing `step`, op for op as foreach calls (the eager step of a small model
    costs kernel calls: ~30 per tensor one tensor at a time)."""
    decoupled = weight_decay != 0 and decoupled_weight_decay
    observed = grads if weight_decay == 0 or decoupled_weight_decay else torch._foreach_add(grads, params, alpha=weight_decay)
    prev_grads, prev_lrs = states["prev_grad"], states["prev_lr"]
    shifts = None
    if step >= 2:
        inverse_steps = torch._foreach_div(exp_avg_sqs, 1 - beta2 ** (step - 1))
        torch._foreach_sqrt_(inverse_steps)
        torch._foreach_add_(inverse_steps, eps)
        torch._foreach_div_(inverse_steps, torch._foreach_clamp_min(prev_lrs, 1e-30))
        dthetas = torch._foreach_div(exp_avgs, inverse_steps)
        torch._foreach_neg_(dthetas)
        if decoupled:
            decays = torch._foreach_mul(prev_lrs, weight_decay)
            torch._foreach_sub_(dthetas, torch._foreach_mul(params, decays))
            kept = torch._foreach_neg(decays)
            torch._foreach_add_(kept, 1)
            torch._foreach_div_(dthetas, kept)
        num, den, resid = states["curvature_num"], states["curvature_den"], states["curvature_resid"]
        count = step - 2
        if step >= 3:
            ys = torch._foreach_sub(observed, prev_grads)
            instruments = torch._foreach_mul(prev_grads, adam_coefficients(beta1, step - 1).gain)
            torch._foreach_div_(instruments, inverse_steps)
            torch._foreach_add_(instruments, dthetas)
            torch._foreach_mul_(num, noise_beta)
            torch._foreach_addcmul_(num, ys, instruments, 1 - noise_beta)
            torch._foreach_mul_(den, noise_beta)
            torch._foreach_addcmul_(den, dthetas, instruments, 1 - noise_beta)
            raws = _ratio_or_zero(num, den)
            torch._foreach_sub_(ys, torch._foreach_mul(raws, dthetas))
            torch._foreach_mul_(resid, noise_beta)
            torch._foreach_addcmul_(resid, ys, ys, 1 - noise_beta)
        if count < 2:
            curvatures = [torch.zeros_like(n) for n in num]
        else:  # curvature_estimate on lists, with the raw ratio of this step's update (count >= 2 means step >= 4)
            tiny = torch.finfo(den[0].dtype).tiny
            rho = 1 / ewma_effective_samples(count, noise_beta)
            clamped = torch._foreach_clamp_min(den, tiny)
            se_sq = torch._foreach_mul(resid, rho / (1 - rho))
            torch._foreach_div_(se_sq, clamped)
            shrink = torch._foreach_mul(se_sq, SHRINK)
            torch._foreach_div_(shrink, torch._foreach_clamp_min(torch._foreach_mul(raws, raws), tiny))
            torch._foreach_neg_(shrink)
            torch._foreach_add_(shrink, 1)
            torch._foreach_clamp_min_(shrink, 0)
            curvatures = torch._foreach_mul(raws, shrink)
        torch._foreach_clamp_min_(curvatures, 0)
        torch._foreach_mul_(inverse_steps, KAPPA)
        shifts = torch._foreach_minimum(curvatures, inverse_steps)
        torch._foreach_mul_(shifts, dthetas)
    if decoupled:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    if shifts is not None:
        torch._foreach_add_(exp_avgs, shifts)
    denoms = adam_moments.update_foreach(exp_avgs, exp_avg_sqs, observed, step, beta1=beta1, beta2=beta2, eps=eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, -lr)
    torch._foreach_copy_(prev_grads, observed)
    for prev_lr in prev_lrs:  # torch has no _foreach_fill_
        prev_lr.fill_(lr)
