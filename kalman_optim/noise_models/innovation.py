r"""Noise model "innovation" (D7): the posterior variance of the first moment from its own innovations.

The first moment is Adam's (its gain k_t = (1 - beta1) / (1 - beta1^t) is the diffuse-prior Kalman gain, D2),
so the step is AdamW's. What changes is the read-out of the uncertainty. With the innovation
nu_t = g_t - m_hat_{t-1} (the prediction error of the filter before it sees g_t), for ANY gain sequence and
ANY drift of the level (random walk, trend, the optimizer's own steps), as long as the observation noise is
white (D7, exact):

    E_t = E[(x_t - m_hat_t)^2] = (1 - k_t)^2 S_t - (1 - 2 k_t) r,      S_t = E[nu_t^2],
    r   = -E[nu_{t-1} d_t],     d_t = g_t - g_{t-1} = nu_t - (1 - k_{t-1}) nu_{t-1}   (random-walk drift).

State: per coordinate R = EWMA (coefficient `noise_beta`) of the standardized squared innovation
(1 - k_t) nu_t^2, which is r when the filter's own model holds (D3: Var nu_t = r / (1 - k_t)) and
(1 - k_t) S_t in general. Per tensor, the scale-free ratio phi = r / R from the lag-1 statistic pooled over a
fixed strided sample of at most SAMPLE_SIZE coordinates, each weighted by 1 / R (only their previous innovation is
stored), with a long memory (LAG_BETA): a single
coordinate's lag-1 estimate is far too noisy (D7), a pooled one is precise. phi is pulled to 1 (the filter's
own model) by PRIOR_COUNT pseudo-samples, so a tensor of a few coordinates reads out k_t R. Then

    P_t = R_hat [(1 - k_t)(1 - phi) + k_t phi] = (1 - k_t) R_hat - (1 - 2 k_t) phi R_hat,   phi in [0, 1/(1 - k_t)],

which is >= R_hat min(k_t, 1 - k_t)^2 / (1 - k_t) > 0 (D7): zero only for a constant series. R_hat has effective sample size
n_eff = (1 - b^n)^2 (1 + b) / ((1 - b)(1 - b^(2n))) (b = noise_beta, n innovations), so intervals use the
Student-t quantile with n_eff degrees of freedom (D7). Memory: 4 B per fp32 parameter beyond Adam's 8 B, plus
at most SAMPLE_SIZE + 2 floats per tensor.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from kalman_optim._validation import is_dtensor
from kalman_optim.schedules import adam_coefficients, ewma_effective_samples, student_t_quantile

STATE_KEYS = ("innovation_sq_avg", "lag_prev", "lag_num", "lag_den")
#: Coordinates per tensor whose previous innovation is kept for the pooled lag-1 statistic.
SAMPLE_SIZE = 1024
#: Pseudo-samples of phi = 1 (the filter's own model); a pooled sample of >= 1e4 innovations outweighs it.
PRIOR_COUNT = 1000.0
#: Pseudo-coordinates of phi = 1 observed alongside the tensor's sample: a second prior term PRIOR_COORDINATES x the
#: lag steps' effective count, whose weight C / (C + sampled coordinates) does not decay with time (a one-coordinate
#: tensor then keeps the filter's model). 0 in the library: E7's prior sweep measures what it trades.
PRIOR_COORDINATES = 0.0
#: EWMA coefficient of the pooled lag-1 statistic: phi is a slowly varying property of the tensor, and a short
#: memory lets one outlying mini-batch swing it (measured on Fashion-MNIST at lr = 0: 95% coverage 0.91 with
#: the noise statistic's 0.99 against 0.95 with 0.999, both with per-coordinate weights).
LAG_BETA = 0.999
#: Innovations in R_hat before its reciprocal weights the lag statistic (a younger R_hat can be tiny by chance).
MIN_NOISE_SAMPLES = 8


def lag_samples(step: int) -> int:
    """Steps that have entered the pooled lag-1 statistic by `step`: from step MIN_NOISE_SAMPLES + 2 on."""
    return max(0, step - MIN_NOISE_SAMPLES - 1)


def sample_stride(numel: int, size: int | None = None) -> int:
    """Stride of the fixed sample: every stride-th coordinate of the flattened tensor (<= `size` of them,
    SAMPLE_SIZE by default)."""
    return max(1, -(-numel // (SAMPLE_SIZE if size is None else size)))


def sample_count(numel: int, size: int | None = None) -> int:
    """Number of sampled coordinates of a tensor with `numel` elements (over all shards)."""
    return -(-numel // sample_stride(numel, size))


def sample_of(tensor: Tensor, size: int | None = None) -> Tensor:
    """The sampled coordinates of `tensor` (flattened, strided; a view when contiguous). For a DTensor sharded
    along dim 0 (FSDP2), this rank's part of the same global sample, as a plain tensor."""
    stride = sample_stride(tensor.numel(), size)
    if not is_dtensor(tensor):
        return tensor.reshape(-1)[::stride]
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if any(not isinstance(p, (Shard, Replicate)) or (isinstance(p, Shard) and p.dim != 0) for p in tensor.placements):
        raise NotImplementedError(f"noise='innovation' supports DTensors sharded along dim 0 (FSDP2) or replicated, "
                                  f"got placements {tensor.placements}")
    _, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    flat_offset = offset[0] * math.prod(tensor.shape[1:]) if tensor.dim() else 0
    return tensor.to_local().reshape(-1)[(-flat_offset) % stride :: stride]


