r"""The fused path: each mode's whole per-step update compiled into one kernel pass per tensor.

The update of a bucket of tensors (same device, dtype and step count) is written once more here as a pure
function of tensors, with every per-step scalar (gains, bias corrections, learning rate, the step's phase)
packed into one small tensor `coefficients`. torch.compile/inductor turns it into C++/OpenMP (CPU) or Triton
(CUDA) kernels that read and write each state tensor once. Because the scalars are tensor data, not Python
constants, nothing recompiles as the step count, the learning rate (schedulers, tensor lr) or the gains
change; a kernel is compiled once per optimizer bucket (the first step) and reused.

KalmanLAMB's kernels end in per-tensor reductions (the trust ratio's norms, D5's layer means). Compiled for a whole
bucket, inductor's C++ code fuses the loops of same-sized tensors into one pass over many streams at once, which
measured 2-4x slower than stepping each tensor alone on the 2-core CPU (30 tensors of 1e6: ~65-95 ms against
~22 ms). So on a CPU LAMB calls its kernel once per tensor, each flattened to 1-D, through one graph that dynamo
makes shape-generic when a second length comes (`Job.per_tensor`; a few more for lengths it specializes, such as
1). There the kernel writes the update into a buffer the optimizer keeps (`KernelCache.update_buffer`) and returns
-lr times the trust ratio, and `p.addcmul_(update, -lr * ratio)` takes the second pass: left to inductor, that
pass reads an update buffer its code allocates on every call, and a fresh 4 MB allocation is fresh pages from the
kernel (page faults and zeroing: ~1000 per 1e6-element tensor; results/bench/fused_cpu_ab_deferred has the A/B).
On CUDA each reduction is a Triton kernel of its own either way, and one call per bucket pays dynamo's and the
wrapper's host time once instead of once per tensor (`per_tensor_calls`), and a bucket's step is recorded as a CUDA
graph and replayed (cuda_graphs): the host time of dynamo's guards and inductor's launches is paid once.

The math is the reference path's (functional.py and noise_models/), step for step; tests compare the two
over 1000 steps in every mode. Branches that depend on the step (no innovation at step 1, no lag statistic
before step 3, ...) are tensor selects on 0/1 flags in `coefficients`, so one graph serves every step.
Options that change the structure of the graph (mode, variance adaptation, precision weighting,
maximize, which weight decay) are Python constants of the kernel: changing one compiles a new kernel.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import shutil
import types
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from kalman_optim import cuda_graphs
from kalman_optim.closed_forms import beta_to_noise_ratio, constant_noise_gain
from kalman_optim.functional import PREVIOUS_MEAN_KEY, AdaptiveNoiseConfig, _group_by_step, start_up_active
from kalman_optim.noise_models import INNOVATION_MODELS, extrapolated, fitted, innovation, transport
from kalman_optim.schedules import (
    adam_coefficients,
    ewma_effective_samples,
    moment_coefficients,
    second_moment_coefficients,
    state_noise_bias,
)

__all__ = ["AUTO_MIN_ELEMENTS", "KernelCache", "compiler_available", "fused_kalman_adam", "fused_kalman_lamb"]

#: fused=None compiles a group only from this many elements on: the compile costs seconds once (about 0.4 s per
#: tensor on a 2-core CPU, `make bench` reports it), the eager step of a small group microseconds.
AUTO_MIN_ELEMENTS = 1_000_000
#: Inductor options of every kernel: no per-call size and stride asserts in the wrapper (dynamo's guards already
#: check every input's shape; the asserts cost ~0.3 us per tensor per call, ~35 us per step at 30 parameters).
#: combo_kernels: on CUDA, the loops of a bucket's tensors share Triton launches (a launch per tensor otherwise, each
#: with its host-side cost); inductor ignores it for CPU code.
KERNEL_CONFIG = {"size_asserts": False, "combo_kernels": True}
#: Device types whose buckets replay CUDA graphs of their compiled kernels (cuda_graphs; a KernelCache's
#: `graph_devices` overrides it per param group).
GRAPH_DEVICES = ("cuda",)
#: The key under which a deferred-update LAMB call (CPU) passes its update buffer among the extra state tensors.
UPDATE_BUFFER_KEY = "_update_buffer"
#: `_row_sum`: tensors from this many elements on are summed over the rows of a (rows, n / rows) view, rows the
#: largest divisor of n in ROW_RANGE (an H100 has 132 SMs: a few hundred rows keep them all busy).
ROW_SPLIT_MIN_ELEMENTS = 1 << 16
ROW_RANGE = (128, 1024)
#: Kernels one optimizer compiles at most (buckets x option changes); beyond, it falls back to the eager path.
MAX_KERNELS = 16


# ------------------------------------------------------------------------------------------ availability
@functools.lru_cache(maxsize=8)
def compiler_available(device_type: str) -> bool:
    """Whether inductor can compile for the device: a C++ compiler on CPU, Triton on CUDA."""
    if not torch._dynamo.is_dynamo_supported():
        return False
    if device_type == "cpu":
        return any(shutil.which(name) for name in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if name)
    if device_type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False
        return True
    return False


def fusable(tensors: list[Tensor]) -> bool:
    """Plain CPU/CUDA tensors only (a DTensor's shards take the eager path, which reduces across ranks)."""
    return all(type(t) in _PLAIN_TENSOR_TYPES and (t.is_cpu or t.is_cuda) for t in tensors)


_PLAIN_TENSOR_TYPES = (Tensor, torch.nn.Parameter)


# Each kernel's graphs are cached apart (torch >= 2.12), so many optimizers in one process do not share (and
# exhaust) dynamo's per-function recompile limit.
_ISOLATED = {"isolate_recompiles": True} if "isolate_recompiles" in inspect.signature(torch.compile).parameters else {}


def _bound_with_own_code(function: Callable, flags: dict[str, Any]) -> Callable:
    """`function` with `flags` bound, as a function with a code object of its own. Dynamo caches graphs, and counts
    recompilations against `recompile_limit` (8), per code object (for a functools.partial, that of the one wrapper
    it calls through): without torch.compile's `isolate_recompiles` (torch < 2.12) every kernel of every optimizer
    in a process would share one count, and past it a fullgraph compile fails."""
    def kernel(*args):
        return function(*args, **flags)

    code = kernel.__code__.replace()  # a new code object, with its own dynamo cache
    return types.FunctionType(code, kernel.__globals__, function.__name__, None, kernel.__closure__)


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    """Row-major strides of `shape`, as torch.empty(shape) has them, without allocating (a size-0 dimension counts 1)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


class KernelCache:
    """The compiled kernels of one optimizer, keyed by bucket and structure; counts graph compilations."""

    def __init__(self) -> None:
        self.kernels: dict[tuple, Callable] = {}
        self.compilations = 0
        self.disabled_reason: str | None = None
        self.torch_kernel_devices: tuple[str, ...] = TORCH_KERNEL_DEVICES
        self.graph_devices: tuple[str, ...] = GRAPH_DEVICES
        self.graphs = cuda_graphs.StepGraphs()
        self.stagings: dict[tuple, cuda_graphs.CoefficientStaging] = {}
        self.update_buffers: dict[tuple, Tensor] = {}
        self.state_views: dict[tuple, tuple] = {}  # `_one_element_list`'s

    def update_buffer(self, like: Tensor) -> Tensor:
        """A contiguous tensor of `like`'s shape on storage this cache keeps per device and dtype, grown to the
        largest tensor asked for (LAMB's deferred update; its contents do not outlive a call). Not a view:
        `_flat`'s reason."""
        key = (like.device, like.dtype)
        storage = self.update_buffers.get(key)
        if storage is None or storage.numel() < like.numel():
            storage = self.update_buffers[key] = torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        return storage.new_empty(0).set_(storage.untyped_storage(), 0, like.shape, _contiguous_strides(like.shape))

    def stage(self, key: tuple, values: list[float], dtype: torch.dtype, device: torch.device) -> Tensor:
        """`values` on `device` in the buffer of `key` (a fixed address per bucket, see cuda_graphs)."""
        staging = self.stagings.get(key)
        if staging is None:
            staging = self.stagings[key] = cuda_graphs.CoefficientStaging(values, dtype, device)
        return staging.stage(values)

    def get(self, key: tuple, function: Callable, flags: dict[str, Any],
            dynamic: bool | None = False) -> Callable | None:
        """The compiled `function` for `key` (compiled on first use); None when the fused path is off. `dynamic` is
        torch.compile's: False compiles for the first shapes only; None (automatic) compiles a shape-generic graph
        once a second shape comes (one graph for every tensor of a per-tensor kernel)."""
        if self.disabled_reason is not None:
            return None
        kernel = self.kernels.get(key)
        if kernel is None:
            if len(self.kernels) >= MAX_KERNELS:
                self.disable(f"more than {MAX_KERNELS} distinct buckets or option sets were compiled")
                return None
            kernel = self.kernels[key] = self._compile(function, flags, dynamic)
        return kernel

    def _compile(self, function: Callable, flags: dict[str, Any], dynamic: bool | None) -> Callable:
        def counting_inductor(graph, example_inputs):
            from torch._inductor.compile_fx import compile_fx

            self.compilations += 1
            return compile_fx(graph, example_inputs, config_patches=KERNEL_CONFIG)

        bound = functools.partial(function, **flags) if _ISOLATED else _bound_with_own_code(function, flags)
        return torch.compile(bound, backend=counting_inductor, fullgraph=True, dynamic=dynamic, **_ISOLATED)

    def disable(self, reason: str) -> None:
        if self.disabled_reason is None:
            warnings.warn(f"kalman_optim: fused step disabled ({reason}); running the eager foreach path", stacklevel=4)
        self.disabled_reason = reason


# ------------------------------------------------------------------------------------ per-step scalars
# Scalars are computed in Python doubles exactly as the reference computes them, and every kernel applies them in
# the reference's order of operations (a * x + b for mul_/addcmul_, divisions where it divides, lerp where it
# lerps): inductor keeps float32 arithmetic in float32 without contraction, so most results agree bit for bit.
def _flag(condition: bool) -> float:
    return 1.0 if condition else 0.0


def _one_minus_power(beta: float, count: int) -> float:
    """1 - beta^count as the reference computes it; 1.0 (a harmless divisor) where count <= 0 leaves it unused."""
    return 1 - beta**count if count > 0 else 1.0


def moment_scalars(noise: str, step: int, *, beta1: float, beta2: float, prior_gain: float | None,
                   config: AdaptiveNoiseConfig | None) -> dict[str, float]:
    """The per-step scalars of the two moment filters and of the mode's noise statistics (reference: functional)."""
    second = second_moment_coefficients(noise, beta2, step, prior_gain)
    out = dict(second_decay=second.decay, second_weight=second.weight, correction2=second.correction)
    if noise == "adaptive":
        nb = config.noise_beta
        lam_min, lam_max = config.noise_ratio_bounds
        lam_prior = float(beta_to_noise_ratio(config.prior_beta))
        n_sq, n_lag = step - 1, step - 2
        weight = 1 - nb**n_lag
        out.update(
            correction1=1.0, gain=0.0, noise_beta=nb, one_minus_noise_beta=1 - nb,
            has_diff=_flag(n_sq >= 1), has_lag=_flag(n_lag >= 1), early=_flag(n_lag <= 0),
            lag_norm=_one_minus_power(nb, n_lag), sq_norm=_one_minus_power(nb, n_sq),
            early_gain=float(constant_noise_gain(config.prior_beta, step)),
            early_noise_norm=(1 - nb**n_sq) * (2 + lam_prior) if n_sq > 0 else 1.0,
            statistics_weight=weight, prior_term=(1 - weight) * lam_prior, lam_min=lam_min, lam_max=lam_max,
            step=float(step),
        )
    elif noise == "innovation":
        nb, first = config.noise_beta, adam_coefficients(beta1, step)
        count = innovation.lag_samples(step)
        out.update(
            first_weight=first.weight, correction1=first.correction, gain=1.0,
            prediction_norm=_one_minus_power(beta1, step - 1), observed=_flag(step >= 2),
            noise_beta=nb if step >= 2 else 1.0, r_weight=(1 - nb) * (1 - first.gain) if step >= 2 else 0.0,
            lag_on=_flag(count > 0), kept=1 - adam_coefficients(beta1, step - 1).gain if step >= 2 else 0.0,
            weight_norm=-math.expm1((step - 2) * math.log(nb)) if count > 0 else 1.0,
            lag_beta=innovation.LAG_BETA, lag_num_alpha=-(1 - innovation.LAG_BETA),
            lag_den_alpha=(1 - adam_coefficients(beta1, step - 1).gain) * (1 - innovation.LAG_BETA) if step >= 2 else 0.0,
            lag_count=ewma_effective_samples(count, innovation.LAG_BETA),
            phi_max=1.0 / (1.0 - first.gain) if first.gain < 1 else 1.0,
            phi_slope=2 * first.gain - 1, phi_offset=1 - first.gain,
            posterior_norm=-math.expm1((step - 1) * math.log(nb)) if step >= 2 else 1.0,
        )
    elif noise == "fitted":
        nb, first = config.noise_beta, adam_coefficients(beta1, step)
        table_x, table_y = fitted.interpolation_table(max(step, 2), beta1, nb)
        out.update(
            first_weight=first.weight, correction1=first.correction, gain=1.0,
            prediction_norm=_one_minus_power(beta1, step - 1), observed=_flag(step >= 2),
            noise_beta=nb if step >= 2 else 1.0, r_weight=(1 - nb) * (1 - first.gain) if step >= 2 else 0.0,
            lag_on=_flag(step >= 3), first_lag=_flag(step == 2),
            kept=1 - adam_coefficients(beta1, step - 1).gain if step >= 2 else 0.0,
            lag_beta=innovation.LAG_BETA, one_minus_lag_beta=1 - innovation.LAG_BETA,
            weight_norm=-math.expm1((step - 2) * math.log(nb)) if step >= 3 else 1.0,
            inverse_samples=1 / ewma_effective_samples(step - 2, nb) if step >= 3 else 0.0,
            first_total_scale=1 - first.gain,
            lag_count=ewma_effective_samples(fitted.lag_samples(step), innovation.LAG_BETA),
            posterior_norm=-math.expm1((step - 1) * math.log(nb)) if step >= 2 else 1.0,
            prior_target=fitted.own_model_phi(max(step, 2), float(beta1), float(nb)),
            table_x=table_x, table_y=table_y,
        )
    else:
        first = moment_coefficients(noise, beta1, step, prior_gain)
        out.update(first_weight=first.weight, correction1=first.correction, gain=first.gain)
    return out



# ---------------------------------------------------------------------------------- traced helpers
# Division by a per-step scalar is written as a multiply by its reciprocal throughout: on the CPUs measured a
# vector divide costs several multiplies and these kernels are close to compute-bound (a quick bench_fused check at
# 1e7: plain LAMB 2.02x -> 1.38x compiled AdamW from two such divides). Rounding differs from the reference by <= 1
# ulp per op.
def _where(flag: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(flag > 0.5, a, b)


def _computed_once(scalar: Tensor) -> Tensor:
    """`scalar` (one element, derived from a reduction or from state) stored in a buffer of its own. Inductor's C++
    kernels otherwise recompute such a scalar inside every iteration of each loop that reads it (D5's weight scale:
    a scalar divide per 8 elements; LAMB's trust ratio, before the deferred update returned it: two square roots and
    two divides), which the C compiler cannot hoist past the loop's stores.
    A sum over two elements is a reduction, which inductor's CPU backend never inlines into its consumers (on a GPU
    it is unrolled: the same code as before). Exact: scalar + 0 (only a negative zero changes, to +0)."""
    flat = scalar.reshape(())
    return torch.stack([flat, torch.zeros_like(flat)]).sum().reshape(scalar.shape)


#: Taylor coefficients of asinh(sqrt(lambda) / 2) / (sqrt(lambda) / 2) in powers of lambda (the series of
#: asinh(sqrt(s)) / sqrt(s) = sum_n (-1)^n (2n)! / (4^n (n!)^2 (2n + 1)) s^n at s = lambda / 4), 7 terms: at
#: lambda <= 4 * ASINH_SERIES_MAX_ARGUMENT = 0.5 (beta >= 0.5, the default beta_range) the next term is < 1e-8, a
#: sixth of a float32 ulp.
ASINH_SERIES = tuple((-1) ** n * math.factorial(2 * n) / (4**n * math.factorial(n) ** 2 * (2 * n + 1)) / 4**n
                     for n in range(7))
ASINH_SERIES_MAX_ARGUMENT = 0.125
#: coth(y) = Q(y^2) / (y P(y^2)) for 0 < y <= TANH_RATIONAL_CLAMP: the reciprocal of Eigen's float32 rational
#: approximation of tanh (generic_fast_tanh_float; P of degree 6 and Q of degree 3 in y^2), within 4.5e-7 relative
#: of coth on (0, 20] with the clamp (test_fused). Beyond the clamp coth(y) - 1 < 2.3e-7. No exp: exp(-2y) of a large y is a
#: subnormal float, and the series-and-exp form this replaced took 13 ms per 1e7 elements at step 400 against 5 ms
#: at step 37 (subnormal arithmetic), the rational 3 ms at every step.
TANH_RATIONAL_NUMERATOR = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
                           -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
TANH_RATIONAL_DENOMINATOR = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
TANH_RATIONAL_CLAMP = 7.99881172180175781


def start_up_kind(config: AdaptiveNoiseConfig, step: int, dtype: torch.dtype) -> str | bool:
    """Which start-up factor mode "adaptive"'s kernel computes: False once it is exactly 1
    (functional.start_up_active); "series" in float32 and narrower types when every noise ratio the kernel can see
    has lambda / 4 within the asinh series' range (one divide per element and polynomials, cheaper than the
    reference's log1p and tanh); "tanh" (the reference's formula) otherwise, and in float64, whose precision the
    float32-sized series do not reach."""
    if not start_up_active(config, step, dtype):
        return False
    _, lam_max = config.noise_ratio_bounds
    largest = max(lam_max, float(beta_to_noise_ratio(config.prior_beta)))
    in_range = largest / 4 <= ASINH_SERIES_MAX_ARGUMENT and torch.finfo(dtype).bits <= 32
    return "series" if in_range else "tanh"


def _horner(x: Tensor, coefficients: tuple[float, ...]) -> Tensor:
    """sum_n coefficients[n] x^n."""
    result = torch.full_like(x, coefficients[-1])
    for coefficient in reversed(coefficients[:-1]):
        result = result * x + coefficient
    return result


def steady_gain(root: Tensor, ratio: Tensor, outer_root: Tensor) -> Tensor:
    """D1's steady-state gain 2 sqrt(lambda) / (sqrt(lambda) + sqrt(lambda + 4)) without the divide:
    (sqrt(lambda) + sqrt(lambda + 4)) (sqrt(lambda + 4) - sqrt(lambda)) = 4, so it is
    (sqrt(lambda) sqrt(lambda + 4) - lambda) / 2 (`outer_root` = sqrt(lambda + 4)); the subtraction amplifies the
    relative rounding by (S + sqrt(lambda)) / (S - sqrt(lambda)) <= 2 for lambda <= 0.5 (S = sqrt(lambda + 4))."""
    return (root * outer_root - ratio) * 0.5


def series_start_up_gain(root: Tensor, ratio: Tensor, outer_root: Tensor, step: Tensor | float) -> Tensor:
    """D1's start-up gain k_t = (1 - beta)(1 + beta^(2t-1)) / (1 - beta^(2t)) (diffuse prior) with one divide and no
    transcendental function. With S = sqrt(lambda + 4), beta = (S - sqrt(lambda)) / (S + sqrt(lambda)) and the product
    of the two sums 4, k_t = (sqrt(lambda) S coth(y) - lambda) / 2 where y = -t log beta = 2 t asinh(sqrt(lambda) / 2)
    (the asinh by its series, valid for lambda / 4 <= ASINH_SERIES_MAX_ARGUMENT) and coth(y) the reciprocal of a
    rational tanh (TANH_RATIONAL_*): no 1 - exp(-2y) cancellation for small y, no subnormal exp(-2y) for large y.
    About float32 precision (start_up_kind)."""
    y = (root * _horner(ratio, ASINH_SERIES) * step).clamp_max(TANH_RATIONAL_CLAMP)
    y2 = y * y
    coth = _horner(y2, TANH_RATIONAL_DENOMINATOR) / (y * _horner(y2, TANH_RATIONAL_NUMERATOR))
    return steady_gain(root * coth, ratio, outer_root)


def _adaptive(g, extra, s, new, start_up):
    """functional._single_tensor_adaptive_update + adaptive_noise_estimates: (gain, r_hat), new statistics."""
    tiny = torch.finfo(g.dtype).tiny
    diff = g - extra["prev_grad"]
    sq = _where(s["has_diff"], extra["diff_sq_avg"] * s["noise_beta"] + s["one_minus_noise_beta"] * diff * diff,
                extra["diff_sq_avg"])
    lag = _where(s["has_lag"], extra["diff_lag_avg"] * s["noise_beta"] + s["one_minus_noise_beta"] * diff * extra["prev_diff"],
                 extra["diff_lag_avg"])
    new.update(prev_grad=g, prev_diff=_where(s["has_diff"], diff, extra["prev_diff"]), diff_sq_avg=sq, diff_lag_avg=lag)
    c1 = lag * s["lag_norm"].reciprocal()
    r_hat = (-c1).clamp_min(0)
    ratio = (sq * s["sq_norm"].reciprocal() + 2 * c1).clamp_min(0)
    ratio = torch.clamp(ratio / r_hat.clamp_min(tiny), s["lam_min"], s["lam_max"])
    ratio = ratio * s["statistics_weight"] + s["prior_term"]
    root, outer_root = ratio.sqrt(), (ratio + 4).sqrt()
    if start_up == "series":  # a structure flag (start_up_kind): the start-up gain without log1p and tanh
        gain = series_start_up_gain(root, ratio, outer_root, s["step"])
    else:  # after the start-up (start_up False) the kernel is compiled without the factor (start_up_active)
        gain = steady_gain(root, ratio, outer_root)
        if start_up == "tanh":  # D1's factor via h = tanh(t log beta), as functional
            beta = 1 - gain
            half = torch.tanh(torch.log1p(-gain) * s["step"])
            gain = gain * (((1 - half) * beta + half + 1) / (half * -2 * beta))
    gain = _where(s["early"], s["early_gain"].expand_as(g), gain)
    r_hat = _where(s["early"], sq * s["early_noise_norm"].reciprocal(), r_hat)
    return gain, r_hat


def _innovation(g, m, extra, s, new):
    """noise_models.innovation.observe: the new per-coordinate R and pooled lag statistics."""
    tiny = torch.finfo(g.dtype).tiny
    innov = g - m * s["prediction_norm"].reciprocal()
    sample = innovation.sample_of(innov)
    previous = extra["lag_prev"]
    diff = sample - s["kept"] * previous
    scale = innovation.sample_of(extra["innovation_sq_avg"]) / s["weight_norm"]
    weights = torch.where(scale > 0, scale.clamp_min(tiny).reciprocal(), torch.zeros_like(scale))
    weighted = previous * weights
    num = extra["lag_num"] * s["lag_beta"] + s["lag_num_alpha"] * torch.dot(weighted, diff)
    den = extra["lag_den"] * s["lag_beta"] + s["lag_den_alpha"] * torch.dot(weighted, previous)
    new.update(lag_num=_where(s["lag_on"], num, extra["lag_num"]), lag_den=_where(s["lag_on"], den, extra["lag_den"]),
               lag_prev=_where(s["observed"], sample, previous),
               innovation_sq_avg=extra["innovation_sq_avg"] * s["noise_beta"] + s["r_weight"] * innov * innov)


def _shrunk_lag_ratio(g, new, s, model=innovation):
    """noise_models.innovation.shrunk_lag_ratio on the new statistics (s["lag_count"]: the lag steps' effective count;
    `model`: the noise model whose sample size counts; s["prior_target"]: the prior's target, mode "fitted" only)."""
    den = new["lag_den"]
    count = s["lag_count"] * model.sample_count(g.numel())
    target = s["prior_target"] if "prior_target" in s else torch.ones_like(den)
    measured = torch.where(den > 0, new["lag_num"] / den.clamp_min(torch.finfo(g.dtype).tiny), target)
    prior = innovation.prior_weight(s["lag_count"])  # the library constants as the kernel is traced
    return (measured * count + prior * target) / (count + prior)


def _innovation_posterior(g, new, s):
    """noise_models.innovation.posterior_variance (after `_innovation`)."""
    phi = torch.minimum(_shrunk_lag_ratio(g, new, s).clamp_min(0), s["phi_max"])
    factor = (phi * s["phi_slope"] + s["phi_offset"]) / s["posterior_norm"]
    return new["innovation_sq_avg"] * factor


def _fitted(g, m, extra, s, new):
    """noise_models.fitted.observe: R and the lag statistic with weights fixed before the innovation they weight."""
    tiny = torch.finfo(g.dtype).tiny
    innov = g - m * s["prediction_norm"].reciprocal()
    sample = fitted.sample_of(innov)
    previous, previous_sq = extra["lag_prev"], extra["lag_prev_sq"]
    lag_term = torch.dot(previous, sample) - s["kept"] * previous_sq
    num = extra["lag_num"] * s["lag_beta"] - s["one_minus_lag_beta"] * lag_term
    den = extra["lag_den"] * s["lag_beta"] + s["one_minus_lag_beta"] * s["kept"] * previous_sq
    scale = fitted.sample_of(extra["innovation_sq_avg"]) * s["weight_norm"].reciprocal()
    mean = scale.sum() / fitted.sample_count(g.numel())
    later = (scale + mean * s["inverse_samples"]).reciprocal()
    later = torch.where(torch.isfinite(later), later, torch.zeros_like(later))
    weights = _where(s["first_lag"], torch.ones_like(sample), later)
    total = _where(s["first_lag"], (sample * sample).sum() * s["first_total_scale"], torch.dot(later, scale))
    weights = torch.where(total > 0, weights / total.clamp_min(tiny), torch.zeros_like(weights))
    weighted = weights * sample
    new.update(lag_num=_where(s["lag_on"], num, extra["lag_num"]), lag_den=_where(s["lag_on"], den, extra["lag_den"]),
               lag_prev=_where(s["observed"], weighted, previous),
               lag_prev_sq=_where(s["observed"], torch.dot(weighted, sample).reshape(previous_sq.shape), previous_sq),
               innovation_sq_avg=extra["innovation_sq_avg"] * s["noise_beta"] + s["r_weight"] * innov * innov)


def _fitted_posterior(g, new, s):
    """noise_models.fitted.posterior_variance (after `_fitted`): R E_t(rho_hat) / M_t(rho_hat), the table lookup in-graph."""
    phi = _shrunk_lag_ratio(g, new, s, fitted) if fitted.estimates_ratio(g.numel()) else s["prior_target"]
    factor = fitted.interpolate(phi.reshape(()), s["table_x"], s["table_y"]) * s["posterior_norm"].reciprocal()
    return new["innovation_sq_avg"] * factor


def _moments(g: Tensor, m: Tensor, v: Tensor, extra: dict[str, Tensor], s: dict[str, Tensor], *, noise: str,
             posterior: bool, start_up: bool = False
             ) -> tuple[Tensor, Tensor, dict[str, Tensor], Tensor | None, Tensor | None]:
    """New (m, v, extra state), and with `posterior` the noise read-out (gain, r_hat) with P = gain * r_hat (D3/D4/D7);
    functional._single_tensor_moments."""
    new: dict[str, Tensor] = {}
    gain = r_hat = None
    if noise == "adaptive":
        gain, r_hat = _adaptive(g, extra, s, new, start_up)
        m = torch.lerp(m, g, gain)
    elif noise == "innovation":
        _innovation(g, m, extra, s, new)
        m = torch.lerp(m, g, s["first_weight"])
        if posterior:
            gain, r_hat = s["gain"], _innovation_posterior(g, new, s)
    elif noise == "fitted":
        _fitted(g, m, extra, s, new)
        m = torch.lerp(m, g, s["first_weight"])
        if posterior:
            gain, r_hat = s["gain"], _fitted_posterior(g, new, s)
    else:
        m = torch.lerp(m, g, s["first_weight"])
    v = v * s["second_decay"] + s["second_weight"] * g * g
    if posterior and noise in ("adam", "constant"):
        gain = s["gain"]
    return m, v, new, gain, r_hat


def _zero_memory_excess(mean_sq: Tensor, v: Tensor, s: dict[str, Tensor]) -> Tensor:
    """max(v_hat (1 - 4 ulp) - m_hat^2, 0): the zero-memory noise (D3) before its 1 / c."""
    return (v * s["excess_scale"] - mean_sq).clamp_min(0)


def _zero_memory_noise(mean_sq: Tensor, v: Tensor, s: dict[str, Tensor]) -> Tensor:
    """functional.observation_noise_from_moments: max(v_hat (1 - 4 ulp) - m_hat^2, 0) / c (D3)."""
    return _zero_memory_excess(mean_sq, v, s) * s["inverse_noise_bias"]  # a multiply: cheaper than /


def _layout(scalars: dict[str, Any]) -> tuple[tuple[str, int], ...]:
    """(name, length) per coefficient: length 0 for a scalar, n for a 1-D table (mode "fitted"'s interpolation)."""
    return tuple((name, value.numel() if isinstance(value, Tensor) else 0) for name, value in scalars.items())


def coefficient_values(scalars: dict[str, Any], names: tuple[tuple[str, int], ...] | None = None) -> np.ndarray:
    """The coefficients as one float64 array in `_layout`'s order. An array, not a list of Python floats: mode
    "fitted"'s two 401-point tables made the list's `tolist` and `torch.tensor` ~70 us of host time per step, the
    array's concatenation ~11 us (2-core CPU); without tables (`names`, `_layout`'s, says), one `np.fromiter`."""
    if names is None:
        names = _layout(scalars)
    if not any(length for _, length in names):
        return np.fromiter(scalars.values(), dtype=np.float64, count=len(scalars))
    parts: list[np.ndarray] = []
    run: list[float] = []
    for value in scalars.values():
        if torch.is_tensor(value):
            parts.append(np.array(run, dtype=np.float64))
            parts.append(value.detach().reshape(-1).to(device="cpu", dtype=torch.float64).numpy())
            run = []
        else:
            run.append(float(value))
    parts.append(np.array(run, dtype=np.float64))
    return np.concatenate(parts)


def _pack(values: np.ndarray, dtype: torch.dtype, device, rows: int = 0) -> Tensor:
    """`values` as one tensor, 1-D, or with `rows` > 0 the same row `rows` times: one host-to-device copy per bucket
    and step (repeated on the host: a repeat on the device is one more launch). On CUDA the buckets' coefficients
    are staged through pinned buffers instead (`cuda_graphs.CoefficientStaging`). Each double rounds to `dtype` as
    torch.tensor(list, dtype) rounds it."""
    host = torch.from_numpy(values).to(dtype, copy=True)  # a copy: the kernels must not share the caller's array
    if rows:  # a CPU repeat: 9 us for 100 rows where a nested list takes 80 us
        host = host.repeat(rows, 1)
    if device.type != "cuda":
        return host if device.type == "cpu" else host.to(device)
    # From pinned memory without waiting: a copy from pageable memory blocks the host until the GPU has finished the
    # work queued before it (cProfile on an H200: 0.26 ms per step in torch.tensor).
    return host.pin_memory().to(device, non_blocking=True)


def _row(coefficients: Tensor, i: int) -> Tensor:
    """Tensor i's coefficients: its row of a 2-D table (CPU, see `_run`), or the one 1-D row every tensor shares."""
    return coefficients[i] if coefficients.dim() == 2 else coefficients


def _unpack(coefficients: Tensor, names: tuple[tuple[str, int], ...]) -> dict[str, Tensor]:
    out, offset = {}, 0
    for name, length in names:
        out[name] = coefficients[offset] if length == 0 else coefficients[offset:offset + length]
        offset += max(length, 1)
    return out


# ------------------------------------------------------------------------------------------ kernels
def _adam_kernel(params, grads, exp_avgs, exp_avg_sqs, extras, coefficients, *, names, noise, variance_adaptation,
                 coupled_decay, maximize, start_up=False):
    """KalmanAdam (modes adam, constant, adaptive, innovation; with or without variance adaptation):
    functional._single_tensor_kalman_adam."""
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        s = _unpack(_row(coefficients, i), names)
        g = -g if maximize else g
        if coupled_decay:
            g = g + s["weight_decay"] * p
        extra = {key: values[i] for key, values in extras.items()}
        m_new, v_new, new, gain, r_hat = _moments(g, m, v, extra, s, noise=noise, posterior=variance_adaptation,
                                                  start_up=start_up)
        direction = m_new
        if variance_adaptation:  # D3, functional._variance_adapted_direction
            mean_sq = (m_new * s["correction1"].reciprocal()).square()
            if r_hat is None:
                variance = _zero_memory_noise(mean_sq, v_new, s) * s["scale_gain"]
            else:
                variance = r_hat * gain * s["adaptation_scale"]
            variance = (variance + mean_sq).clamp_min(torch.finfo(p.dtype).tiny)
            direction = _where(s["has_posterior"], mean_sq / variance * m_new, m_new)
        denom = v_new.sqrt() * s["sqrt_correction2"].reciprocal() + s["eps"]
        p.copy_(p * s["param_decay"] + s["neg_step_size"] * (direction / denom))
        m.copy_(m_new)
        v.copy_(v_new)
        for key, value in new.items():
            extra[key].copy_(value)


def _transport_kernel(params, grads, exp_avgs, exp_avg_sqs, extras, coefficients, *, names, coupled_decay, maximize):
    """Mode transport (D8): noise_models.transport.step."""
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        s = _unpack(_row(coefficients, i), names)
        tiny = torch.finfo(p.dtype).tiny
        g = -g if maximize else g
        if coupled_decay:
            g = g + s["weight_decay"] * p
        prev_grad, num, den, resid = (extras[key][i] for key in transport.STATE_KEYS[:4])
        prev_lr = extras["prev_lr"][i]
        inverse_step = ((v * s["previous_correction2"].reciprocal()).sqrt() + s["eps"]) * prev_lr.clamp_min(1e-30).reciprocal()
        step_size = inverse_step.reciprocal()  # one divide, then multiplies
        dtheta = -(m * step_size)
        if not coupled_decay:  # the decoupled decay is part of the last step (D8)
            decay = prev_lr * s["weight_decay"]
            dtheta = (dtheta - p * decay) * (1 - decay).reciprocal()
        y = g - prev_grad
        instrument = prev_grad * s["previous_gain"] * step_size + dtheta
        on = s["statistics_on"]
        num_new = _where(on, num * s["noise_beta"] + s["one_minus_noise_beta"] * y * instrument, num)
        den_new = _where(on, den * s["noise_beta"] + s["one_minus_noise_beta"] * dtheta * instrument, den)
        raw = torch.where(den_new > 0, num_new / den_new.clamp_min(tiny), torch.zeros_like(den_new))
        residual = y - raw * dtheta
        resid_new = _where(on, resid * s["noise_beta"] + s["one_minus_noise_beta"] * residual * residual, resid)
        # transport.curvature_estimate on the new statistics (h_raw above is already their ratio)
        se_sq = resid_new * s["standard_error_factor"] / den_new.clamp_min(tiny)
        curvature = raw * (1 - transport.SHRINK * se_sq / raw.square().clamp_min(tiny)).clamp_min(0)
        curvature = torch.minimum(curvature.clamp_min(0), inverse_step * transport.KAPPA)
        m_new = _where(s["transport_on"], m + curvature * dtheta, m)
        m_new = torch.lerp(m_new, g, s["gain"])
        v_new = v * s["beta2"] + s["one_minus_beta2"] * g * g
        denom = (v_new * s["correction2"].reciprocal()).sqrt() + s["eps"]
        p.copy_(p * s["param_decay"] + s["neg_lr"] * (m_new / denom))
        m.copy_(m_new)
        v.copy_(v_new)
        num.copy_(num_new)
        den.copy_(den_new)
        resid.copy_(resid_new)
        prev_grad.copy_(g)
        prev_lr.copy_(s["lr"])


def _extrapolated_kernel(params, grads, exp_avgs, exp_avg_sqs, extras, coefficients, *, names, coupled_decay, maximize):
    """Mode extrapolated (D8, the gradient taken at the extrapolated point): noise_models.extrapolated.step."""
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        s = _unpack(_row(coefficients, i), names)
        g = -g if maximize else g
        if coupled_decay:
            g = g + s["weight_decay"] * p
        iterate = extras["iterate"][i]
        m_new = torch.lerp(m, g, s["gain"])
        v_new = v * s["beta2"] + s["one_minus_beta2"] * g * g
        denom = (v_new * s["correction2"].reciprocal()).sqrt() + s["eps"]
        update = m_new / denom * s["neg_lr"]
        if not coupled_decay:
            update = update + s["neg_lr_weight_decay"] * iterate
        iterate_new = iterate + update
        p.copy_(iterate_new + s["extrapolation"] * update)
        m.copy_(m_new)
        v.copy_(v_new)
        iterate.copy_(iterate_new)


def _lamb_moments(g, m, v, extra, s, *, noise, maximize, start_up, posterior):
    """(m_new, v_new, new extra state, bias-corrected mean, and with `posterior` the posterior variance P that D5's
    weights need as a pair (per-element factor, scalar factor or None), else None) of one tensor. The zero-memory
    noise's P = gain * max(v_hat - m_hat^2, 0) / c keeps gain / c apart: D5's weights fold it into one scalar with
    the layer mean's reciprocal (two multiplies per element fewer)."""
    g = -g if maximize else g
    m_new, v_new, new, gain, r_hat = _moments(g, m, v, extra, s, noise=noise, posterior=posterior, start_up=start_up)
    mean = m_new * s["inverse_correction1"]  # per-element multiplies, not divides: the step is near compute-bound
    if not posterior:
        return m_new, v_new, new, mean, None
    if r_hat is None:
        return m_new, v_new, new, mean, (_zero_memory_excess(mean.square(), v_new, s), gain * s["inverse_noise_bias"])
    return m_new, v_new, new, mean, (gain * r_hat, None)


def _scaled(variance: tuple[Tensor, Tensor | None], scale: Tensor) -> tuple[Tensor, Tensor]:
    """(per-element factor, scalar factor) of `_lamb_moments`'s P times the scalar `scale`, the scalars multiplied
    once per tensor, not per element (`_computed_once`)."""
    elementwise, factor = variance
    return elementwise, _computed_once(scale if factor is None else factor * scale)


def _mean_of(variance: tuple[Tensor, Tensor | None], total: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """The mean of `_lamb_moments`'s P over the tensor: the per-element factor's mean times the scalar one; with
    `total`, the per-element factor's mean is total(factor) / numel (`_row_sum`'s, in a bucket's graph of sums)."""
    elementwise, factor = variance
    mean = elementwise.mean() if total is None else total(elementwise) / elementwise.numel()
    return mean if factor is None else mean * factor


def _lamb_statistics_kernel(params, grads, exp_avgs, exp_avg_sqs, extras, coefficients, *, names, noise, maximize,
                            start_up=False):
    """Each tensor's mean posterior variance, the first pass of precision-weighted LAMB: a graph of reductions
    only, so that the update graph recomputes the moments instead of writing and re-reading them."""
    s = _unpack(coefficients, names)
    means = []
    for i, (g, m, v) in enumerate(zip(grads, exp_avgs, exp_avg_sqs)):
        extra = {key: values[i] for key, values in extras.items() if key != UPDATE_BUFFER_KEY}
        variance = _lamb_moments(g, m, v, extra, s, noise=noise, maximize=maximize, start_up=start_up, posterior=True)[4]
        means.append(_mean_of(variance))
    return torch.stack(means)


def _row_count(numel: int) -> int:
    """Rows of the (rows, numel / rows) view `_row_sum` reduces a tensor of `numel` elements through: the largest
    divisor of numel in ROW_RANGE from ROW_SPLIT_MIN_ELEMENTS elements on, else 1 (one flat sum)."""
    if numel < ROW_SPLIT_MIN_ELEMENTS:
        return 1
    low, high = ROW_RANGE
    return next((rows for rows in range(min(high, numel), low - 1, -1) if numel % rows == 0), 1)


def _row_sum(x: Tensor) -> Tensor:
    """sum(x) as the sum of its rows' sums (`_row_count`). On CUDA inductor splits a flat sum over a large tensor
    into a kernel of partial sums over its own blocks, an iteration space no pointwise producer shares, so it
    stores each operand of the sum and reads it back; a sum over the rows of a view shares the producer's space,
    which computes its operands in registers and reads only the inputs (issue 13: PW LAMB's graph stored four
    tensors per parameter)."""
    rows = _row_count(x.numel())
    return x.sum() if rows == 1 else x.reshape(rows, -1).sum(1).sum()


def _lamb_update(p, g, m, v, extra, s, mean_variance, *, noise, precision_weighting, decay, maximize,
                 precision_floor, start_up):
    """(m_new, v_new, new extra state, the update u before the trust ratio, D5's weights or None, the posterior
    variance pair of `_lamb_moments` or None) of one tensor; `mean_variance`: the layer mean of P D5 divides by."""
    m_new, v_new, new, mean, variance = _lamb_moments(g, m, v, extra, s, noise=noise, maximize=maximize,
                                                      start_up=start_up, posterior=precision_weighting)
    denominator = (v_new * s["inverse_correction2"]).sqrt() + s["eps"]
    weights = None
    if precision_weighting:  # functional.precision_weighted_norm
        inverse_mean = torch.where(mean_variance > 0,
                                   mean_variance.clamp_min(torch.finfo(p.dtype).tiny).reciprocal(),
                                   torch.zeros_like(mean_variance))  # 0: equal weights
        # One vector divide for both quotients, m / denominator and D5's weight 1 / (P / mean(P) + floor), a few ulp
        # from the reference's rounding (bench_fused, previous-mean variant over plain LAMB, 2 x 3 processes:
        # 1.13 -> 1.08 at 1e7 parameters; 1.24 -> 1.22 at 3e7).
        elementwise, factor = _scaled(variance, inverse_mean)
        weight_denominator = elementwise * factor + precision_floor
        both = (denominator * weight_denominator).reciprocal()
        update = mean * weight_denominator * both
        weights = denominator * both
    else:
        update = mean / denominator
    if decay:
        update = update + s["weight_decay"] * p
    return m_new, v_new, new, update, weights, variance


def _lamb_sums_kernel(params, grads, exp_avgs, exp_avg_sqs, extras, coefficients, *, names, noise, maximize,
                      precision_floor, decay, start_up=False):
    """The first pass of precision-weighted LAMB with the previous step's layer means, once per bucket (CUDA): a
    graph of reductions only, per tensor (sum p^2, sum w u^2, sum w, mean of P), each a `_row_sum`. It reads p, g and
    the moments once (16 B per fp32 element) and writes nothing; the update graph (`_lamb_kernel` with
    `precomputed_sums`) recomputes the moments, so the step moves 44 B per element, plain LAMB's, where one graph
    stored and re-read the weights' operands (68 B at 0654bb3: results/bench/triton_bytes_gpu_commit.md)."""
    s = _unpack(coefficients, names)
    sums = []
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        extra = {key: values[i] for key, values in extras.items()}
        stored_mean = extra.pop(PREVIOUS_MEAN_KEY)
        _, _, _, update, weights, variance = _lamb_update(
            p, g, m, v, extra, s, stored_mean, noise=noise, precision_weighting=True, decay=decay, maximize=maximize,
            precision_floor=precision_floor, start_up=start_up)
        sums.append(torch.stack([_row_sum(p * p), _row_sum(weights * update.square()), _row_sum(weights),
                                 _mean_of(variance, _row_sum)]))
    return torch.stack(sums)


def _lamb_kernel(params, grads, exp_avgs, exp_avg_sqs, extras, coefficients, statistics=None, *, names, noise,
                 precision_weighting, decay, maximize, trust_clip, precision_floor, start_up=False,
                 previous_mean=False, deferred_update=False, precomputed_sums=False):
    """KalmanLAMB (D5): functional.kalman_lamb. With precision weighting, `statistics` comes from
    `_lamb_statistics_kernel` (the layer means D5's weights divide by), or with `previous_mean` the means come from
    the state (the last step's means, overwritten here with this step's: one pass fewer), and with
    `precomputed_sums` `statistics` holds `_lamb_sums_kernel`'s sums (this graph then reduces nothing). With
    `deferred_update` the parameters are not written: each tensor's update goes to its buffer
    `extras[UPDATE_BUFFER_KEY]`, and the kernel returns -lr * trust ratio per tensor for the caller's `p.addcmul_`
    (`_launch`)."""
    s = _unpack(coefficients, names)
    scales = []
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        extra = {key: values[i] for key, values in extras.items()}
        stored_mean = extra.pop(PREVIOUS_MEAN_KEY, None)
        update_buffer = extra.pop(UPDATE_BUFFER_KEY, None)
        mean_variance = None
        if precision_weighting:
            mean_variance = stored_mean if previous_mean else statistics[i]
        m_new, v_new, new, update, weights, variance = _lamb_update(
            p, g, m, v, extra, s, mean_variance, noise=noise, precision_weighting=precision_weighting, decay=decay,
            maximize=maximize, precision_floor=precision_floor, start_up=start_up)
        if precomputed_sums:
            param_sq, weighted_sq, weight_sum, layer_mean = statistics[i].unbind()
            param_norm = param_sq.sqrt()
            # Without a posterior (innovation's first step) the stored mean is 0: equal weights, the plain norm.
            update_norm = (weighted_sq / weight_sum * update.numel()).sqrt()
            stored_mean.copy_(_where(s["has_posterior"], layer_mean.reshape(1), torch.zeros_like(stored_mean)))
        else:
            param_norm = (p * p).sum().sqrt()  # a sum of squares: inductor lowers linalg.vector_norm to a slower loop
            plain_norm = (update * update).sum().sqrt()  # unused with a previous mean: the traced graph drops it
            update_norm = plain_norm
            if precision_weighting:
                weighted = (weights * update.square()).sum() / weights.sum()
                weighted_norm = (weighted * update.numel()).sqrt()
                if previous_mean:
                    # Without a posterior (innovation's first step) the stored mean is still 0: equal weights, the
                    # plain norm, so no separate sum of u^2. The next step then weighs equally too.
                    update_norm = weighted_norm
                    stored_mean.copy_(_where(s["has_posterior"], _mean_of(variance).reshape(1),
                                             torch.zeros_like(stored_mean)))
                else:
                    update_norm = _where(s["has_posterior"], weighted_norm, plain_norm)
        ratio = torch.where((param_norm > 0) & (update_norm > 0), param_norm / update_norm, torch.ones_like(param_norm))
        if trust_clip is not None:
            ratio = ratio.clamp_max(trust_clip)
        if deferred_update:
            update_buffer.copy_(update)
            scales.append(s["neg_lr"] * ratio)
        else:
            p.copy_(p + s["neg_lr"] * (update * ratio))
        m.copy_(m_new)
        v.copy_(v_new)
        for key, value in new.items():
            extra[key].copy_(value)
    return scales if deferred_update else None


# ------------------------------------------------------------------------------------- entry points
@dataclass(frozen=True)
class Job:
    """One bucket's fused step: `kernel` with its structure `flags`, the per-step `scalars`, the cache `key`, the
    `tensors` (params, grads, exp_avgs, exp_avg_sqs, extra state) and their `indices` in the caller's lists.
    `statistics`: a (kernel, flags) run first, whose result the kernel takes last (PW LAMB's layer means).
    `per_tensor`: call the kernel once per tensor, flattened, through one shape-generic graph."""

    kernel: Callable
    flags: dict[str, Any]
    scalars: dict[str, float]
    key: tuple
    tensors: tuple
    indices: tuple[int, ...]
    statistics: tuple[Callable, dict[str, Any]] | None = None
    per_tensor: bool = False
    rows: bool = False


def _flat(tensor: Tensor) -> Tensor:
    """`tensor`'s elements as a 1-D tensor on the same memory that is not a view: dynamo specializes a graph on
    a view's base shape and on every dimension of size 1, so 1-D aliases let one graph serve every shape. The
    alias has its own autograd version counter; `_run` bumps the original's after writing through it."""
    return tensor.new_empty(0).set_(tensor.untyped_storage(), tensor.storage_offset(), (tensor.numel(),), (1,))


def _single(tensors: tuple, j: int, buffers: KernelCache | None = None) -> tuple:
    """Tensor j of a bucket as a bucket of one, its per-element tensors as 1-D aliases when all are contiguous
    (else the parameter detached, same storage and version counter: dynamo compiles an nn.Parameter input for
    its exact shape); small state (a 1-element layer mean) as it is. With `buffers`, the extra state also holds
    an update buffer of the parameter's (aliased) shape from `buffers.update_buffer`."""
    params, grads, exp_avgs, exp_avg_sqs, extra = tensors
    numel = params[j].numel()
    members = [params[j], grads[j], exp_avgs[j], exp_avg_sqs[j], *(v[j] for v in extra.values() if v[j].numel() == numel)]
    if all(t.is_contiguous() for t in members):
        flat = lambda t: _flat(t) if t.numel() == numel else t  # noqa: E731
    else:
        flat = lambda t: t.detach() if isinstance(t, torch.nn.Parameter) else t  # noqa: E731
    single_extra = {key: [flat(values[j])] for key, values in extra.items()}
    param = flat(params[j])
    if buffers is not None:
        single_extra[UPDATE_BUFFER_KEY] = [buffers.update_buffer(param)]
    return [param], [flat(grads[j])], [flat(exp_avgs[j])], [flat(exp_avg_sqs[j])], single_extra


def _run(cache: KernelCache, job: Job) -> list[int]:
    """Run one bucket through its compiled kernel(s); return the indices of the tensors it did not step (all of
    them, or with `per_tensor` those from the first that could not run, when the fused path became unavailable)."""
    names = _layout(job.scalars)
    # The structure flags are part of the key: a changed option (maximize, the end of the start-up) gets its kernel.
    flag_key = tuple(sorted(job.flags.items()))
    params = job.tensors[0]
    device, dtype = params[0].device, params[0].dtype
    values = coefficient_values(job.scalars, names)
    graphs = None
    graphed = device.type in cache.graph_devices
    if (device.type == "cuda" or graphed) and not job.per_tensor and dtype in (torch.float32, torch.float64):
        # At a fixed address per bucket: what a CUDA graph reads.
        coefficients = cache.stage(("coefficients", *job.key, names), values, dtype, device)
        graphs = cache.graphs if graphed else None
    else:
        # On a CPU a row of coefficients per tensor: inductor's C++ code fuses the loops of same-sized tensors that
        # read the same buffer into one loop over all their streams (4 to 7 per tensor); a loop per tensor (as torch's
        # compiled AdamW, which reads a step count per tensor, gets) measured 0.92 -> 0.83x compiled AdamW at 1e7
        # parameters and 1.09 -> 0.75x at 3e7 in mode adam (bench_fused, 30 tensors of 1e6, 3 processes each).
        rows = len(params) if job.rows and device.type == "cpu" else 0
        coefficients = _pack(values, dtype, device, rows=rows)
    if job.per_tensor:  # one graph for every tensor: a multi-tensor graph of reductions fuses the tensors' loops badly
        calls = [(("per-tensor",), _single(job.tensors, j, cache if job.flags.get("deferred_update") else None),
                  job.indices[j:]) for j in range(len(params))]
    else:
        calls = [((job.indices,), job.tensors, job.indices)]
    dynamic = None if job.per_tensor else False
    for j, (suffix, tensors, remaining) in enumerate(calls):
        key = (*job.key, *suffix, names, flag_key)
        compiled = cache.get(key, job.kernel, dict(job.flags, names=names), dynamic=dynamic)
        first = None
        if job.statistics is not None:
            statistics_kernel, statistics_flags = job.statistics
            first = cache.get(("statistics", *key), statistics_kernel, dict(statistics_flags, names=names),
                              dynamic=dynamic)
        if compiled is None or (job.statistics is not None and first is None):
            return list(remaining)
        launch = functools.partial(_launch, tensors, coefficients, compiled, first)
        try:
            if graphs is None:
                launch()
            else:
                graphs.run(key, cuda_graphs.addresses(tensors, coefficients), launch, functools.partial(_written, tensors),
                           device)
            if job.per_tensor:  # the writes went through aliases with their own version counters
                torch.autograd.graph.increment_version([params[j], job.tensors[2][j], job.tensors[3][j]])
        except Exception as error:
            if not _is_compile_error(error):
                raise
            # Compilation fails before the kernel runs, so these tensors are unchanged.
            cache.disable(f"compilation failed: {type(error).__name__}: {_first_line(error)}")
            return list(remaining)
    return []


def _launch(tensors: tuple, coefficients: Tensor, compiled: Callable, first: Callable | None) -> None:
    """One call's kernels: the statistics graph (if any), then the kernel, then a deferred LAMB update's
    p += (-lr ratio) update (one pass at the copy bandwidth)."""
    if first is None:
        scales = compiled(*tensors, coefficients)
    else:
        scales = compiled(*tensors, coefficients, first(*tensors, coefficients))
    if scales is not None:
        for p, update, scale in zip(tensors[0], tensors[4][UPDATE_BUFFER_KEY], scales):
            p.addcmul_(update, scale)


def _written(tensors: tuple) -> list[Tensor]:
    """The tensors a bucket's step writes in place: parameters and state."""
    params, _, exp_avgs, exp_avg_sqs, extra = tensors
    return [*params, *exp_avgs, *exp_avg_sqs, *(t for values in extra.values() for t in values)]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _is_compile_error(error: Exception) -> bool:
    from subprocess import CalledProcessError

    from torch._dynamo.exc import BackendCompilerFailed, InternalTorchDynamoError, Unsupported

    return isinstance(error, (BackendCompilerFailed, InternalTorchDynamoError, Unsupported, CalledProcessError, OSError))


def _buckets(params, grads, exp_avgs, exp_avg_sqs, steps, states, views: dict | None = None):
    """(step, (device, dtype), indices, tensors) per bucket of tensors that share them. `views`: a cache of the
    extra state's lists as the kernels take them (`_one_element_list`)."""
    buckets = _group_by_step(steps, params)
    views = {} if views is None else views
    if len(views) > 64:  # lists of bucket layouts or states since replaced: forget them
        views.clear()
    for (device, dtype, step), index in buckets.items():
        if len(buckets) == 1:  # the usual case: every tensor, in order (the lists are read, never changed)
            pick = lambda values: values  # noqa: E731
        else:
            pick = lambda values: [values[i] for i in index]  # noqa: E731
        index = tuple(index)
        extra = {key: _one_element_list((key, index), pick(values), views) for key, values in (states or {}).items()}
        yield step, (device, dtype), index, (pick(params), pick(grads), pick(exp_avgs), pick(exp_avg_sqs), extra)


def _one_element_list(key: tuple, values: list[Tensor], views: dict) -> list[Tensor]:
    """`values` with 0-dim state (pooled statistics, the previous lr) as 1-element views: dynamo would treat a 0-dim
    CPU input as a Python number and specialize the compiled graph on its value. Kept in `views` under `key` (state
    key, bucket) while the same tensors come again, compared by identity (the entry holds them, so no id is reused):
    a view per tensor per step costs ~1 us of host time."""
    identities = tuple(map(id, values))
    entry = views.get(key)
    if entry is not None and entry[0] == identities:
        return entry[2]
    converted = [t.view(1) if t.dim() == 0 else t for t in values]
    views[key] = (identities, list(values), converted)
    return converted


# ------------------------------------------------------------------------- torch's own fused Adam kernel
# Modes "adam" and "constant" without variance adaptation are Adam's update with other scalars, so on a CPU they run
# through torch's hand-written fused Adam kernel (ATen), which compiles nothing: mode adam measured 0.98x / 0.94x
# compiled AdamW's step at 1e7 / 3e7 parameters (make bench at dd12720) where inductor's kernel for the same update
# (same 28 bytes per element) measured 0.79x / 1.01x in the run before (468d0eb), 1.01-1.04x in A/B runs.
# On CUDA they take the compiled kernel (`TORCH_KERNEL_DEVICES`): on an H200 at 1e8 parameters inductor's kernel of
# the same 28 bytes per element (mode adam with variance adaptation) ran in 0.68 ms of kernel time where torch's
# multi-tensor fused AdamW took 0.79 ms (results/bench/cuda_step_profile.log), and steps queued back to back took
# 0.71 against 0.81 ms (results/bench/cuda_queued_steps.log); torch's kernel keeps less host time per step.
TORCH_KERNEL_MODES = ("adam", "constant")
#: Device types on which modes "adam"/"constant" step through torch's fused Adam kernel (a KernelCache's
#: `torch_kernel_devices` overrides it per param group, as bench_fused's "[torch kernel]" candidates do).
TORCH_KERNEL_DEVICES = ("cpu",)


def torch_adam_arguments(noise: str, step: int, *, beta1: float, beta2: float, lr: float, weight_decay: float,
                         eps: float, coupled: bool, prior_gain: float | None) -> dict[str, float]:
    """The scalars with which torch's fused Adam kernel computes step `step` of mode "adam" or "constant".

    The kernel computes m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2 and
    p <- p (1 - lr wd) - (lr / c1) m / (sqrt(v) / sqrt(c2) + eps) with c = 1 - b^t. Mode "adam" is exactly that.
    Mode "constant" (D1) runs each filter at its step's decay 1 - k_t with no correction; with b = 1 - k_t the
    kernel's corrections fold into lr' = lr c1 / sqrt(c2) and eps' = eps / sqrt(c2), since
    (lr' / c1) m / (sqrt(v) / sqrt(c2) + eps') = lr m / (sqrt(v) + eps), and the decoupled decay keeps
    lr' wd' = lr wd (a coupled L2 term enters the gradient and stays as it is)."""
    if noise == "adam":
        return dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps)
    b1 = moment_coefficients(noise, beta1, step, prior_gain).decay
    b2 = second_moment_coefficients(noise, beta2, step, prior_gain).decay
    c1, c2 = 1 - b1**step, 1 - b2**step
    rate = lr * c1 / math.sqrt(c2)
    decay = weight_decay if coupled or rate == 0 else lr * weight_decay / rate
    return dict(lr=rate, beta1=b1, beta2=b2, weight_decay=decay, eps=eps / math.sqrt(c2))


def torch_kernel_applies(noise: str, variance_adaptation: bool, tensors: tuple,
                         devices: tuple[str, ...] = TORCH_KERNEL_DEVICES) -> bool:
    """Whether a bucket steps through torch's fused Adam kernel: modes "adam"/"constant" without variance adaptation,
    on a device type in `devices`, contiguous tensors (the kernel walks each tensor's memory as one array). A bucket is
    already one CPU or CUDA device and dtype of plain dense tensors (`fusable`, `_buckets`), and torch's grad setter
    keeps each gradient's shape, dtype and device those of its parameter; this runs every step, so it checks only what
    can differ."""
    if noise not in TORCH_KERNEL_MODES or variance_adaptation or not hasattr(torch, "_fused_adamw_"):
        return False
    params, grads, exp_avgs, exp_avg_sqs, _ = tensors
    if params[0].device.type not in devices:
        return False
    return all(map(Tensor.is_contiguous, (*params, *grads, *exp_avgs, *exp_avg_sqs)))


def torch_adam_step(tensors: tuple, step: int, *, noise: str, coupled: bool, maximize: bool, **scalars) -> None:
    """One bucket through torch._fused_adamw_ (torch._fused_adam_ with a coupled L2 term) at `torch_adam_arguments`.
    The kernel reads a step count per tensor and does not write it (the optimizer keeps its own counters)."""
    params, grads, exp_avgs, exp_avg_sqs, _ = tensors
    # On CUDA the kernel reads the count on the device (a fill kernel, no host-device copy to wait for).
    count = torch.full((), float(step), dtype=torch.float32, device=params[0].device)
    kernel = torch._fused_adam_ if coupled else torch._fused_adamw_
    kernel(params, grads, exp_avgs, exp_avg_sqs, [], [count] * len(params), amsgrad=False, maximize=maximize,
           **torch_adam_arguments(noise, step, coupled=coupled, **scalars))


def fused_kalman_adam(cache: KernelCache, params, grads, exp_avgs, exp_avg_sqs, steps, adaptive_states=None, *, noise,
                      beta1, beta2, lr, weight_decay, eps, decoupled_weight_decay=True, maximize=False, prior_gain=None,
                      variance_adaptation=False, adaptation_scale=1.0, adaptive_config=None) -> list[int]:
    """functional.kalman_adam on the fused path. Returns the indices of the tensors it did not step (none unless
    the fused path became unavailable, e.g. no compiler): the caller steps those on the eager path."""
    coupled = weight_decay != 0 and not decoupled_weight_decay
    jobs = []
    for step, key, indices, tensors in _buckets(params, grads, exp_avgs, exp_avg_sqs, steps, adaptive_states,
                                                        cache.state_views):
        if torch_kernel_applies(noise, variance_adaptation, tensors, cache.torch_kernel_devices):
            torch_adam_step(tensors, step, noise=noise, coupled=coupled, maximize=maximize, beta1=beta1, beta2=beta2,
                            lr=lr, weight_decay=weight_decay, eps=eps, prior_gain=prior_gain)
            continue
        if noise == "extrapolated":
            kernel, flags = _extrapolated_kernel, dict(coupled_decay=coupled, maximize=maximize)
            scalars = dict(gain=adam_coefficients(beta1, step).gain, beta2=beta2, one_minus_beta2=1 - beta2,
                           correction2=1 - beta2**step, eps=eps, neg_lr=-lr, weight_decay=weight_decay,
                           neg_lr_weight_decay=-lr * weight_decay if not coupled else 0.0,
                           extrapolation=extrapolated.extrapolation(beta1, step))
        elif noise == "transport":
            kernel, flags = _transport_kernel, dict(coupled_decay=coupled, maximize=maximize)
            scalars = transport_scalars(step, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                                        coupled=coupled, noise_beta=adaptive_config.noise_beta)
        else:
            kernel = _adam_kernel
            flags = dict(noise=noise, variance_adaptation=variance_adaptation, coupled_decay=coupled, maximize=maximize,
                         start_up=noise == "adaptive" and start_up_kind(adaptive_config, step, key[1]))
            scalars = moment_scalars(noise, step, beta1=beta1, beta2=beta2, prior_gain=prior_gain,
                                     config=adaptive_config)
            decay = 1 - lr * weight_decay if weight_decay != 0 and decoupled_weight_decay else 1.0
            scalars.update(param_decay=decay, weight_decay=weight_decay, eps=eps, neg_step_size=-(lr / scalars["correction1"]),
                           sqrt_correction2=scalars["correction2"] ** 0.5, adaptation_scale=adaptation_scale,
                           scale_gain=adaptation_scale * scalars["gain"],
                           has_posterior=_flag(not (noise in INNOVATION_MODELS and step < 2)),
                           **_zero_memory_scalars(scalars, beta1, beta2, dtype=key[1]))
        jobs.append(Job(kernel, flags, scalars, ("adam", *key), tensors, indices, rows=True))
    return _run_all(cache, jobs)


def transport_scalars(step: int, *, lr, beta1, beta2, eps, weight_decay, coupled, noise_beta) -> dict[str, float]:
    """Per-step scalars of noise_models.transport.step."""
    count = step - 2
    rho = 1 / ewma_effective_samples(count, noise_beta) if count >= 2 else 0.0
    return dict(
        lr=lr, neg_lr=-lr, eps=eps, beta2=beta2, one_minus_beta2=1 - beta2, noise_beta=noise_beta,
        one_minus_noise_beta=1 - noise_beta, weight_decay=weight_decay,
        param_decay=1 - lr * weight_decay if weight_decay != 0 and not coupled else 1.0,
        previous_correction2=_one_minus_power(beta2, step - 1),
        previous_gain=adam_coefficients(beta1, step - 1).gain if step >= 2 else 0.0,
        statistics_on=_flag(step >= 3), transport_on=_flag(count >= 2),
        standard_error_factor=rho / (1 - rho) if count >= 2 else 0.0,
        gain=adam_coefficients(beta1, step).gain, correction2=1 - beta2**step,
    )


def _zero_memory_scalars(scalars: dict[str, float], beta1: float, beta2: float, dtype: torch.dtype) -> dict[str, float]:
    """Scalars of functional.observation_noise_from_moments."""
    eps = torch.finfo(dtype).eps
    return dict(excess_scale=(1 - 4 * eps) / scalars["correction2"], inverse_noise_bias=1 / state_noise_bias(beta1, beta2))


def fused_kalman_lamb(cache: KernelCache, params, grads, exp_avgs, exp_avg_sqs, steps, adaptive_states=None, *, noise,
                      beta1, beta2, lr, weight_decay, eps, maximize=False, prior_gain=None, precision_weighting=True,
                      precision_floor=0.01, trust_clip=None, adaptive_config=None) -> list[int]:
    """functional.kalman_lamb on the fused path (same contract as `fused_kalman_adam`)."""
    jobs = []
    for step, key, indices, tensors in _buckets(params, grads, exp_avgs, exp_avg_sqs, steps, adaptive_states,
                                                        cache.state_views):
        flags = dict(noise=noise, precision_weighting=precision_weighting, decay=weight_decay != 0, maximize=maximize,
                     trust_clip=trust_clip, precision_floor=precision_floor,
                     start_up=noise == "adaptive" and start_up_kind(adaptive_config, step, key[1]),
                     previous_mean=PREVIOUS_MEAN_KEY in tensors[4], deferred_update=per_tensor_calls(key[0]))
        scalars = moment_scalars(noise, step, beta1=beta1, beta2=beta2, prior_gain=prior_gain, config=adaptive_config)
        scalars.update(neg_lr=-lr, eps=eps, weight_decay=weight_decay, inverse_correction1=1 / scalars["correction1"],
                       inverse_correction2=1 / scalars["correction2"],
                       has_posterior=_flag(not (noise in INNOVATION_MODELS and step < 2)),
                       **_zero_memory_scalars(scalars, beta1, beta2, dtype=key[1]))
        statistics = None
        if precision_weighting and not flags["previous_mean"]:  # the layer means of P first (a graph that only
            # reads), then the update
            statistics = (_lamb_statistics_kernel, dict(noise=noise, maximize=maximize, start_up=flags["start_up"]))
        elif precision_weighting and not per_tensor_calls(key[0]):  # a bucket's sums first (`_lamb_sums_kernel`)
            flags["precomputed_sums"] = True
            statistics = (_lamb_sums_kernel, dict(noise=noise, maximize=maximize, start_up=flags["start_up"],
                                                  precision_floor=precision_floor, decay=flags["decay"]))
        jobs.append(Job(_lamb_kernel, flags, scalars, ("lamb", *key), tensors, indices, statistics,
                        per_tensor=per_tensor_calls(key[0])))
    return _run_all(cache, jobs)


def per_tensor_calls(device: torch.device) -> bool:
    """Whether LAMB's kernels run once per tensor on `device` (a CPU; see the module's docstring) or once per bucket."""
    return device.type == "cpu"


def _run_all(cache: KernelCache, jobs: list[Job]) -> list[int]:
    """Run every bucket; return the tensor indices that did not run (for the eager path)."""
    remaining: list[int] = []
    for job in jobs:
        remaining.extend(job.indices if remaining else _run(cache, job))
    return sorted(remaining)
