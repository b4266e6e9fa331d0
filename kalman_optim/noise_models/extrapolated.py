r"""Noise model "extrapolated" (D8): the control input h * dtheta measured by the gradient itself.

D8's transition x_t = x_{t-1} + h * dtheta_{t-1} + w_t moves the gradient by the optimizer's own step. Mode
"transport" estimates h per coordinate from noisy secants, which at small batches is too noisy to use. Here the
gradient is instead TAKEN at an extrapolated point, phi_t = theta_{t-1} + c_t (theta_{t-1} - theta_{t-2}), so that on
a quadratic it carries the transport exactly (implicit gradient transport, Arnold et al. 2019, with Adam's gain):

    m_t = (1 - k_t) m_{t-1} + k_t g(phi_t),      c_t = (1 - k_t) / k_t,      k_t = (1 - beta1) / (1 - beta1^t)

equals the Kalman filter with the known input, m^-_t = m_{t-1} + H (theta_{t-1} - theta_{t-2}),
m_t = m^-_t + k_t (g(theta_{t-1}) - m^-_t), with the same noise draw (D8: g(phi) = g(theta) + c H dtheta and
k_t c_t = 1 - k_t). Adam's step then moves the iterate theta; the parameter holds phi, where the next gradient is
taken. With h = 0 (a gradient that does not depend on the parameter) every step is AdamW's.

The parameter is therefore NOT the iterate between steps: `optimizer.eval()` swaps the iterate in (to evaluate or
save the model), `optimizer.train()` swaps the extrapolated point back (as in schedule-free optimizers). State:
m (the posterior mean itself, Adam's bias-corrected m_hat), v and the iterate theta: 12 B per fp32 parameter.
No noise statistic, so no posterior variance (use mode "innovation" for intervals).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kalman_optim.noise_models import adam_moments

STATE_KEYS = ("iterate",)


def init_state(param: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
    """The iterate theta_0: the parameter itself (phi_1 = theta_0, since c_1 = 0), in the state's dtype."""
    return {"iterate": param.detach().to(dtype=dtype, memory_format=torch.preserve_format, copy=True)}


def extrapolation(beta1: float, step: int) -> float:
    """c_{t+1} = (1 - k_{t+1}) / k_{t+1} = beta1 (1 - beta1^t) / (1 - beta1) for the gradient of step t + 1 (D8)."""
    return beta1 * (1 - beta1**step) / (1 - beta1)


def step(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, state: dict[str, Tensor], step: int, *,
         lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled_weight_decay: bool) -> None:
    """One whole "extrapolated" step on one tensor, in place (`grad`, taken at `param` = phi_t, already negated when
    maximizing). Afterwards state["iterate"] = theta_t and param = phi_{t+1}."""
    iterate = state["iterate"]
    # Adam's L2 penalty is part of the observed gradient, taken where the gradient is (it is linear: transported too).
    observed = grad if weight_decay == 0 or decoupled_weight_decay else grad.add(param, alpha=weight_decay)
    denom = adam_moments.update(exp_avg, exp_avg_sq, observed, step, beta1=beta1, beta2=beta2, eps=eps)
    update = exp_avg.div(denom).mul_(-lr)  # theta_t - theta_{t-1}
    if weight_decay != 0 and decoupled_weight_decay:
        update.add_(iterate, alpha=-lr * weight_decay)
    iterate.add_(update)
    # phi_{t+1} = theta_t + c (theta_t - theta_{t-1})
    param.copy_(iterate.add(update, alpha=extrapolation(beta1, step)))


def step_foreach(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                 states: dict[str, list[Tensor]], step: int, *, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, decoupled_weight_decay: bool) -> None:
    """`step` on a bucket of plain tensors sharing `step`, op for op as foreach calls."""
    iterates = states["iterate"]
    observed = grads if weight_decay == 0 or decoupled_weight_decay else torch._foreach_add(grads, params, alpha=weight_decay)
    denoms = adam_moments.update_foreach(exp_avgs, exp_avg_sqs, observed, step, beta1=beta1, beta2=beta2, eps=eps)
    updates = torch._foreach_div(exp_avgs, denoms)
    torch._foreach_mul_(updates, -lr)
    if weight_decay != 0 and decoupled_weight_decay:
        torch._foreach_add_(updates, iterates, alpha=-lr * weight_decay)
    torch._foreach_add_(iterates, updates)
    torch._foreach_copy_(params, torch._foreach_add(iterates, updates, alpha=extrapolation(beta1, step)))


def to_iterate(param: Tensor, state: dict[str, Tensor]) -> None:
    """optimizer.eval(): put the iterate theta into the parameter, keeping the extrapolated point phi. Where both have
    the parameter's dtype they trade places (no memory); a half-precision parameter keeps its float32 iterate and
    holds phi in a buffer of its own dtype until `to_extrapolated`, so that nothing is rounded."""
    stored = state["iterate"]
    if stored.dtype == param.dtype:
        held = param.detach().clone()
        param.copy_(stored)
        stored.copy_(held)
    else:
        state["held_point"] = param.detach().clone()
        param.copy_(stored)


def to_extrapolated(param: Tensor, state: dict[str, Tensor]) -> None:
    """optimizer.train(): the inverse of `to_iterate`, bit for bit."""
    if "held_point" in state:
        param.copy_(state.pop("held_point"))
        return
    stored = state["iterate"]
    held = param.detach().clone()
    param.copy_(stored)
    stored.copy_(held)
