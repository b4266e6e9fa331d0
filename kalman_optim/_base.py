"""The shell shared by KalmanAdam and KalmanLAMB: validation, state, skipping, posterior read-out.

A step runs in two phases so that a step that raises changes nothing: first every group and gradient
is checked (hyper-parameters, sparse or complex gradients, non-finite values when asked to skip), then
state is created and the update applied.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim import Optimizer

from kalman_optim import cuda_graphs
from kalman_optim import fused as fused_path
from kalman_optim._validation import is_dtensor, validate_optimizer_hyperparameters
from kalman_optim.functional import AdaptiveNoiseConfig, adaptive_noise_estimates, observation_noise_from_moments
from kalman_optim.noise_models import INNOVATION_MODELS, STATE_KEYS, extrapolated, innovation, transport
from kalman_optim.schedules import moment_coefficients, normal_quantile, second_moment_coefficients

LOW_PRECISION = (torch.float16, torch.bfloat16)
ADAPTIVE_STATE_KEYS = ("prev_grad", "prev_diff", "diff_sq_avg", "diff_lag_avg")
#: State tensors shaped like their parameter in some mode (checked before a step).
#: CPU with foreach=None: runs of small tensors are stepped by foreach calls in chunks of at most this many elements,
#: tensors of more than a quarter of it one at a time. On a small model the eager step costs kernel calls (a foreach
#: call replaces one per tensor); on large tensors a chain of foreach calls streams every tensor through each op and
#: falls out of cache, which measured up to 2-3x slower than the per-tensor loop (2-core CPU, 40 tensors of 8k-128k
#: elements), while chunks of this size stay within the L2 cache.
FOREACH_CHUNK_ELEMENTS = 32768
PER_ELEMENT_STATE_KEYS = (*ADAPTIVE_STATE_KEYS, "innovation_sq_avg", "curvature_num", "curvature_den", "curvature_resid",
                          "iterate")
_SHAPED_LIKE_PARAMETER = frozenset(("exp_avg", "exp_avg_sq", *PER_ELEMENT_STATE_KEYS))
#: Modes whose state is the step count and the two moments only.
_MOMENTS_ONLY_MODES = frozenset(("adam", "constant"))

#: Defaults of every option, also used by __setstate__ for checkpoints that predate an option.
COMMON_DEFAULTS: dict[str, Any] = dict(
    noise="adam",
    prior_variance=None,
    variance_adaptation=False,
    adaptation_scale=1.0,
    noise_beta=0.99,
    beta_range=(0.5, 0.999),
    maximize=False,
    foreach=None,
    fused=None,
    skip_nonfinite=False,
    nonfinite_skips=0,
    train_mode=True,  # False between optimizer.eval() and optimizer.train() (mode "extrapolated" swaps points)
)


def _state_dtype(param: Tensor) -> torch.dtype:
    """Filter state is kept in float32 for half-precision parameters (the gain can be ~1e-3)."""
    return torch.float32 if param.dtype in LOW_PRECISION else param.dtype


def adaptive_config(group: dict) -> AdaptiveNoiseConfig:
    low, high = group["beta_range"]
    return AdaptiveNoiseConfig(
        noise_beta=float(group["noise_beta"]), beta_min=float(low), beta_max=float(high), prior_beta=float(group["betas"][0])
    )


class KalmanOptimizerBase(Optimizer):
    """Common machinery; subclasses implement `_update_group`."""

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.pop("_checked_states", None)
        for group in self.param_groups:
            for key, value in COMMON_DEFAULTS.items():
                group.setdefault(key, value)
            for key, value in self._extra_defaults().items():
                group.setdefault(key, value)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=torch.float32)

    def _extra_defaults(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load_state_dict, except that the float32 filter state of a half-precision parameter is loaded as
        saved: torch casts floating-point state to the parameter's dtype, which would round it and break the step."""
        super().load_state_dict(state_dict)
        self.__dict__.pop("_checked_states", None)  # every state is checked again at the next step
        saved = state_dict["state"]
        saved_ids = (i for g in state_dict["param_groups"] for i in g["params"])
        for saved_id, p in zip(saved_ids, (p for g in self.param_groups for p in g["params"])):
            if p.dtype not in LOW_PRECISION or saved_id not in saved:
                continue
            for key, value in saved[saved_id].items():
                if key != "step" and torch.is_tensor(value) and value.is_floating_point():
                    self.state[p][key] = value.to(dtype=_state_dtype(p), device=p.device, copy=True)

    def _extra_state_keys(self, group: dict) -> tuple[str, ...]:
        """State a subclass keeps beside its noise model's, passed to the functional step with it."""
        return ()

    @staticmethod
    def _validate_group(group: dict) -> None:
        """Raise ValueError/TypeError naming the first invalid hyper-parameter (subclasses add theirs)."""
        validate_optimizer_hyperparameters(group)

    def add_param_group(self, param_group: dict) -> None:
        # Validate the group as it will be stored before adding it, so a bad group changes nothing.
        self._validate_group({**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}})
        super().add_param_group(param_group)

    @property
    def nonfinite_skips(self) -> int:
        """Number of steps skipped because a gradient was not finite (with skip_nonfinite=True)."""
        return max((int(g.get("nonfinite_skips", 0)) for g in self.param_groups), default=0)

    # ----------------------------------------------------------------------------------------- step
    def _collect(self) -> list[tuple[dict, list[Tensor]]]:
        """Phase 1: validate everything; return each group's parameters that have a gradient."""
        if cuda_graphs.capturing():
            # The per-step scalars are host values: a recorded step would replay this step's forever (torch's
            # optimizers refuse the same without capturable=True). The fused path replays CUDA graphs of its own.
            raise RuntimeError(f"{type(self).__name__}.step() cannot be recorded in a CUDA graph (its per-step scalars "
                               "are computed on the host); on CUDA, fused=True replays graphs of its own kernels")
        plan = []
        states, checked = self.state, self.__dict__.setdefault("_checked_states", {})
        for group_index, group in enumerate(self.param_groups):
            self._validate_group(group)
            if group["noise"] == "extrapolated" and not group["train_mode"]:
                raise ValueError(f"Invalid call: param group {group_index} (noise='extrapolated') holds its iterate after "
                                 "optimizer.eval(); call optimizer.train() before step() (nothing was updated)")
            params, noise = [], group["noise"]
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                if not p.is_floating_point():  # complex tensors are not floating point: one test for both
                    if p.is_complex():
                        raise TypeError(
                            f"{type(self).__name__} does not support complex parameters (the filter is defined for "
                            "real gradients); optimize torch.view_as_real(p) instead"
                        )
                    raise TypeError(f"{type(self).__name__} needs floating-point parameters, got {p.dtype}")
                state = states.get(p)
                if state:  # walked again only when its tensors (identities) or the mode changed since its last check
                    signature = (noise, tuple(map(id, state.values())))
                    if checked.get(id(p)) != signature:
                        self._check_state_shapes(p, state, noise, group_index, len(params))
                        checked[id(p)] = signature
                params.append(p)
            if group["fused"] and params and not fused_path.fusable(params):
                raise ValueError(
                    f"Invalid fused: fused=True supports plain CPU and CUDA tensors; param group {group_index} has "
                    f"{type(params[0]).__name__} parameters on {params[0].device.type} (DTensor/FSDP2 parameters take "
                    "the foreach path: fused=None or False)"
                )
            plan.append((group, params))
        return plan

    def _check_state_shapes(self, p: Tensor, state: dict, noise: str, group_index: int, index: int) -> None:
        """A state loaded for another model (load_state_dict does not check shapes) is rejected before any update.
        `_collect` calls this every step for a state whose tensors (their identities) or mode changed since its last
        check (a state can also be replaced by hand): the walk costs ~1 us per tensor, as much as the rest of a fused
        step's bookkeeping for it."""
        shape = p.shape
        for key, value in state.items():
            if key in _SHAPED_LIKE_PARAMETER and torch.is_tensor(value) and value.shape != shape:
                self._raise_state_shape(key, value, p, group_index, index)
        if "lag_prev" in state and not _switched_innovation_mode(state, noise):  # a strided sample of the mode's size
            model, exp_avg = INNOVATION_MODELS.get(noise, innovation), state["exp_avg"]
            # The sample's length without building it (a view per tensor per step costs more than the check).
            expected = (model.sample_of(exp_avg).shape if is_dtensor(exp_avg)
                        else torch.Size([model.sample_count(exp_avg.numel())]))
            if torch.is_tensor(state["lag_prev"]) and state["lag_prev"].shape != expected:
                self._raise_state_shape("lag_prev", state["lag_prev"], p, group_index, index)

    @staticmethod
    def _raise_state_shape(key: str, value: Tensor, p: Tensor, group_index: int, index: int):
        raise ValueError(
            f"Invalid optimizer state: {key!r} of parameter {index} with a gradient in param group {group_index} "
            f"has shape {tuple(value.shape)}, the parameter {tuple(p.shape)}; the state_dict was saved for "
            "another model (nothing was updated)"
        )

    def _has_nonfinite_gradient(self, plan) -> bool:
        flags = [torch.isfinite(p.grad).all() for group, params in plan if group["skip_nonfinite"] for p in params]
        return bool(flags) and not bool(torch.stack(flags).all())

    def _init_state(self, group: dict, p: Tensor) -> dict:
        state = self.state[p]
        if len(state) == 0:
            dtype = _state_dtype(p)
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
        if group["noise"] == "adaptive" and "prev_grad" not in state:
            for key in ADAPTIVE_STATE_KEYS:
                state[key] = torch.zeros_like(state["exp_avg"], memory_format=torch.preserve_format)
        switched = _switched_innovation_mode(state, group["noise"])
        if group["noise"] in INNOVATION_MODELS and (switched or any(key not in state for key in INNOVATION_MODELS[group["noise"]].STATE_KEYS)):
            # A state saved in the other innovation mode keeps R (the same statistic); its lag statistic has another
            # sample and normalization ("innovation" has no lag_prev_sq), so it starts afresh.
            fresh = INNOVATION_MODELS[group["noise"]].init_state(state["exp_avg"])
            if switched:
                for key in ("lag_prev", "lag_prev_sq", "lag_num", "lag_den"):
                    state.pop(key, None)
            for key, value in fresh.items():
                state.setdefault(key, value)
        if group["noise"] == "transport" and "prev_grad" not in state:
            state.update(transport.init_state(state["exp_avg"]))
        if group["noise"] == "extrapolated" and "iterate" not in state:
            state.update(extrapolated.init_state(p, state["exp_avg"].dtype))
        return state

    # ----------------------------------------------------------------------------------------- train / eval
    @torch.no_grad()
    def eval(self) -> None:
        """Put the iterate into the parameters, to evaluate or save the model. A no-op except in mode
        "extrapolated", whose parameters hold the extrapolated point where the next gradient is taken (D8)."""
        self._switch_points(train=False)

    @torch.no_grad()
    def train(self) -> None:
        """Undo `eval` (bit for bit) before the next training forward pass; a no-op after `train`."""
        self._switch_points(train=True)

    def _switch_points(self, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            if group["noise"] == "extrapolated":
                for p in group["params"]:
                    state = self.state.get(p)
                    if state and "iterate" in state:
                        (extrapolated.to_extrapolated if train else extrapolated.to_iterate)(p, state)
            group["train_mode"] = train

    def _eager_batches(self, group: dict, params: list[Tensor]) -> list[tuple[list[int], bool]]:
        """(indices, foreach) of the eager path's calls: foreach=True/False as asked; with None, foreach on CUDA and,
        on CPU, foreach over runs of small tensors of at most FOREACH_CHUNK_ELEMENTS elements in all, the larger
        tensors one at a time (see FOREACH_CHUNK_ELEMENTS)."""
        index = list(range(len(params)))
        if group["foreach"] is not None or not params or all(p.is_cuda for p in params):
            return [(index, bool(group["foreach"]) if group["foreach"] is not None else bool(params))]
        batches, chunk, size = [], [], 0
        for i, p in enumerate(params):
            n = p.numel()
            if n > FOREACH_CHUNK_ELEMENTS // 4:
                batches.append(([i], False))
                continue
            if size + n > FOREACH_CHUNK_ELEMENTS and chunk:
                batches.append((chunk, True))
                chunk, size = [], 0
            chunk.append(i)
            size += n
        if chunk:
            batches.append((chunk, True))
        return batches

    def _use_fused(self, group: dict, params: list[Tensor]) -> bool:
        """fused=True: the compiled path (eager with one warning if no compiler); None: compiled when a compiler is
        available and the group is large enough for the one-time compile to pay off (fused.AUTO_MIN_ELEMENTS)."""
        choice = group["fused"]
        if choice is False or not params or (choice is None and not fused_path.fusable(params)):
            return False  # fused=True: _collect has checked fusable
        available = fused_path.compiler_available(params[0].device.type)
        if choice is None:
            return available and sum(p.numel() for p in params) >= fused_path.AUTO_MIN_ELEMENTS
        if not available:
            self._kernel_cache(group).disable(f"no compiler for {params[0].device.type} tensors (inductor needs a C++ "
                                              "compiler on CPU, Triton on CUDA)")
            return False
        return self._kernel_cache(group).disabled_reason is None

    def _kernel_cache(self, group: dict) -> fused_path.KernelCache:
        """The compiled kernels of a param group (created lazily: not part of state_dict, pickling or deepcopy)."""
        caches = self.__dict__.setdefault("_kernel_caches", {})
        index = next(i for i, g in enumerate(self.param_groups) if g is group)
        return caches.setdefault(index, fused_path.KernelCache())

    @property
    def fused_compilations(self) -> int:
        """Graphs compiled by the fused path so far (constant after the first steps: nothing recompiles)."""
        return sum(cache.compilations for cache in self.__dict__.get("_kernel_caches", {}).values())

    # Under a caller's torch.compile the step runs as this code, not traced: its per-step scalars are Python numbers
    # (a trace would specialize on the step count and recompile every step until dynamo's limit), and the fused path
    # compiles its own kernels with the scalars as tensors. The caller's graph breaks here, once.
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plan = self._collect()
        if self._has_nonfinite_gradient(plan):
            for group in self.param_groups:
                group["nonfinite_skips"] = int(group.get("nonfinite_skips", 0)) + 1
            return loss
        for group, params in plan:
            if params:
                self._update_group(group, params)
        return loss

    def _gather(self, group: dict, params: list[Tensor]):
        """State lists for the functional API, with float32 working copies of half-precision tensors."""
        work_params, grads, states = [], [], []
        all_state, moments_only = self.state, group["noise"] in _MOMENTS_ONLY_MODES
        for p in params:
            state = all_state[p]
            if not (state and moments_only):  # a new state, or a mode that may add to it (see _init_state)
                state = self._init_state(group, p)
            states.append(state)
            if p.dtype in LOW_PRECISION:
                work_params.append(p.detach().float())
                grads.append(p.grad.float())
            else:
                work_params.append(p)
                grads.append(p.grad)
        steps = _advance_counters([s["step"] for s in states], self.__dict__.setdefault("_counter_views", {}))
        return work_params, grads, states, steps

    @staticmethod
    def _write_back(params: list[Tensor], work_params: list[Tensor]) -> None:
        for p, w in zip(params, work_params):
            if w is not p:
                p.copy_(w)

    def _update_group(self, group: dict, params: list[Tensor]) -> None:
        """Gather the group's tensors, run the subclass's functional step, write half precision back."""
        work_params, grads, states, steps = self._gather(group, params)
        keys = (*STATE_KEYS[group["noise"]], *self._extra_state_keys(group))
        adaptive = {key: [s[key] for s in states] for key in keys} if keys else None
        tensors = (work_params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], steps, adaptive)
        options = self._functional_options(group)
        if self._use_fused(group, params):
            remaining = self._fused_functional_step(self._kernel_cache(group), *tensors, **options)
            if not remaining:
                self._write_back(params, work_params)
                return
            # The fused path became unavailable (a compiler failure, warned once): the rest takes the eager path.
            tensors = _pick_tensors(tensors, remaining)
        for index, foreach in self._eager_batches(group, tensors[0]):
            self._functional_step(*_pick_tensors(tensors, index), foreach=foreach, **options)
        self._write_back(params, work_params)

    def _functional_step(self, *tensors, **options) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fused_functional_step(self, cache, *tensors, **options) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _functional_options(self, group: dict) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------------------ posterior read-out
    def _group_of(self, p: Tensor) -> dict:
        for group in self.param_groups:
            if any(p is q for q in group["params"]):
                return group
        raise ValueError("parameter is not managed by this optimizer")

    @torch.no_grad()
    def gradient_posterior(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """Filtered gradient estimate and its posterior variance for parameter `p` (float32 or p's dtype).

        mean = the first moment's posterior mean (Adam's bias-corrected m_hat in modes "adam"/"innovation"/"fitted").
        variance, by mode:
          "innovation" (D7, calibrated): the mean-squared error of m_hat read off the filter's own innovations,
              valid whatever the true noise ratio or drift (E7: from step 100 on, 95% intervals cover 0.94-0.96 of
              simulated series whose noise ratio is 0-100x the filter's at the default noise_beta=0.99; in E2's
              training runs on a CNN, a ResNet and a transformer 50/90/95% intervals within a few points of nominal,
              noise_beta=0.9 or 0.95 following a changing noise level faster than the default).
              Before step ~50, when the true noise ratio is 10-100x the filter's, too narrow (0.64 at 100x, E7).
              Infinite at step 1.
          "fitted" (D7, model-based read-out, calibrated from step 2 in simulation): R E_t(rho)/M_t(rho), the error
              of a local-level model fitted to the same innovations, with the model's own simulated interval quantile for the
              first 100 steps; E7: 95% intervals cover 0.932-0.960 at every step from 2 on at ratios 0-100x; in
              training close to "innovation" at the same noise_beta (E2). A tensor of fewer than
              fitted.MIN_SAMPLED_COORDINATES (32) coordinates reads out the filter's own noise ratio; with
              noise_beta=0.999 one coordinate's variance is within 1.5x of the exact filter's from step 50 on nearly as
              often as the exact filter with r estimated by maximum likelihood (E7: 0.915 against 0.92 of series; 0.88 at
              the default 0.99). Infinite at step 1.
          "adam"/"constant" (D2/D3, NOT calibrated): k_t r_hat with the zero-memory r_hat = max(v_hat - m_hat^2, 0) / c;
              v - m^2 mixes the level's drift into r and is <= 0 for about half of the coordinates of a random walk
              (D7), so intervals are far too narrow, often of zero width.
          "adaptive" (D4, NOT calibrated): per-coordinate gain times -Cov(d_t, d_{t-1}); coverage decays in long runs.
        For maximize=True the estimate is of p.grad itself (sign restored).
        """
        group = self._group_of(p)
        state = self.state.get(p, {})
        if not state:
            raise ValueError("no filter state for this parameter yet: call step() with a gradient first")
        step = int(state["step"].item())
        beta1, beta2 = (float(b) for b in group["betas"])
        noise, prior = group["noise"], group["prior_variance"]
        if noise in ("transport", "extrapolated"):
            raise ValueError(f"noise={noise!r} keeps no noise statistic, so it has no posterior variance; "
                             "use noise='innovation' for calibrated intervals")
        second = second_moment_coefficients(noise, beta2, step, prior)
        if noise == "adaptive":
            mean = state["exp_avg"].clone()
            gain, r_hat = adaptive_noise_estimates(state["diff_sq_avg"], state["diff_lag_avg"], step, adaptive_config(group))
            variance = gain * r_hat
        elif noise in INNOVATION_MODELS:
            mean = state["exp_avg"] / moment_coefficients("adam", beta1, step, None).correction
            variance = INNOVATION_MODELS[noise].posterior_variance(state, step, beta1, float(group["noise_beta"]))
            variance = torch.full_like(mean, math.inf) if variance is None else variance
        else:
            first = moment_coefficients(noise, beta1, step, prior)
            mean = state["exp_avg"] / first.correction
            r_hat = observation_noise_from_moments(mean.square(), state["exp_avg_sq"], second.correction, beta1, beta2)
            variance = first.gain * r_hat
        if group["maximize"]:
            mean = mean.neg_()
        return mean, variance

    def interval_quantile(self, p: Tensor, level: float = 0.95) -> float:
        """The multiplier of sqrt(variance) in `confidence_interval`: in mode "innovation" Student-t with the effective
        sample size of the noise statistic, in mode "fitted" the model's simulated quantile for its first
        SIMULATED_STEPS steps and that Student-t later (D7), the normal quantile otherwise (D3)."""
        group = self._group_of(p)
        if group["noise"] in INNOVATION_MODELS:
            state = self.state.get(p, {})
            step = int(state["step"].item()) if state else 0
            beta1 = float(group["betas"][0])
            return INNOVATION_MODELS[group["noise"]].interval_quantile(state, step, beta1, float(group["noise_beta"]), level)
        return normal_quantile(level)

    def confidence_interval(self, p: Tensor, level: float = 0.95) -> tuple[Tensor, Tensor]:
        """Two-sided `level` interval for the true (noise-free, full-batch) gradient: mean -/+ quantile sqrt(variance).

        The calibrated read-outs are modes "innovation" and "fitted" (D7); see `gradient_posterior` for what each
        mode's intervals are worth."""
        quantile = self.interval_quantile(p, level)
        mean, variance = self.gradient_posterior(p)
        half_width = variance.sqrt().mul_(quantile)
        return mean - half_width, mean + half_width


def _switched_innovation_mode(state: dict, noise: str) -> bool:
    """A state with a lag statistic saved in the other innovation mode (only "fitted" keeps lag_prev_sq)."""
    return noise in INNOVATION_MODELS and "lag_prev" in state and ("lag_prev_sq" in state) != (noise == "fitted")


def _advance_counters(counters: list[Tensor], views: dict[int, tuple[Tensor, np.ndarray]]) -> list[int]:
    """Each counter's next step (its value + 1), written to it. A plain CPU counter is read and written through a
    NumPy view of its memory, made once per counter and kept in `views` (keyed by id, checked by identity): a torch
    op on a 0-dim tensor costs ~2 us of host time, as much as the rest of a fused step's bookkeeping for a tensor
    (10 counters: 22 -> 3 us; 100: 145 -> 30 us). Other counters take `_write_counters`."""
    if len(views) > 2 * len(counters) + 64:  # counters of states since replaced (load_state_dict): forget them
        views.clear()
    arrays, get = [], views.get
    for counter in counters:
        entry = get(id(counter))
        if entry is None or entry[0] is not counter:
            array = _numpy_view(counter)
            if array is None:  # before any counter is written
                steps = [int(c.item()) + 1 for c in counters]
                _write_counters(counters, steps)
                return steps
            entry = views[id(counter)] = (counter, array)
        arrays.append(entry[1])
    steps = [int(array) + 1 for array in arrays]  # all read before any is written, as before
    for array, step in zip(arrays, steps):
        array[()] = step
    return steps


def _numpy_view(counter: Tensor) -> np.ndarray | None:
    """A 0-dim NumPy array on `counter`'s memory, or None where there is none (not a plain CPU tensor, or a dtype
    NumPy lacks)."""
    if type(counter) is not Tensor or counter.device.type != "cpu" or counter.requires_grad or counter.dim() != 0:
        return None
    try:
        return counter.numpy()
    except (TypeError, RuntimeError):
        return None


def _write_counters(counters: list[Tensor], steps: list[int]) -> None:
    """counter.fill_(step) for each pair, as one foreach copy per distinct step (usually one per group): a 0-dim
    add_ per tensor costs ~1.7 us, the same as the rest of the step's bookkeeping for it."""
    sources: dict[tuple, Tensor] = {}
    for counter, step in zip(counters, steps):
        key = (step, counter.dtype, counter.device)
        if key not in sources:
            sources[key] = torch.tensor(float(step), dtype=counter.dtype, device=counter.device)
    torch._foreach_copy_(counters, [sources[(step, c.dtype, c.device)] for c, step in zip(counters, steps)])


def _pick(values: list, index: list[int]) -> list:
    return [values[i] for i in index]


def _pick_tensors(tensors: tuple, index: list[int]) -> tuple:
    """The functional step's arguments (five lists and the optional dict of state lists) for tensors `index`."""
    lists, states = tensors[:5], tensors[5]
    return tuple(_pick(values, index) for values in lists) + (
        None if states is None else {key: _pick(values, index) for key, values in states.items()},)


def group_scalars(group: dict) -> dict[str, Any]:
    """Plain-float hyper-parameters of a group for the functional API (tensor lr/betas become floats)."""
    beta1, beta2 = (float(b) for b in group["betas"])
    prior = group["prior_variance"]
    return dict(
        noise=group["noise"],
        beta1=beta1,
        beta2=beta2,
        lr=float(group["lr"]),
        weight_decay=float(group["weight_decay"]),
        eps=float(group["eps"]),
        maximize=bool(group["maximize"]),
        prior_gain=None if prior is None else float(prior),
        variance_adaptation=bool(group["variance_adaptation"]),
        adaptation_scale=float(group["adaptation_scale"]),
        adaptive_config=adaptive_config(group) if group["noise"] in ("adaptive", "transport", *INNOVATION_MODELS) else None,
    )

