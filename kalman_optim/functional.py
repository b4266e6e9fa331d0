r"""The per-step math of KalmanAdam, as functions a test can call directly.

Two paths compute the same update: `_single_tensor_kalman_adam` (the plain reference, one tensor at a
time) and `_multi_tensor_kalman_adam` (torch._foreach_* over all tensors with the same step count).
Both update `params` and the state tensors in place, like torch.optim's functional API.

Update (D2/D1 of derivations/): for each coordinate, with g the gradient (negated if maximizing),
    m <- m + k1 (g - m)                       first-moment filter (Adam's EWMA in mode "adam")
    v <- (1 - k2) v + k2 g^2                  second-moment filter
    p <- p (1 - lr wd) - lr * gamma * m_hat / (sqrt(v_hat) + eps)
where m_hat, v_hat are the posterior means, gamma = 1 or the variance-adaptation factor of D3,
gamma = m_hat^2 / (m_hat^2 + kappa P) with P = k1 r_hat the posterior variance of m_hat.
In mode "adaptive" the gain k1 is per coordinate, from the noise ratio estimated on gradient
differences (D4): Var(g_t - g_{t-1}) = q + 2r, Cov(d_t, d_{t-1}) = -r.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from kalman_optim._validation import is_dtensor
from kalman_optim.closed_forms import beta_to_noise_ratio, constant_noise_gain
from kalman_optim.noise_models import INNOVATION_MODELS, extrapolated, transport
from kalman_optim.schedules import moment_coefficients, second_moment_coefficients, state_noise_bias

#: The modes of D8 (Adam's gain, the optimizer's step as a control input): mode -> module with `step`/`step_foreach`.
D8_MODELS = {"transport": transport, "extrapolated": extrapolated}

#: State key of KalmanLAMB's precision_mean="previous": each tensor's layer mean of P from its last step (0-dim).
PREVIOUS_MEAN_KEY = "layer_mean_variance"

__all__ = ["AdaptiveNoiseConfig", "adaptive_noise_estimates", "kalman_adam", "observation_noise_from_moments",
           "start_up_active"]


@dataclass(frozen=True)
class AdaptiveNoiseConfig:
    """Settings of the per-coordinate noise estimator (mode "adaptive", D4).

    noise_beta: EWMA coefficient of the difference statistics; beta_min, beta_max: the range the
    per-coordinate EWMA coefficient (hence the gain 1 - beta) is clipped to; prior_beta: the coefficient
    assumed before the statistics carry information (the user's beta1).
    """

    noise_beta: float
    beta_min: float
    beta_max: float
    prior_beta: float

    @property
    def noise_ratio_bounds(self) -> tuple[float, float]:
        return float(beta_to_noise_ratio(self.beta_max)), float(beta_to_noise_ratio(self.beta_min))


def adaptive_noise_estimates(
    diff_sq_avg: Tensor, diff_lag_avg: Tensor, step: int, config: AdaptiveNoiseConfig
) -> tuple[Tensor, Tensor]:
    """Per-coordinate Kalman gain k_t and observation-noise estimate r_hat at `step` (D4), no mutation.

    With c0 = EWMA of d_t^2 over step - 1 samples and c1 = EWMA of d_t d_{t-1} over step - 2 samples
    (both bias-corrected): r_hat = max(-c1, 0), q_hat = max(c0 + 2 c1, 0), lambda_hat = q_hat / r_hat
    clipped to the beta range. lambda_hat is blended with the prior ratio lambda(prior_beta) by the
    statistics' weight w = 1 - noise_beta^(step - 2), so the first steps behave like mode "constant".
    The gain is the constant-noise filter's closed form from a diffuse prior at that ratio (D1).
    """
    lam_prior, lam_min, lam_max = _adaptive_constants(config)
    dtype = diff_sq_avg.dtype
    n_sq, n_lag = step - 1, step - 2
    if n_lag <= 0:
        # No lag statistics yet: the prior ratio; with one difference, Var(d) = q + 2r gives r.
        gain = torch.full_like(diff_sq_avg, float(constant_noise_gain(config.prior_beta, step)))
        if n_sq <= 0:
            return gain, torch.zeros_like(diff_sq_avg)
        return gain, diff_sq_avg / ((1 - config.noise_beta**n_sq) * (2 + lam_prior))
    # In-place on fresh temporaries: the estimator is elementwise and memory-bound.
    c1 = diff_lag_avg / (1 - config.noise_beta**n_lag)
    r_hat = c1.neg().clamp_min_(0)
    ratio = (diff_sq_avg / (1 - config.noise_beta**n_sq)).add_(c1, alpha=2).clamp_min_(0)  # q_hat
    ratio.div_(r_hat.clamp_min(torch.finfo(dtype).tiny)).clamp_(lam_min, lam_max)
    weight = 1 - config.noise_beta**n_lag
    ratio.mul_(weight).add_((1 - weight) * lam_prior)
    # 1 - beta(lambda) = 2 sqrt(lambda) / (sqrt(lambda) + sqrt(lambda + 4)) (D1's beta = 4 / (...)^2, rewritten without
    # the cancellation of 1 - beta: in float32, beta = 0.999 carries a relative error of 6e-5 into 1 - beta).
    root = ratio.sqrt()
    gain = root.mul(2).div_(root.add_(ratio.add_(4).sqrt_()))
    # k_t = (1 - beta)(1 + beta^(2t-1)) / (1 - beta^(2t)) (D1, diffuse prior), skipped once the factor is exactly 1.
    if start_up_active(config, step, dtype):
        # With h = tanh(t log beta): beta^(2t) = (1 + h) / (1 - h), so the factor is ((1 - h) beta + 1 + h) / (-2 h beta):
        # one log1p and one tanh, free of cancellation (no 1 - beta^(2t), no expm1, whose float32 version in inductor
        # is exp - 1 and loses up to 4% for small arguments), and the same formula on the fused path.
        beta = gain.neg().add_(1)
        half = torch.tanh(torch.log1p(gain.neg()).mul_(step))
        start_up = half.neg().add_(1).mul_(beta).add_(half).add_(1).div_(half.mul(-2).mul_(beta))
        gain.mul_(start_up)
    return gain, r_hat


def start_up_active(config: AdaptiveNoiseConfig, step: int, dtype: torch.dtype) -> bool:
    """Whether mode "adaptive"'s start-up factor (D1) can differ from 1 at `step`: beta^(2t-1) is still above the
    float resolution for the largest possible beta (from step ~7,970 in float32 at beta_range[1] = 0.999 it is not).
    The fused path compiles a second kernel without the factor for the steps after it (its log1p and tanh per
    element cost about as much as the rest of the step)."""
    return max(config.beta_max, config.prior_beta) ** (2 * step - 1) >= torch.finfo(dtype).eps


@functools.lru_cache(maxsize=64)
def _adaptive_constants(config: AdaptiveNoiseConfig) -> tuple[float, float, float]:
    """(lambda(prior_beta), lambda_min, lambda_max), computed once per configuration."""
    lam_min, lam_max = config.noise_ratio_bounds
    return float(beta_to_noise_ratio(config.prior_beta)), lam_min, lam_max


def observation_noise_from_moments(
    mean_sq: Tensor, exp_avg_sq: Tensor, correction2: float, beta1: float, beta2: float
) -> Tensor:
    """Zero-memory estimate of r from the posterior means of g and g^2 (D3): max(v_hat - m_hat^2, 0) / c.

    `mean_sq` is m_hat^2 and v_hat = exp_avg_sq / correction2. Differences below the float resolution of
    v_hat (4 ulps) are rounding, not variance, and are removed (at step 1, v = m^2 in exact arithmetic).
    """
    # v_hat (1 - 4 ulp) - m_hat^2, floored at 0: branch-free (a data-dependent torch.where is slow on CPU).
    eps = torch.finfo(exp_avg_sq.dtype).eps
    excess = exp_avg_sq.mul((1 - 4 * eps) / correction2).sub_(mean_sq).clamp_min_(0)
    return excess.div_(state_noise_bias(beta1, beta2))


def _variance_adapted_direction(exp_avg, exp_avg_sq, correction1, correction2, gain, r_hat, scale, beta1, beta2):
    """exp_avg * m^2 / (m^2 + scale * P), P = gain * r_hat: uncertain coordinates move less (D3).

    Two temporaries, in place: the step is memory-bound. Without r_hat (modes "adam"/"constant") r_hat is
    the zero-memory estimate of `observation_noise_from_moments`.
    """
    mean_sq = exp_avg.div(correction1).square_()
    if r_hat is None:
        variance = observation_noise_from_moments(mean_sq, exp_avg_sq, correction2, beta1, beta2).mul_(scale * gain)
    else:
        variance = r_hat.mul(gain).mul_(scale)
    variance.add_(mean_sq).clamp_min_(torch.finfo(mean_sq.dtype).tiny)
    return mean_sq.div_(variance).mul_(exp_avg)


def kalman_adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    adaptive_states: dict[str, list[Tensor]] | None = None,
    *,
    noise: str,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    decoupled_weight_decay: bool = True,
    maximize: bool = False,
    prior_gain: float | None = None,
    variance_adaptation: bool = False,
    adaptation_scale: float = 1.0,
    adaptive_config: AdaptiveNoiseConfig | None = None,
    foreach: bool = False,
) -> None:
    """One KalmanAdam step on lists of tensors; `steps[i]` is tensor i's step count after this step (>= 1).

    `adaptive_states` (mode "adaptive" only) holds lists "prev_grad", "prev_diff", "diff_sq_avg",
    "diff_lag_avg". All tensors of one index share shape, device and dtype (float32 or float64).
    """
    _check_model_states(noise, adaptive_states, adaptive_config)
    if noise in D8_MODELS:
        if variance_adaptation:
            raise ValueError(f"noise={noise!r} keeps no noise statistic: variance_adaptation needs noise='innovation'")
        # D8: one pure per-tensor step on the reference path; the foreach path batches each step count's tensors.
        options = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                       decoupled_weight_decay=decoupled_weight_decay)
        if noise == "transport":
            options["noise_beta"] = adaptive_config.noise_beta
        model = D8_MODELS[noise]
        if foreach and not any(is_dtensor(p) for p in params):
            grads = grads if not maximize else torch._foreach_neg(grads)
            for (_, _, step), index in _group_by_step(steps, params).items():
                model.step_foreach(
                    [params[i] for i in index], [grads[i] for i in index], [exp_avgs[i] for i in index],
                    [exp_avg_sqs[i] for i in index], {key: [values[i] for i in index] for key, values in adaptive_states.items()},
                    step, **options)
            return
        for i, param in enumerate(params):
            model.step(param, grads[i] if not maximize else -grads[i], exp_avgs[i], exp_avg_sqs[i],
                       {key: values[i] for key, values in adaptive_states.items()}, steps[i], **options)
        return
    fn = _multi_tensor_kalman_adam if foreach else _single_tensor_kalman_adam
    fn(
        params, grads, exp_avgs, exp_avg_sqs, steps, adaptive_states,
        noise=noise, beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps,
        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize, prior_gain=prior_gain,
        variance_adaptation=variance_adaptation, adaptation_scale=adaptation_scale,
        adaptive_config=adaptive_config,
    )


def _check_model_states(noise, states, config) -> None:
    if noise == "adaptive" and (states is None or config is None):
        raise ValueError("noise='adaptive' needs adaptive_states and adaptive_config")
    if noise == "extrapolated" and states is None:
        raise ValueError("noise='extrapolated' needs adaptive_states (its iterate)")
    if (noise in INNOVATION_MODELS or noise == "transport") and (states is None or config is None):
        raise ValueError(f"noise={noise!r} needs adaptive_states (its statistics) and adaptive_config (noise_beta)")


def _single_tensor_kalman_adam(
    params, grads, exp_avgs, exp_avg_sqs, steps, adaptive_states, *, noise, beta1, beta2, lr, weight_decay,
    eps, decoupled_weight_decay, maximize, prior_gain, variance_adaptation, adaptation_scale, adaptive_config,
):
    for i, param in enumerate(params):
        grad = grads[i] if not maximize else -grads[i]
        exp_avg, exp_avg_sq, step = exp_avgs[i], exp_avg_sqs[i], steps[i]

        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)

        correction1, correction2, gain, r_hat = _single_tensor_moments(
            grad, exp_avg, exp_avg_sq, step, adaptive_states and {k: v[i] for k, v in adaptive_states.items()},
            noise=noise, beta1=beta1, beta2=beta2, prior_gain=prior_gain, adaptive_config=adaptive_config,
            posterior=variance_adaptation,
        )
        step_size = lr / correction1
        correction2_sqrt = correction2**0.5
        denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(eps)

        direction = exp_avg
        # No estimate yet (mode "innovation" at step 1): every coordinate counts alike, as in Adam.
        if variance_adaptation and not (noise in INNOVATION_MODELS and r_hat is None):
            direction = _variance_adapted_direction(
                exp_avg, exp_avg_sq, correction1, correction2, gain, r_hat, adaptation_scale, beta1, beta2
            )
        param.addcdiv_(direction, denom, value=-step_size)


def _single_tensor_moments(grad, exp_avg, exp_avg_sq, step, adaptive_state, *, noise, beta1, beta2, prior_gain,
                           adaptive_config, posterior=True):
    """Update both moment filters in place; return (correction1, correction2, gain, r_hat or None).

    Posterior means are exp_avg / correction1 and exp_avg_sq / correction2; `gain` is the first moment's
    normalized posterior variance (a float, or a tensor in mode "adaptive", which also returns r_hat).
    `posterior=False` (no variance adaptation or precision weighting) skips mode "innovation"'s read-out.
    """
    second = second_moment_coefficients(noise, beta2, step, prior_gain)
    if noise == "adaptive":
        gain, r_hat = _single_tensor_adaptive_update(grad, adaptive_state, step, adaptive_config)
        exp_avg.lerp_(grad, gain)
        correction1 = 1.0
    elif noise in INNOVATION_MODELS:
        model = INNOVATION_MODELS[noise]
        # D7: Adam's filter; its innovation against the prediction m_hat_{t-1} feeds the uncertainty. The
        # posterior variance is returned as r_hat with gain 1, so that P = gain * r_hat everywhere.
        first = moment_coefficients("adam", beta1, step, None)
        if step >= 2:
            model.observe(grad, exp_avg / (1 - beta1 ** (step - 1)), adaptive_state, step, beta1, adaptive_config.noise_beta)
        exp_avg.lerp_(grad, first.weight)
        correction1, gain = first.correction, 1.0
        r_hat = model.posterior_variance(adaptive_state, step, beta1, adaptive_config.noise_beta) if posterior else None
    else:
        first = moment_coefficients(noise, beta1, step, prior_gain)
        exp_avg.lerp_(grad, first.weight)
        correction1, gain, r_hat = first.correction, first.gain, None
    exp_avg_sq.mul_(second.decay).addcmul_(grad, grad, value=second.weight)
    return correction1, second.correction, gain, r_hat


def _single_tensor_adaptive_update(grad, state, step, config):
    """Update the difference statistics with this gradient and return (gain, r_hat) (D4)."""
    if step >= 2:
        diff = grad - state["prev_grad"]
        state["diff_sq_avg"].mul_(config.noise_beta).addcmul_(diff, diff, value=1 - config.noise_beta)
        if step >= 3:
            state["diff_lag_avg"].mul_(config.noise_beta).addcmul_(diff, state["prev_diff"], value=1 - config.noise_beta)
        state["prev_diff"].copy_(diff)
    state["prev_grad"].copy_(grad)
    return adaptive_noise_estimates(state["diff_sq_avg"], state["diff_lag_avg"], step, config)


def _group_by_step(steps: list[int], params: list[Tensor]) -> dict[tuple, list[int]]:
    """Indices of tensors sharing (device, dtype, step): each bucket is one set of foreach calls."""
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, (param, step) in enumerate(zip(params, steps)):
        buckets[(param.device, param.dtype, step)].append(i)
    return buckets


def _multi_tensor_kalman_adam(
    params, grads, exp_avgs, exp_avg_sqs, steps, adaptive_states, *, noise, beta1, beta2, lr, weight_decay,
    eps, decoupled_weight_decay, maximize, prior_gain, variance_adaptation, adaptation_scale, adaptive_config,
):
    for (_, _, step), index in _group_by_step(steps, params).items():
        b_params = [params[i] for i in index]
        b_grads = [grads[i] for i in index]
        b_avgs = [exp_avgs[i] for i in index]
        b_sqs = [exp_avg_sqs[i] for i in index]

        if maximize:
            b_grads = torch._foreach_neg(b_grads)
        if weight_decay != 0:
            if decoupled_weight_decay:
                torch._foreach_mul_(b_params, 1 - lr * weight_decay)
            else:
                b_grads = torch._foreach_add(b_grads, b_params, alpha=weight_decay)

        correction1, correction2, gains, r_hats = _multi_tensor_moments(
            b_grads, b_avgs, b_sqs, step, adaptive_states and {k: [v[i] for i in index] for k, v in adaptive_states.items()},
            noise=noise, beta1=beta1, beta2=beta2, prior_gain=prior_gain, adaptive_config=adaptive_config,
            posterior=variance_adaptation,
        )
        step_size = -(lr / correction1)
        denom = torch._foreach_sqrt(b_sqs)
        torch._foreach_div_(denom, correction2**0.5)
        torch._foreach_add_(denom, eps)

        directions = b_avgs
        if variance_adaptation and not (noise in INNOVATION_MODELS and r_hats is None):
            # Same arithmetic, in the same order, as `_variance_adapted_direction`.
            means_sq = torch._foreach_div(b_avgs, correction1)
            torch._foreach_mul_(means_sq, means_sq)
            if r_hats is None:
                # `observation_noise_from_moments` on lists, then P = k_t r_hat.
                eps = torch.finfo(b_sqs[0].dtype).eps
                variances = torch._foreach_mul(b_sqs, (1 - 4 * eps) / correction2)
                torch._foreach_sub_(variances, means_sq)
                torch._foreach_clamp_min_(variances, 0.0)
                torch._foreach_div_(variances, state_noise_bias(beta1, beta2))
                torch._foreach_mul_(variances, adaptation_scale * gains)
            else:
                variances = torch._foreach_mul(r_hats, gains)
                torch._foreach_mul_(variances, adaptation_scale)
            torch._foreach_add_(variances, means_sq)
            torch._foreach_clamp_min_(variances, torch.finfo(b_params[0].dtype).tiny)
            torch._foreach_div_(means_sq, variances)
            torch._foreach_mul_(means_sq, b_avgs)
            directions = means_sq
        torch._foreach_addcdiv_(b_params, directions, denom, step_size)


def _multi_tensor_moments(grads, exp_avgs, exp_avg_sqs, step, adaptive_state, *, noise, beta1, beta2, prior_gain,
                          adaptive_config, posterior=True):
    """Foreach version of `_single_tensor_moments` (gains: a float, or a list of tensors in "adaptive")."""
    second = second_moment_coefficients(noise, beta2, step, prior_gain)
    if noise == "adaptive":
        gains, r_hats = _multi_tensor_adaptive_update(grads, adaptive_state, step, adaptive_config)
        torch._foreach_lerp_(exp_avgs, grads, gains)
        correction1 = 1.0
    elif noise in INNOVATION_MODELS:
        model = INNOVATION_MODELS[noise]
        first = moment_coefficients("adam", beta1, step, None)
        if step >= 2:
            predictions = torch._foreach_div(exp_avgs, 1 - beta1 ** (step - 1))
            model.observe_foreach(grads, predictions, adaptive_state, step, beta1, adaptive_config.noise_beta)
        torch._foreach_lerp_(exp_avgs, grads, first.weight)
        correction1, gains = first.correction, 1.0
        r_hats = None
        if posterior:
            r_hats = model.posterior_variance_foreach(adaptive_state, step, beta1, adaptive_config.noise_beta)
    else:
        first = moment_coefficients(noise, beta1, step, prior_gain)
        torch._foreach_lerp_(exp_avgs, grads, first.weight)
        correction1, gains, r_hats = first.correction, first.gain, None
    torch._foreach_mul_(exp_avg_sqs, second.decay)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, second.weight)
    return correction1, second.correction, gains, r_hats


def _copy_all(destinations: list[Tensor], sources: list[Tensor]) -> None:
    """torch._foreach_copy_, or one copy_ per tensor for tensor subclasses: DTensor (FSDP2 parameters'
    state) has no sharding strategy for aten._foreach_copy_ (torch 2.13), while its copy_ works."""
    if all(type(t) is Tensor for t in destinations):
        torch._foreach_copy_(destinations, sources)
    else:
        for destination, source in zip(destinations, sources):
            destination.copy_(source)


def _multi_tensor_adaptive_update(grads, state, step, config):
    """Foreach version of `_single_tensor_adaptive_update`."""
    if step >= 2:
        diffs = torch._foreach_sub(grads, state["prev_grad"])
        torch._foreach_mul_(state["diff_sq_avg"], config.noise_beta)
        torch._foreach_addcmul_(state["diff_sq_avg"], diffs, diffs, 1 - config.noise_beta)
        if step >= 3:
            torch._foreach_mul_(state["diff_lag_avg"], config.noise_beta)
            torch._foreach_addcmul_(state["diff_lag_avg"], diffs, state["prev_diff"], 1 - config.noise_beta)
        _copy_all(state["prev_diff"], diffs)
    _copy_all(state["prev_grad"], grads)
    return adaptive_noise_estimates_foreach(state["diff_sq_avg"], state["diff_lag_avg"], step, config)


def adaptive_noise_estimates_foreach(
    diff_sq_avgs: list[Tensor], diff_lag_avgs: list[Tensor], step: int, config: AdaptiveNoiseConfig
) -> tuple[list[Tensor], list[Tensor]]:
    """`adaptive_noise_estimates` on lists, op for op (a chain of foreach calls: on a small model the eager step
    costs kernel calls, ~20 per tensor in a per-tensor loop)."""
    n_sq, n_lag = step - 1, step - 2
    if n_lag <= 0 or any(is_dtensor(t) for t in diff_sq_avgs):
        estimates = [adaptive_noise_estimates(sq, lag, step, config) for sq, lag in zip(diff_sq_avgs, diff_lag_avgs)]
        return [gain for gain, _ in estimates], [r for _, r in estimates]
    lam_prior, lam_min, lam_max = _adaptive_constants(config)
    dtype = diff_sq_avgs[0].dtype
    c1 = torch._foreach_div(diff_lag_avgs, 1 - config.noise_beta**n_lag)
    r_hats = torch._foreach_neg(c1)
    torch._foreach_clamp_min_(r_hats, 0)
    ratios = torch._foreach_div(diff_sq_avgs, 1 - config.noise_beta**n_sq)
    torch._foreach_add_(ratios, c1, alpha=2)
    torch._foreach_clamp_min_(ratios, 0)
    torch._foreach_div_(ratios, torch._foreach_clamp_min(r_hats, torch.finfo(dtype).tiny))
    torch._foreach_clamp_min_(ratios, lam_min)
    torch._foreach_clamp_max_(ratios, lam_max)
    weight = 1 - config.noise_beta**n_lag
    torch._foreach_mul_(ratios, weight)
    torch._foreach_add_(ratios, (1 - weight) * lam_prior)
    roots = torch._foreach_sqrt(ratios)
    gains = torch._foreach_mul(roots, 2)
    torch._foreach_add_(ratios, 4)
    torch._foreach_sqrt_(ratios)
    torch._foreach_add_(roots, ratios)
    torch._foreach_div_(gains, roots)
    if start_up_active(config, step, dtype):
        betas = torch._foreach_neg(gains)
        torch._foreach_add_(betas, 1)
        halves = torch._foreach_neg(gains)
        torch._foreach_log1p_(halves)
        torch._foreach_mul_(halves, step)
        halves = torch._foreach_tanh(halves)
        factors = torch._foreach_neg(halves)
        torch._foreach_add_(factors, 1)
        torch._foreach_mul_(factors, betas)
        torch._foreach_add_(factors, halves)
        torch._foreach_add_(factors, 1)
        denominators = torch._foreach_mul(halves, -2)
        torch._foreach_mul_(denominators, betas)
        torch._foreach_div_(factors, denominators)
        torch._foreach_mul_(gains, factors)
    return list(gains), list(r_hats)


def precision_weighted_norm(update: Tensor, variance: Tensor, floor: float, mean: Tensor | None = None) -> Tensor:
    """sqrt(n * sum(pi u^2) / sum(pi)) with pi = 1 / (P / mean(P) + floor) (D5).

    Equal variances give the plain norm ||u||; a coordinate with a larger posterior variance P_i counts
    less. Weights are scale-free (only P_i / mean(P) matters, D5) and bounded by 1 / floor, so the sums
    cannot overflow; all P_i = 0 (e.g. at step 1) gives equal weights, i.e. LAMB. `mean` replaces mean(P), e.g.
    by the previous step's layer mean (KalmanLAMB's precision_mean="previous"); mean <= 0 gives equal weights.
    """
    mean = variance.mean() if mean is None else mean
    if torch.is_tensor(mean):
        relative = torch.where(mean > 0, variance / mean, torch.zeros_like(variance))
    else:  # a plain number (the previous mean of a DTensor layer)
        relative = variance / mean if mean > 0 else torch.zeros_like(variance)
    weights = (relative + floor).reciprocal_()
    weighted = (weights * update.square()).sum() / weights.sum()
    return (weighted * update.numel()).sqrt()


def _plain_scalar(value: Tensor, like: Tensor) -> Tensor | float:
    """A 0-dim state tensor in a form that mixes with `like` (a DTensor does not mix with a plain tensor)."""
    return value.item() if is_dtensor(like) else value


def _local_scalar(value: Tensor) -> Tensor:
    """The value of a 0-dim (possibly DTensor) reduction as a plain tensor, for a plain 0-dim state."""
    return value.full_tensor() if is_dtensor(value) else value


def lamb_trust_ratio(param_norm: Tensor, update_norm: Tensor, trust_clip: float | None) -> Tensor:
    """||w|| / ||u||, and 1 when either norm is 0 (as common LAMB implementations do); optionally clipped."""
    ratio = torch.where((param_norm > 0) & (update_norm > 0), param_norm / update_norm, torch.ones_like(param_norm))
    return ratio if trust_clip is None else ratio.clamp_max(trust_clip)


def _lamb_apply_foreach(params: list[Tensor], updates: list[Tensor], variances: list[Tensor] | None,
                        previous_means: list[Tensor] | None, *, lr: float, precision_floor: float,
                        trust_clip: float | None) -> None:
    """LAMB's per-tensor tail for a bucket of plain tensors, batched: the norms and D5's weighted sums as foreach
    reductions, the trust ratios as one vector, the update as one foreach call (mutates params, updates and the
    stored previous means). The same arithmetic as the per-tensor loop of kalman_lamb: precision_weighted_norm with
    the layer mean of P (this step's, or the stored `previous_means`; <= 0 gives equal weights), and
    lamb_trust_ratio; `variances` None = the plain norm (and a stored mean is reset to 0)."""
    param_norms = torch.stack(torch._foreach_norm(params))
    numels = torch.tensor([float(u.numel()) for u in updates], dtype=param_norms.dtype, device=param_norms.device)
    if variances is None:
        update_norms = torch.stack(torch._foreach_norm(updates))
        if previous_means is not None:
            torch._foreach_zero_(previous_means)  # no posterior this step: the next one weighs equally
    else:
        # P >= 0, so its sum is its 1-norm: per-tensor sums in one call.
        current = torch.stack(torch._foreach_norm(variances, 1)) / numels
        means = current if previous_means is None else torch.stack(previous_means).reshape(-1).to(current.dtype)
        inverse = torch.where(means > 0, means.clamp_min(torch.finfo(means.dtype).tiny).reciprocal(),
                              torch.zeros_like(means))
        weights = torch._foreach_mul(variances, list(inverse.unbind()))
        torch._foreach_add_(weights, precision_floor)
        torch._foreach_reciprocal_(weights)
        weighted = torch._foreach_mul(updates, updates)
        torch._foreach_mul_(weighted, weights)
        weighted_sums = torch.stack(torch._foreach_norm(weighted, 1))
        weight_sums = torch.stack(torch._foreach_norm(weights, 1))
        update_norms = (weighted_sums / weight_sums * numels).sqrt()
        if previous_means is not None:
            torch._foreach_copy_(previous_means, [m.reshape(p.shape) for m, p in zip(current.unbind(), previous_means)])
    ratios = lamb_trust_ratio(param_norms, update_norms, trust_clip)
    torch._foreach_mul_(updates, list(ratios.unbind()))
    torch._foreach_add_(params, updates, alpha=-lr)


def kalman_lamb(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    steps: list[int],
    adaptive_states: dict[str, list[Tensor]] | None = None,
    *,
    noise: str,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
    eps: float,
    maximize: bool = False,
    prior_gain: float | None = None,
    precision_weighting: bool = True,
    precision_floor: float = 0.01,
    trust_clip: float | None = None,
    adaptive_config: AdaptiveNoiseConfig | None = None,
    foreach: bool = False,
) -> None:
    r"""One KalmanLAMB step (You et al. 2020, Algorithm 2, on Kalman moments; D5).

    Per tensor (layer): u = m_hat / (sqrt(v_hat) + eps) + wd * p, then p <- p - lr * (||p|| / N(u)) * u,
    with N(u) = ||u|| (LAMB) or the precision-weighted norm (precision_weighting=True) that discounts
    coordinates whose gradient estimate has a large posterior variance P = k_t r_hat. On DTensor (FSDP2)
    parameters the sums run over the whole layer, not the local shard. With `adaptive_states` holding
    PREVIOUS_MEAN_KEY (one 0-dim tensor per parameter), the weights divide by that stored layer mean of P (the
    previous step's; <= 0 gives equal weights) and it is overwritten with this step's: the mean no longer needs
    its own pass over the data before the weighted sums.
    """
    model_states = dict(adaptive_states or {})
    # precision_mean="previous": each tensor's layer mean of P from the last step (read, then overwritten).
    previous_means = model_states.pop(PREVIOUS_MEAN_KEY, None)
    adaptive_states = model_states or None
    _check_model_states(noise, adaptive_states, adaptive_config)
    if foreach:
        buckets = _group_by_step(steps, params).items()
    else:
        buckets = (((p.device, p.dtype, s), [i]) for i, (p, s) in enumerate(zip(params, steps)))
    for (_, _, step), index in buckets:
        b_params = [params[i] for i in index]
        b_grads = [grads[i] if not maximize else -grads[i] for i in index]
        b_avgs = [exp_avgs[i] for i in index]
        b_sqs = [exp_avg_sqs[i] for i in index]
        b_state = adaptive_states and {k: [v[i] for i in index] for k, v in adaptive_states.items()}
        b_previous = None if previous_means is None else [previous_means[i] for i in index]
        common = dict(noise=noise, beta1=beta1, beta2=beta2, prior_gain=prior_gain, adaptive_config=adaptive_config,
                      posterior=precision_weighting)
        if foreach:
            correction1, correction2, gains, r_hats = _multi_tensor_moments(b_grads, b_avgs, b_sqs, step, b_state, **common)
            means = torch._foreach_div(b_avgs, correction1)
            denoms = torch._foreach_sqrt(torch._foreach_div(b_sqs, correction2))
            torch._foreach_add_(denoms, eps)
            updates = torch._foreach_div(means, denoms)
            if weight_decay != 0:
                torch._foreach_add_(updates, b_params, alpha=weight_decay)
        else:
            single = [
                _single_tensor_moments(g, m, v, step, b_state and {k: x[j] for k, x in b_state.items()}, **common)
                for j, (g, m, v) in enumerate(zip(b_grads, b_avgs, b_sqs))
            ]
            correction1, correction2, gains, r_hats = single[0]
            r_hats = None if r_hats is None else [s[3] for s in single]
            gains = gains if noise != "adaptive" else [s[2] for s in single]
            means = [m / correction1 for m in b_avgs]
            updates = [mean / ((v / correction2).sqrt() + eps) for mean, v in zip(means, b_sqs)]
            if weight_decay != 0:
                updates = [u.add(p, alpha=weight_decay) for u, p in zip(updates, b_params)]
        batched = foreach and not any(is_dtensor(p) for p in b_params)
        # D5's posterior variances P = k_t r_hat; mode "innovation" has no estimate at step 1: plain LAMB norm there.
        variances = None
        if precision_weighting and not (noise in INNOVATION_MODELS and r_hats is None):
            if r_hats is None:
                r_hats = [observation_noise_from_moments(m.square(), v, correction2, beta1, beta2)
                          for m, v in zip(means, b_sqs)]
            variances = (torch._foreach_mul(r_hats, gains) if batched else  # gains: a float, or one per tensor
                         [(gains[j] if isinstance(gains, list) else gains) * r for j, r in enumerate(r_hats)])
        if batched:
            _lamb_apply_foreach(b_params, updates, variances, b_previous, lr=lr, precision_floor=precision_floor,
                                trust_clip=trust_clip)
            continue
        for j, (param, update) in enumerate(zip(b_params, updates)):
            param_norm = torch.linalg.vector_norm(param)
            if variances is not None:
                variance = variances[j]
                if b_previous is None:
                    update_norm = precision_weighted_norm(update, variance, precision_floor)
                else:
                    update_norm = precision_weighted_norm(update, variance, precision_floor,
                                                          mean=_plain_scalar(b_previous[j], variance))
                    b_previous[j].copy_(_local_scalar(variance.mean()))
            else:
                update_norm = torch.linalg.vector_norm(update)
                if b_previous is not None:
                    b_previous[j].zero_()  # no posterior this step: the next one weighs equally
            ratio = lamb_trust_ratio(param_norm, update_norm, trust_clip)
            param.add_(update * ratio, alpha=-lr)