def _global_sum_(value: Tensor, like: Tensor) -> Tensor:
    """Sum a per-shard partial sum over the shards of `like` (a no-op for plain tensors)."""
    if is_dtensor(like):
        import torch.distributed as dist
        from torch.distributed.tensor import Shard

        for dim, placement in enumerate(like.placements):
            if isinstance(placement, Shard):
                dist.all_reduce(value, group=like.device_mesh.get_group(dim))
    return value


def init_state(exp_avg: Tensor) -> dict[str, Tensor]:
    """Zero statistics shaped like the parameter (R) and like its (local) sample (previous innovations)."""
    sample = sample_of(exp_avg)
    scalar = torch.zeros((), dtype=sample.dtype, device=sample.device)
    return {
        "innovation_sq_avg": torch.zeros_like(exp_avg, memory_format=torch.preserve_format),
        "lag_prev": torch.zeros_like(sample),
        "lag_num": scalar.clone(),
        "lag_den": scalar.clone(),
    }


def _update_lag(state: dict[str, Tensor], innovation: Tensor, step: int, beta1: float, noise_beta: float) -> None:
    """Pooled lag-1 statistics of the sample, each coordinate weighted by 1 / R_hat_{t-1} (scale-free, so that a
    few large coordinates do not decide phi): EWMAs (coefficient LAG_BETA) of sum(-nu_{t-1} d_t / R) (-> r / R)
    and sum((1 - k_{t-1}) nu_{t-1}^2 / R). Called before R takes in nu_t, so the weights do not depend on it."""
    sample = sample_of(innovation)
    if lag_samples(step) > 0:
        previous, kept = state["lag_prev"], 1 - adam_coefficients(beta1, step - 1).gain
        diff = sample - kept * previous  # d_t = g_t - g_{t-1}, from innovations alone (D7)
        scale = sample_of(state["innovation_sq_avg"]) / -math.expm1((step - 2) * math.log(noise_beta))
        weights = torch.where(scale > 0, scale.clamp_min(torch.finfo(scale.dtype).tiny).reciprocal(),
                              torch.zeros_like(scale))
        weighted = previous * weights
        sums = _global_sum_(torch.stack([torch.dot(weighted, diff), torch.dot(weighted, previous)]), innovation)
        state["lag_num"].mul_(LAG_BETA).add_(sums[0], alpha=-(1 - LAG_BETA))
        state["lag_den"].mul_(LAG_BETA).add_(sums[1], alpha=kept * (1 - LAG_BETA))
    state["lag_prev"].copy_(sample)


def observe(grad: Tensor, prediction: Tensor, state: dict[str, Tensor], step: int, beta1: float, noise_beta: float, *,
            update_lag=None) -> None:
    """Update the statistics with g_t, given the filter's prediction m_hat^-_t of it (before the update).
    `update_lag`: the pooled lag statistic's update (this mode's `_update_lag` by default; mode "fitted" passes its own)."""
    if step < 2:  # the diffuse prior predicts nothing: no innovation at step 1
        return
    innovation = grad - prediction
    (update_lag or _update_lag)(state, innovation, step, beta1, noise_beta)
    weight = (1 - noise_beta) * (1 - adam_coefficients(beta1, step).gain)
    state["innovation_sq_avg"].mul_(noise_beta).addcmul_(innovation, innovation, value=weight)


@functools.lru_cache(maxsize=64)
def segment_ids(sizes: tuple[int, ...], device: torch.device) -> Tensor:
    """Index of the segment (tensor) of each element of the concatenated samples of sizes `sizes`."""
    return torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))


def segment_sums(rows: Tensor, sizes: tuple[int, ...]) -> Tensor:
    """Sums of each row of `rows` (k x sum(sizes)) over consecutive segments of `sizes`: k x len(sizes). One
    kernel for a bucket's per-tensor dot products instead of two small ones per tensor (the eager step of a small
    model is dominated by the number of kernel calls, not by bytes)."""
    return rows.new_zeros(rows.shape[0], len(sizes)).index_add_(1, segment_ids(sizes, rows.device), rows)


def plain_tensors(tensors: list[Tensor]) -> bool:
    """Whether a bucket can be batched across tensors (no DTensor: its samples and sums are per shard)."""
    return not any(is_dtensor(t) for t in tensors)


def _update_lag_batched(states: dict[str, list[Tensor]], innovations: list[Tensor], step: int, beta1: float,
                        noise_beta: float) -> None:
    """`_update_lag` for a bucket of plain tensors at once: the samples concatenated, the per-tensor sums of
    `_update_lag` as segment sums, the per-tensor scalars updated by foreach calls (same arithmetic)."""
    samples = [sample_of(innovation) for innovation in innovations]
    if lag_samples(step) > 0:
        sizes = tuple(sample.numel() for sample in samples)
        previous, kept = torch.cat(states["lag_prev"]), 1 - adam_coefficients(beta1, step - 1).gain
        diff = torch.cat(samples) - kept * previous
        scale = torch.cat([sample_of(r) for r in states["innovation_sq_avg"]]) / -math.expm1((step - 2) * math.log(noise_beta))
        weights = torch.where(scale > 0, scale.clamp_min(torch.finfo(scale.dtype).tiny).reciprocal(),
                              torch.zeros_like(scale))
        weighted = previous * weights
        sums = segment_sums(torch.stack([weighted * diff, weighted * previous]), sizes)
        torch._foreach_mul_(states["lag_num"], LAG_BETA)
        torch._foreach_add_(states["lag_num"], list(sums[0].unbind()), alpha=-(1 - LAG_BETA))
        torch._foreach_mul_(states["lag_den"], LAG_BETA)
        torch._foreach_add_(states["lag_den"], list(sums[1].unbind()), alpha=kept * (1 - LAG_BETA))
    torch._foreach_copy_(states["lag_prev"], samples)


def observe_foreach(grads: list[Tensor], predictions: list[Tensor], states: dict[str, list[Tensor]], step: int,
                    beta1: float, noise_beta: float, *, update_lag=None, update_lag_batched=None) -> None:
    """`observe` on lists (one foreach pass over the per-coordinate statistic, then the small samples: batched over
    the tensors when they are plain, one tensor at a time for DTensors). `update_lag`/`update_lag_batched`: another
    mode's lag statistic (mode "fitted")."""
    if step < 2:
        return
    innovations = torch._foreach_sub(grads, predictions)
    if plain_tensors(innovations):
        (update_lag_batched or _update_lag_batched)(states, innovations, step, beta1, noise_beta)
    else:
        for i, innovation in enumerate(innovations):
            (update_lag or _update_lag)({key: values[i] for key, values in states.items()}, innovation, step, beta1,
                                        noise_beta)
    weight = (1 - noise_beta) * (1 - adam_coefficients(beta1, step).gain)
    torch._foreach_mul_(states["innovation_sq_avg"], noise_beta)
    torch._foreach_addcmul_(states["innovation_sq_avg"], innovations, innovations, weight)


def shrunk_lag_ratio(state: dict[str, Tensor], lag_steps: int, sample_size: int | None = None,
                     target: float = 1.0) -> Tensor:
    """The pooled lag statistic lag_num / lag_den (0-dim; `target` before it has data), pulled to `target` (1, the
    filter's own model at steady state; mode "fitted" passes the model's expectation at this step) by `prior_weight`
    pseudo-samples against its effective count: ewma_effective_samples(lag_steps, LAG_BETA) x the sampled coordinates
    (a sample of at most `sample_size` coordinates, SAMPLE_SIZE by default)."""
    steps = ewma_effective_samples(lag_steps, LAG_BETA)
    count = steps * sample_count(state["innovation_sq_avg"].numel(), sample_size)
    den = state["lag_den"]
    measured = torch.where(den > 0, state["lag_num"] / den.clamp_min(torch.finfo(den.dtype).tiny),
                           torch.full_like(den, target))
    prior = prior_weight(steps)
    return (measured * count + prior * target) / (count + prior)


def prior_weight(effective_steps: float | Tensor) -> float | Tensor:
    """Pseudo-samples of phi = 1: PRIOR_COUNT + PRIOR_COORDINATES x the lag statistic's effective steps."""
    return PRIOR_COUNT + PRIOR_COORDINATES * effective_steps if PRIOR_COORDINATES else PRIOR_COUNT


def noise_fraction(state: dict[str, Tensor], step: int, beta1: float, noise_beta: float) -> Tensor:
    """phi = r / R for the tensor (0-dim): the pooled lag-1 estimate, shrunk to 1, clipped to [0, 1 / (1 - k_t)]."""
    phi = shrunk_lag_ratio(state, lag_samples(step))
    return phi.clamp(0.0, 1.0 / (1.0 - adam_coefficients(beta1, step).gain))


def posterior_variance(state: dict[str, Tensor], step: int, beta1: float, noise_beta: float) -> Tensor | None:
    """P_t per coordinate (D7), or None at step 1 (no innovation yet: the diffuse prior's variance is infinite)."""
    count = step - 1
    if count < 1:
        return None
    k = adam_coefficients(beta1, step).gain
    phi = noise_fraction(state, step, beta1, noise_beta)
    factor = phi.mul(2 * k - 1).add_(1 - k).div_(-math.expm1(count * math.log(noise_beta)))  # (1-k)(1-phi) + k phi
    statistic = state["innovation_sq_avg"]
    # A DTensor does not mix with a plain 0-dim tensor; the scalar is the same on every rank.
    return statistic.mul(factor.item() if is_dtensor(statistic) else factor)


@functools.lru_cache(maxsize=64)
def sample_counts(numels: tuple[int, ...], size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """sample_count of each of `numels` (a sample of at most `size`), as a tensor (cached per bucket layout)."""
    return torch.tensor([sample_count(n, size) for n in numels], dtype=dtype, device=device)


def shrunk_lag_ratios(states: dict[str, list[Tensor]], lag_steps: int, sample_size: int | None = None) -> Tensor:
    """`shrunk_lag_ratio` of every tensor of a bucket of plain tensors, as one vector (same arithmetic)."""
    statistics = states["innovation_sq_avg"]
    size = SAMPLE_SIZE if sample_size is None else sample_size  # resolved before the cache (tests patch SAMPLE_SIZE)
    counts = sample_counts(tuple(r.numel() for r in statistics), size, statistics[0].dtype, statistics[0].device)
    steps = ewma_effective_samples(lag_steps, LAG_BETA)
    counts = counts * steps
    num, den = torch.stack(states["lag_num"]), torch.stack(states["lag_den"])
    measured = torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), torch.ones_like(den))
    prior = prior_weight(steps)
    return (measured * counts + prior) / (counts + prior)


def posterior_variance_each(read_out, states: dict[str, list[Tensor]], step: int, beta1: float,
                            noise_beta: float) -> list[Tensor] | None:
    """A mode's per-tensor `read_out` (its posterior_variance) over a bucket, one tensor at a time; None at step 1."""
    variances = [read_out({key: values[i] for key, values in states.items()}, step, beta1, noise_beta)
                 for i in range(len(states["innovation_sq_avg"]))]
    return None if not variances or variances[0] is None else variances


def posterior_variance_foreach(states: dict[str, list[Tensor]], step: int, beta1: float,
                               noise_beta: float) -> list[Tensor] | None:
    """`posterior_variance` of every tensor of a bucket (None at step 1): batched over plain tensors."""
    statistics = states["innovation_sq_avg"]
    if step < 2 or not plain_tensors(statistics):
        return posterior_variance_each(posterior_variance, states, step, beta1, noise_beta)
    k = adam_coefficients(beta1, step).gain
    phi = shrunk_lag_ratios(states, lag_samples(step)).clamp(0.0, 1.0 / (1.0 - k))
    factor = phi.mul(2 * k - 1).add_(1 - k).div_(-math.expm1((step - 1) * math.log(noise_beta)))
    return torch._foreach_mul(statistics, list(factor.unbind()))


def degrees_of_freedom(step: int, noise_beta: float) -> float:
    """Degrees of freedom of the interval: the effective sample size of R_hat (D7)."""
    return ewma_effective_samples(step - 1, noise_beta)


def interval_quantile(state: dict[str, Tensor], step: int, beta1: float, noise_beta: float, level: float) -> float:
    """The multiplier of sqrt(P_t) of a central `level` interval: the Student-t quantile with R_hat's effective
    sample size (D7; `state` is not needed, the signature is the noise models' common one)."""
    return student_t_quantile(level, degrees_of_freedom(step, noise_beta))
