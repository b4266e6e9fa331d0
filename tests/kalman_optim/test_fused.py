"""The fused path (kalman_optim/fused.py): every mode equals the reference path step by step, compiles once, and
falls back cleanly. Compiling takes seconds, so each configuration is compiled once per test."""

import copy
import io
import math
import os
import warnings

import pytest
import torch

from kalman_optim import KalmanAdam, KalmanLAMB
from kalman_optim import fused as fused_path
from kalman_optim.functional import AdaptiveNoiseConfig, start_up_active

#: The device the fused path is tested on: the CPU by default; KALMAN_OPTIM_TEST_DEVICE=cuda runs the file on a GPU.
DEVICE = torch.device(os.environ.get("KALMAN_OPTIM_TEST_DEVICE", "cpu"))
pytestmark = pytest.mark.skipif(not fused_path.compiler_available(DEVICE.type), reason=f"no compiler for {DEVICE.type}")

#: Every mode and every option that changes the fused graph, at non-default values that tell them apart.
CONFIGS = {
    # Modes adam and constant run through torch's fused Adam kernel on a CPU; "-inductor": through the compiled
    # kernel, which they take on CUDA (fused.TORCH_KERNEL_DEVICES) and for non-contiguous tensors.
    "adam": (KalmanAdam, dict(noise="adam")),
    "adam-l2-maximize": (KalmanAdam, dict(noise="adam", decoupled_weight_decay=False, maximize=True)),
    "constant-prior": (KalmanAdam, dict(noise="constant", prior_variance=0.5)),
    "constant-l2-maximize": (KalmanAdam, dict(noise="constant", decoupled_weight_decay=False, maximize=True)),
    "adam-inductor": (KalmanAdam, dict(noise="adam")),
    "constant-prior-inductor": (KalmanAdam, dict(noise="constant", prior_variance=0.5)),
    "adam-va": (KalmanAdam, dict(noise="adam", variance_adaptation=True, adaptation_scale=3.0)),
    "adaptive-va": (KalmanAdam, dict(noise="adaptive", variance_adaptation=True, adaptation_scale=0.5, noise_beta=0.95,
                                     beta_range=(0.6, 0.99))),
    # beta_min = 0.3 puts lambda / 4 outside the asinh series' range: the start-up factor's log1p/tanh formula.
    "adaptive-wide-beta-range": (KalmanAdam, dict(noise="adaptive", beta_range=(0.3, 0.999))),
    "innovation": (KalmanAdam, dict(noise="innovation", noise_beta=0.9)),
    "innovation-va": (KalmanAdam, dict(noise="innovation", variance_adaptation=True, adaptation_scale=2.0)),
    "fitted-va": (KalmanAdam, dict(noise="fitted", variance_adaptation=True, adaptation_scale=2.0, noise_beta=0.95)),
    "lamb-pw-fitted": (KalmanLAMB, dict(noise="fitted")),
    "transport": (KalmanAdam, dict(noise="transport", noise_beta=0.95)),
    "transport-l2": (KalmanAdam, dict(noise="transport", decoupled_weight_decay=False)),
    "extrapolated": (KalmanAdam, dict(noise="extrapolated", betas=(0.8, 0.99))),
    "extrapolated-l2-maximize": (KalmanAdam, dict(noise="extrapolated", decoupled_weight_decay=False, maximize=True)),
    "lamb": (KalmanLAMB, dict(noise="adam", precision_weighting=False, trust_clip=0.5)),  # the clip binds
    "lamb-pw-constant": (KalmanLAMB, dict(noise="constant", precision_floor=0.1)),
    "lamb-pw-adaptive-maximize": (KalmanLAMB, dict(noise="adaptive", maximize=True)),
    "lamb-pw-innovation": (KalmanLAMB, dict(noise="innovation", noise_beta=0.95)),
    # The other lamb-pw cases divide by the previous step's layer mean (the default); these by this step's.
    "lamb-pw-current-mean": (KalmanLAMB, dict(noise="adam", precision_mean="current", precision_floor=0.1)),
    "lamb-pw-current-mean-innovation": (KalmanLAMB, dict(noise="innovation", precision_mean="current")),
    # "-bucket": LAMB's kernels once per bucket (a multi-tensor graph, as on CUDA) instead of once per tensor.
    "lamb-bucket": (KalmanLAMB, dict(noise="adam", precision_weighting=False, trust_clip=0.5)),
    "lamb-pw-adaptive-maximize-bucket": (KalmanLAMB, dict(noise="adaptive", maximize=True)),
    # The zero-memory noise's folded weight scale (k / c times the layer mean's reciprocal) in the bucket graph.
    "lamb-pw-constant-bucket": (KalmanLAMB, dict(noise="constant", precision_floor=0.1)),
    "lamb-pw-current-mean-innovation-bucket": (KalmanLAMB, dict(noise="innovation", precision_mean="current")),
}
#: Where float32 cannot hold 1e-6 over 1000 steps (float64 holds 1e-12 everywhere): statistics that are differences of
#: nearly equal terms -- D4's q_hat = c0 + 2 c1 behind the adaptive gain, D8's IV ratio N / D where D ~ 0 -- turn the
#: 1-ulp differences between ATen's and inductor's sqrt/exp into larger ones. Measured maxima in the comments.
FLOAT32_BOUNDS = {
    ("adaptive", "param"): 5e-6,  # 1.7e-6 (KalmanLAMB)
    ("adaptive", "exp_avg"): 1e-5,  # 1.5e-6
    ("adaptive", "diff_sq_avg"): 1e-5,
    ("adaptive", "diff_lag_avg"): 1e-5,
    ("transport", "curvature_num"): 1e-5,  # 2.7e-6
    ("transport", "curvature_den"): 1e-5,
    # The layer mean of P: a float32 sum of up to 2100 terms in inductor's order, not ATen's. 1.3e-6 measured.
    ("innovation", "layer_mean_variance"): 5e-6,
    ("adam", "layer_mean_variance"): 5e-6,
    ("fitted", "layer_mean_variance"): 5e-6,  # 1.02e-6
    ("adaptive", "layer_mean_variance"): 5e-5,  # 1.4e-5: the mean of k_t r_hat, r_hat = -c1 from the statistics above
    ("transport", "curvature_resid"): 3e-3,  # 6.7e-4: (y - h_raw dtheta)^2 with h_raw = N / D where D ~ 0 (shrunk to 0)
}
SHAPES = [(40,), (6, 25), (3, 4, 5), (1,), (2100,)]  # 2100 > innovation.SAMPLE_SIZE: a strided sample


def _params(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype).to(DEVICE)) for shape in SHAPES]


def _gradient_stream(params, steps, seed=1):
    """g = x_t + noise: each coordinate's true gradient a random walk (the filter's model, q / r = 0.01) plus the
    parameter's own pull (0.1 p), so the update feeds back into the gradients as in training."""
    generator = torch.Generator().manual_seed(seed)
    levels = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    for _ in range(steps):
        grads = []
        for level, p in zip(levels, params):
            level.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype), alpha=0.1)
            noisy = level + torch.randn(p.shape, generator=generator, dtype=p.dtype)  # drawn on the CPU: same on any device
            grads.append(noisy.to(p.device) + 0.1 * p.detach())
        yield grads


def _step_side_by_side(first, second, params, other_params, stream):
    """Step two optimizers on the same gradients (copies for the second), one step per item of `stream`."""
    for grads in stream:
        for p, q, g in zip(params, other_params, grads):
            p.grad, q.grad = g, g.clone()
        first.step()
        second.step()


def _run(make, options, dtype, steps, fused, lr=1e-3):
    params = _params(dtype)
    optimizer = make(params, lr=lr, weight_decay=0.1, fused=fused, foreach=None if fused else False, **options)
    for step, grads in enumerate(_gradient_stream(params, steps)):
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        if step == 0:
            optimizer.compilations_after_first_step = optimizer.fused_compilations
    return params, optimizer


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["float32", "float64"])
@pytest.mark.parametrize("name", CONFIGS)
def test_fused_equals_reference_over_1000_steps(name, dtype, tolerance, monkeypatch, record_property):
    make, options = CONFIGS[name]
    if name.endswith("-inductor"):
        monkeypatch.setattr(fused_path, "torch_kernel_applies", lambda *args: False)
    if name.endswith("-bucket"):
        monkeypatch.setattr(fused_path, "per_tensor_calls", lambda device: False)
    reference, ref_optimizer = _run(make, options, dtype, 1000, fused=False)
    fused, fused_optimizer = _run(make, options, dtype, 1000, fused=True)
    # Nothing recompiles after the first step; mode "adaptive" compiles its kernels once more, without the start-up
    # factor, at the step the factor becomes exactly 1 (adaptive-va's beta_range ends it at step ~800 in float32).
    low, high = options.get("beta_range", (0.5, 0.999))
    config = AdaptiveNoiseConfig(noise_beta=0.99, beta_min=low, beta_max=high, prior_beta=0.9)
    start_up_ends = options["noise"] == "adaptive" and not start_up_active(config, 1000, dtype)
    first = fused_optimizer.compilations_after_first_step
    assert fused_optimizer.fused_compilations == first * (1 + start_up_ends)
    if make is KalmanAdam:  # one graph for the whole bucket, none on torch's kernel
        assert first == (0 if fused_path.torch_kernel_applies(options["noise"], options.get("variance_adaptation", False),
                                                              (reference, reference, reference, reference, {})) else 1)
    else:
        # KalmanLAMB steps each tensor, flattened, through one graph (on a CPU): dynamo compiles the first length as
        # it is, then a length-generic graph, and specializes length 1 (at most 4 per kernel: inductor also tells
        # lengths above 4096 apart); or the whole bucket through one graph. Twice for precision weighting with this
        # step's layer means (the means' graph of reductions, then the update), and in a bucket for precision
        # weighting with either mean (a graph of the sums, then the update).
        weighted = options.get("precision_weighting", True)
        lamb_two_graphs = weighted and options.get("precision_mean") == "current"
        if fused_path.per_tensor_calls(DEVICE):
            assert 2 <= first <= 4 * (2 if lamb_two_graphs else 1)
        else:
            assert first == (2 if weighted else 1)
    if name == "adaptive-va":
        assert start_up_ends == (dtype == torch.float32)  # both kernels are compared below
    float32 = dtype == torch.float32
    # On CUDA, float32 kernels round differently from ATen's (contractions, fast division), so no bit-level
    # agreement bounds them: the fused path must stay as close to the reference as torch's own fused AdamW stays to
    # its single-tensor path on the same gradient stream, within CUDA_FLOAT32_FACTOR.
    floor = CUDA_FLOAT32_FACTOR * adamw_paths_divergence() if float32 and DEVICE.type == "cuda" else 0.0
    measured = {}
    for index, (p, q) in enumerate(zip(reference, fused)):
        bound = max(FLOAT32_BOUNDS.get((options["noise"], "param"), tolerance) if float32 else tolerance, floor)
        measured[f"param {index}"] = error = _relative_error(p, q)
        assert error <= bound, f"tensor {index}: relative error {error:.3g} > {bound:.3g}"
        for key, value in ref_optimizer.state[p].items():
            bound = max(FLOAT32_BOUNDS.get((options["noise"], key), tolerance) if float32 else tolerance, floor)
            measured[f"{key} {index}"] = error = _relative_error(value, fused_optimizer.state[q][key])
            assert error <= bound, f"{key} of {index}: relative error {error:.3g} > {bound:.3g}"
    record_property("largest_relative_error", max(measured.values()))


#: On CUDA, float32: how many times torch's own fused-vs-single-tensor AdamW divergence the fused path may reach.
CUDA_FLOAT32_FACTOR = 10.0


def _relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    """max |a - b| / max |a| (0 where both are 0)."""
    scale = reference.abs().max().item()
    difference = (reference - other).abs().max().item()
    return difference / scale if scale > 0 else difference


_ADAMW_DIVERGENCE: list[float] = []


def adamw_paths_divergence() -> float:
    """torch.optim.AdamW fused=True against foreach=False over the test's 1000 float32 steps on DEVICE: the largest
    relative difference of parameters and moments (computed once)."""
    if not _ADAMW_DIVERGENCE:
        runs = []
        for options in (dict(fused=True), dict(foreach=False)):
            params = _params(torch.float32)
            optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, **options)
            for grads in _gradient_stream(params, 1000):
                for p, g in zip(params, grads):
                    p.grad = g
                optimizer.step()
            runs.append([(p, optimizer.state[p]) for p in params])
        errors = [max(_relative_error(p, q), _relative_error(a["exp_avg"], b["exp_avg"]),
                      _relative_error(a["exp_avg_sq"], b["exp_avg_sq"])) for (p, a), (q, b) in zip(*runs)]
        _ADAMW_DIVERGENCE.append(max(max(errors), 1e-7))
    return _ADAMW_DIVERGENCE[0]


def test_torch_adamw_paths_agree_on_the_test_stream(record_property):
    """The yardstick of the CUDA float32 bound: torch's own paths agree to float32 rounding amplified by 1000 steps."""
    divergence = adamw_paths_divergence()
    record_property("adamw_paths_divergence", divergence)
    assert divergence < 1e-3


def test_nothing_recompiles_with_a_scheduler_a_tensor_lr_or_new_gradients():
    params = _params(torch.float32)
    optimizer = KalmanAdam(params, lr=torch.tensor(1e-2), noise="innovation", variance_adaptation=True, fused=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=60, cycle_momentum=True)
    for step, grads in enumerate(_gradient_stream(params, 60)):
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        scheduler.step()
        if step == 0:
            after_warm_up = optimizer.fused_compilations
    assert after_warm_up == 1 and optimizer.fused_compilations == 1


def test_an_option_changed_between_steps_compiles_its_own_kernel():
    """maximize is a structure flag of the kernel: flipping it on a group after the first compile must not reuse the
    kernel compiled without it."""
    stepped = []
    for fused in (True, False):
        params = _params(torch.float32)
        optimizer = KalmanAdam(params, lr=1e-2, noise="innovation", fused=fused, foreach=None if fused else False)
        for step, grads in enumerate(_gradient_stream(params, 6)):
            optimizer.param_groups[0]["maximize"] = step >= 3
            for p, g in zip(params, grads):
                p.grad = g
            optimizer.step()
        stepped.append((params, optimizer.fused_compilations))
    (fused, compilations), (eager, _) = stepped
    assert compilations == 2
    for p, q in zip(fused, eager):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("noise", ["adam", "constant"])
def test_adam_and_constant_take_torchs_kernel_only_for_contiguous_tensors(noise):
    """A bucket with a non-contiguous tensor (a transposed view) goes through the compiled kernel; both paths equal
    the reference, and torch's kernel compiles nothing."""
    results = []
    for transposed in (False, True):
        params = _params(torch.float64)
        if transposed:
            params[1] = torch.nn.Parameter(params[1].detach().t().contiguous().t())  # same values, strides (1, 6)
        reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
        options = dict(noise=noise, lr=1e-2, weight_decay=0.1, **(dict(prior_variance=0.5) if noise == "constant" else {}))
        fused, eager = KalmanAdam(params, fused=True, **options), KalmanAdam(reference, fused=False, **options)
        _step_side_by_side(fused, eager, params, reference, _gradient_stream(params, 20))
        for p, q in zip(params, reference):
            assert (p - q).abs().max() <= 1e-12 * q.abs().max()
        results.append(fused.fused_compilations)
    assert results == [0 if DEVICE.type in fused_path.TORCH_KERNEL_DEVICES else 1, 1]


@pytest.mark.parametrize("devices", [(), ("cpu", "cuda")], ids=["compiled", "torch-kernel"])
def test_a_param_groups_kernel_cache_chooses_torchs_kernel_or_the_compiled_one(devices):
    """`KernelCache.torch_kernel_devices` overrides the device default for one optimizer (bench_fused's A/B): mode
    adam then compiles its kernel or none, and both equal the reference."""
    params = _params(torch.float64)
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fused = KalmanAdam(params, fused=True, lr=1e-2, weight_decay=0.1)
    fused._kernel_cache(fused.param_groups[0]).torch_kernel_devices = devices
    eager = KalmanAdam(reference, fused=False, lr=1e-2, weight_decay=0.1)
    _step_side_by_side(fused, eager, params, reference, _gradient_stream(params, 20))
    for p, q in zip(params, reference):
        assert (p - q).abs().max() <= 1e-12 * q.abs().max()
    assert fused.fused_compilations == (1 if DEVICE.type not in devices else 0)


def test_torch_kernel_arguments_fold_the_constant_filters_decays():
    """Mode constant's step through the kernel's formula at `torch_adam_arguments` equals lr m / (sqrt(v) + eps), and
    the decoupled decay lr wd is kept."""
    for step in (1, 2, 7, 500):
        arguments = fused_path.torch_adam_arguments("constant", step, beta1=0.9, beta2=0.99, lr=1e-3, weight_decay=0.1,
                                                    eps=1e-8, coupled=False, prior_gain=0.5)
        c1, c2 = 1 - arguments["beta1"] ** step, 1 - arguments["beta2"] ** step
        m, v = 0.3, 0.04
        kernel_step = arguments["lr"] / c1 * m / (math.sqrt(v) / math.sqrt(c2) + arguments["eps"])
        assert kernel_step == pytest.approx(1e-3 * m / (math.sqrt(v) + 1e-8), rel=1e-13)
        assert arguments["lr"] * arguments["weight_decay"] == pytest.approx(1e-3 * 0.1, rel=1e-13)
        assert 0 <= arguments["beta1"] < 1 and 0 <= arguments["beta2"] < 1


def test_kernels_of_many_optimizers_compile_apart_without_isolate_recompiles(monkeypatch):
    """On torch < 2.12 (no isolate_recompiles) each kernel gets a code object of its own: more optimizers with
    distinct options than dynamo's recompile limit each compile their kernel, and each steps as the eager path."""
    monkeypatch.setattr(fused_path, "_ISOLATED", {})
    with torch._dynamo.config.patch(recompile_limit=2):
        _step_optimizers_with_distinct_options()


def _step_optimizers_with_distinct_options():
    for scale in (1.0, 2.0, 3.0, 4.0):
        params, reference = _params(torch.float64), _params(torch.float64)
        options = dict(noise="adam", variance_adaptation=True, adaptation_scale=scale, maximize=scale > 2, lr=1e-2)
        fused, eager = KalmanAdam(params, fused=True, **options), KalmanAdam(reference, fused=False, **options)
        _step_side_by_side(fused, eager, params, reference, _gradient_stream(params, 3))
        assert fused.fused_compilations == 1
        for p, q in zip(params, reference):
            assert (p - q).abs().max() <= 1e-12 * q.abs().max()


def test_groups_with_several_dtypes_shapes_and_step_counts():
    """Each (dtype, step count) bucket is one kernel; a half-precision group is stepped in float32 and rounded once."""
    float32, float64 = _params(torch.float32), _params(torch.float64, seed=2)
    half = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in _params(torch.float32, seed=3)]
    groups = lambda ps: [{"params": ps[0] + ps[1]}, {"params": ps[2], "lr": 3e-3}]  # noqa: E731
    copies = [copy.deepcopy(x) for x in (float32, float64, half)]
    fused = KalmanAdam(groups([float32, float64, half]), lr=1e-3, noise="innovation", fused=True)
    eager = KalmanAdam(groups(copies), lr=1e-3, noise="innovation", fused=False)
    everything = float32 + float64 + half
    for step, grads in enumerate(_gradient_stream([p.detach().float() for p in everything], 12)):
        for params in (everything, copies[0] + copies[1] + copies[2]):
            for index, (p, g) in enumerate(zip(params, grads)):
                # The first tensor misses two steps, so its step count differs from the others'.
                p.grad = None if index == 0 and step in (3, 4) else g.to(p.dtype)
        fused.step()
        eager.step()
    for p, q in zip(everything, copies[0] + copies[1] + copies[2]):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert int(fused.state[float32[0]]["step"]) == 10
    assert fused.fused_compilations >= 3  # float32, float64 and the bfloat16 group's float32 copies, two step counts


@pytest.mark.parametrize("noise", ["transport", "constant"])  # a compiled kernel; torch's fused Adam kernel
@pytest.mark.parametrize("save_fused", [True, False], ids=["save-fused-load-eager", "save-eager-load-fused"])
def test_state_dict_round_trip_across_paths(save_fused, noise):
    params = _params(torch.float32)
    first = KalmanAdam(params, noise=noise, fused=save_fused, foreach=False if not save_fused else None)
    stream = _gradient_stream(params, 40)
    for _, grads in zip(range(20), stream):
        for p, g in zip(params, grads):
            p.grad = g
        first.step()
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = KalmanAdam(resumed_params, noise=noise, fused=not save_fused, foreach=None)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    _step_side_by_side(first, resumed, params, resumed_params, stream)
    for p, q in zip(params, resumed_params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make", [lambda ps: KalmanAdam(ps, noise="innovation", fused=True, weight_decay=0.1),
                                  lambda ps: KalmanLAMB(ps, noise="innovation", precision_mean="previous", fused=True)],
                         ids=["innovation", "lamb-previous-mean"])
def test_a_state_loaded_into_a_warm_optimizer_is_the_one_stepped(make):
    """The fused path keeps views of 0-dim state and the step counters per tensor (host time); after load_state_dict
    into the same optimizer, its kernels read and write the loaded tensors, not the replaced ones: the same steps as
    a fresh eager optimizer loaded with the same state."""
    params = _params(torch.float32)
    optimizer = make(params)
    stream = list(_gradient_stream(params, 15))
    saved = None
    for step, grads in enumerate(stream[:10], start=1):
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        if step == 5:
            saved = (copy.deepcopy(optimizer.state_dict()), [p.detach().clone() for p in params])
    state, values = saved
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)
    optimizer.load_state_dict(copy.deepcopy(state))
    eager_params = [torch.nn.Parameter(v.clone()) for v in values]
    eager = make(eager_params)
    for group in eager.param_groups:
        group["fused"], group["foreach"] = False, False
    eager.load_state_dict(copy.deepcopy(state))
    _step_side_by_side(optimizer, eager, params, eager_params, stream[10:])
    for p, q in zip(params, eager_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert int(optimizer.state[p]["step"]) == int(eager.state[q]["step"]) == 10
        for key, value in optimizer.state[p].items():
            torch.testing.assert_close(value, eager.state[q][key], rtol=1e-5, atol=1e-7, msg=key)


def test_without_a_compiler_fused_runs_the_eager_path_with_one_warning(monkeypatch):
    monkeypatch.setattr(fused_path, "compiler_available", lambda device_type: False)
    params, reference = _params(torch.float32), _params(torch.float32)
    optimizer = KalmanAdam(params, noise="adaptive", fused=True)
    eager = KalmanAdam(reference, noise="adaptive", fused=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _step_side_by_side(optimizer, eager, params, reference, _gradient_stream(params, 5))
    messages = [str(w.message) for w in caught if "fused" in str(w.message)]
    assert len(messages) == 1 and "no compiler" in messages[0]
    for p, q in zip(params, reference):
        assert torch.equal(p, q)
    assert optimizer.fused_compilations == 0


def _compile_failure():
    return torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("no cl.exe"), None)


def _step_with_a_compile_failure(optimizer, eager, params, reference, steps=3):
    """`steps` steps of both optimizers on the same gradients; the fused one must warn that compiling failed."""
    with pytest.warns(UserWarning, match="compilation failed"):
        _step_side_by_side(optimizer, eager, params, reference, _gradient_stream(params, steps))


def test_a_compiler_failure_leaves_the_step_to_the_eager_path(monkeypatch):
    def failing_compile(self, function, flags, dynamic):
        def run(*args):
            raise _compile_failure()
        return run

    monkeypatch.setattr(fused_path.KernelCache, "_compile", failing_compile)
    params, reference = _params(torch.float32), _params(torch.float32)
    optimizer = KalmanAdam(params, noise="innovation", fused=True)
    eager = KalmanAdam(reference, noise="innovation", fused=False)
    _step_with_a_compile_failure(optimizer, eager, params, reference)
    for p, q in zip(params, reference):
        assert torch.equal(p, q)  # each step ran exactly once, on the eager path


def test_fused_lamb_serves_many_shapes_with_few_graphs_and_bumps_versions(monkeypatch):
    """Sixteen 2-D shapes, several with dimensions of size 1 (which dynamo would specialize a graph on): one
    shape-generic graph serves them, and each parameter's autograd version counter moves as an in-place update's
    does, although the kernel writes through a 1-D alias (LAMB's per-tensor calls, as on a CPU, on any device)."""
    monkeypatch.setattr(fused_path, "per_tensor_calls", lambda device: True)
    shapes = [(1, 5), (5, 1), (3, 3), (100, 100), (1, 1), (2, 1000), (1000, 2), (64, 64), (1, 64), (64, 1), (7, 7),
              (5000, 3), (1, 7000), (7000, 1), (2, 2), (9, 1)]
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=torch.float64).to(DEVICE)) for shape in shapes]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    options = dict(lr=1e-2, weight_decay=0.1)  # the default precision_mean="previous": one graph per length
    fused, eager = KalmanLAMB(params, fused=True, **options), KalmanLAMB(reference, fused=False, **options)
    for _ in range(3):
        for p, q in zip(params, reference):
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(DEVICE)
            q.grad = p.grad.clone()
        versions = [p._version for p in params]
        fused.step()
        eager.step()
        assert all(p._version > version for p, version in zip(params, versions))
    assert fused.fused_compilations <= 4
    for p, q in zip(params, reference):
        assert (p - q).abs().max() <= 1e-12 * q.abs().max()


@pytest.mark.parametrize("precision_weighting", [False, True])
def test_lambs_deferred_update_reuses_one_buffer_per_dtype(monkeypatch, precision_weighting):
    """LAMB's per-tensor calls write each update into one buffer the optimizer keeps per dtype (the size of the
    largest tensor, at the same address every step) and add -lr x ratio times it to the parameter after the kernel;
    a transposed (non-contiguous) parameter and a float64 group included, equal to the reference path."""
    monkeypatch.setattr(fused_path, "per_tensor_calls", lambda device: True)
    generator = torch.Generator().manual_seed(4)
    shapes = [(300, 20), (50,), (40, 30), (7, 9)]
    def make():
        params = [torch.randn(shape, generator=generator) for shape in shapes]
        params[2] = params[2].t().contiguous().t()  # strides (1, 40)
        return [torch.nn.Parameter(p.to(DEVICE)) for p in params] + [
            torch.nn.Parameter(torch.randn(500, generator=generator, dtype=torch.float64).to(DEVICE))]
    params = make()
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    options = dict(lr=1e-2, weight_decay=0.1, precision_weighting=precision_weighting, noise="constant")
    groups = lambda ps: [{"params": ps[:4]}, {"params": ps[4:], "lr": 3e-3}]  # noqa: E731
    fused, eager = KalmanLAMB(groups(params), fused=True, **options), KalmanLAMB(groups(reference), fused=False, **options)
    addresses = []
    for _ in range(4):
        for p, q in zip(params, reference):
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(DEVICE)
            q.grad = p.grad.clone()
        fused.step()
        eager.step()
        buffers = {key: buffer for cache in fused._kernel_caches.values() for key, buffer in cache.update_buffers.items()}
        addresses.append(sorted(buffer.data_ptr() for buffer in buffers.values()))
    assert {key[1]: buffer.numel() for key, buffer in buffers.items()} == {torch.float32: 6000, torch.float64: 500}
    assert all(a == addresses[0] for a in addresses)
    for p, q in zip(params, reference):
        assert p.is_contiguous() == q.is_contiguous()
        assert (p - q).abs().max() <= (1e-6 if p.dtype == torch.float32 else 1e-12) * q.abs().max()


def test_a_compiler_failure_within_a_bucket_steps_the_rest_on_the_eager_path(monkeypatch):
    """KalmanLAMB calls its kernel once per tensor, and a new length can make dynamo compile again inside that call:
    when that fails, the tensors before it keep their fused step and every tensor from it on takes the eager one,
    each exactly once."""
    real_compile = fused_path.KernelCache._compile

    def second_fails(self, function, flags, dynamic):
        compiled, calls = real_compile(self, function, flags, dynamic), []

        def run(*args):
            calls.append(1)
            if len(calls) == 2:  # the second tensor's length: a recompilation that fails before the kernel runs
                raise _compile_failure()
            return compiled(*args)
        return run

    monkeypatch.setattr(fused_path.KernelCache, "_compile", second_fails)
    monkeypatch.setattr(fused_path, "per_tensor_calls", lambda device: True)  # as on a CPU, also on CUDA
    params, reference = _params(torch.float64), _params(torch.float64)
    options = dict(lr=1e-2, weight_decay=0.1, precision_weighting=False)
    optimizer, eager = KalmanLAMB(params, fused=True, **options), KalmanLAMB(reference, fused=False, **options)
    _step_with_a_compile_failure(optimizer, eager, params, reference)
    assert optimizer.fused_compilations == 1
    for p, q in zip(params, reference):
        assert (p - q).abs().max() <= 1e-12 * q.abs().max()  # the first tensor's fused step equals the eager one
        assert optimizer.state[p]["step"] == 3


def test_fused_none_compiles_only_large_groups(monkeypatch):
    small = KalmanAdam(_params(torch.float32))
    assert not small._use_fused(small.param_groups[0], small.param_groups[0]["params"])
    monkeypatch.setattr(fused_path, "AUTO_MIN_ELEMENTS", 10)
    assert small._use_fused(small.param_groups[0], small.param_groups[0]["params"])
    assert not KalmanAdam(_params(torch.float32), fused=False)._use_fused(small.param_groups[0], [])


@pytest.mark.parametrize("options, error, match", [
    (dict(fused="yes"), TypeError, "Invalid fused: must be None or a bool"),
    (dict(foreach=1), TypeError, "Invalid foreach"),
    (dict(fused=True, foreach=True), ValueError, "cannot both be set"),
])
def test_bad_fused_options_are_rejected(options, error, match):
    with pytest.raises(error, match=match):
        KalmanAdam(_params(torch.float32), **options)
    with pytest.raises(error, match=match):
        KalmanLAMB(_params(torch.float32), **options)


def test_a_step_that_raises_on_the_fused_path_changes_nothing():
    params = _params(torch.float32)
    optimizer = KalmanAdam(params, noise="innovation", fused=True)
    for grads in _gradient_stream(params, 3):
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
    before = copy.deepcopy(([p.detach() for p in params], optimizer.state_dict()))
    optimizer.param_groups[0]["lr"] = -1.0
    params[1].grad = torch.randn(6, 25, device=DEVICE)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        optimizer.step()
    for p, q in zip(params, before[0]):
        assert torch.equal(p, q)
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, before[1]["state"][index][key]), key


def test_the_series_start_up_gain_equals_the_reference_formula():
    """Mode adaptive's start-up gain (1 - beta)(1 + beta^(2t-1)) / (1 - beta^(2t)) from the asinh series and the
    rational coth (fused, float32, default beta_range) against float64 and against the reference's log1p/tanh
    formula, over the whole range of lambda, y from near 0 to past the rational's clamp; the steady gain without its
    divide likewise."""
    lam = torch.logspace(-6.3, math.log10(0.5), 5001, dtype=torch.float32)
    root, outer_root = lam.sqrt(), (lam + 4).sqrt()
    gain = root * 2 / (root + outer_root)
    beta = 1 - gain
    exact_beta = 4 / (lam.double().sqrt() + (lam.double() + 4).sqrt()) ** 2
    steady = fused_path.steady_gain(root, lam, outer_root)
    assert ((steady.double() - (1 - exact_beta)) / (1 - exact_beta)).abs().max() < 1e-6
    for t in [1, 2, 3, 7, 30, 300, 3000, 7900]:
        half = torch.tanh(torch.log1p(-gain) * t)
        reference = gain * ((1 - half) * beta + half + 1) / (half * -2 * beta)
        series = fused_path.series_start_up_gain(root, lam, outer_root, float(t))
        exact = (1 - exact_beta) * (1 + exact_beta ** (2 * t - 1)) / (1 - exact_beta ** (2 * t))
        assert ((series.double() - exact) / exact).abs().max() < 1e-6, t
        assert ((series - reference) / reference).abs().max() < 1e-6, t
    # y = 2 t asinh(sqrt(lambda) / 2) runs from 0.002 at t = 1 to past the clamp at t = 7900.
    y = 2 * torch.asinh(root.double() / 2)
    assert y.min() < 0.002 and (y * 7900 > fused_path.TANH_RATIONAL_CLAMP).any()


def test_the_asinh_coefficients_are_taylor_coefficients_and_the_rational_coth_is_float32_accurate():
    import sympy as sp

    s = sp.symbols("s")
    asinh_series = sp.series(sp.asinh(sp.sqrt(s) / 2) / (sp.sqrt(s) / 2), s, 0, len(fused_path.ASINH_SERIES)).removeO()
    for n, value in enumerate(fused_path.ASINH_SERIES):
        assert math.isclose(value, float(asinh_series.coeff(s, n)), rel_tol=1e-15)
    # coth(y) = Q(y^2) / (y P(y^2)) in float32 with the clamp, against float64 coth from 1e-6 to 20.
    y = torch.cat([torch.logspace(-6, 0, 10001), torch.linspace(1, 20, 200001)])
    clamped = y.clamp_max(fused_path.TANH_RATIONAL_CLAMP)
    coth = (fused_path._horner(clamped * clamped, fused_path.TANH_RATIONAL_DENOMINATOR)
            / (clamped * fused_path._horner(clamped * clamped, fused_path.TANH_RATIONAL_NUMERATOR)))
    exact = 1 / torch.tanh(y.double())
    assert ((coth.double() - exact) / exact).abs().max() < 4.5e-7


def test_the_start_up_kind_follows_the_beta_range():
    default = AdaptiveNoiseConfig(noise_beta=0.99, beta_min=0.5, beta_max=0.999, prior_beta=0.9)
    assert fused_path.start_up_kind(default, 10, torch.float32) == "series"
    assert fused_path.start_up_kind(default, 20_000, torch.float32) is False
    wide = AdaptiveNoiseConfig(noise_beta=0.99, beta_min=0.3, beta_max=0.999, prior_beta=0.9)
    assert fused_path.start_up_kind(wide, 10, torch.float32) == "tanh"
    low_prior = AdaptiveNoiseConfig(noise_beta=0.99, beta_min=0.5, beta_max=0.999, prior_beta=0.2)
    assert fused_path.start_up_kind(low_prior, 10, torch.float32) == "tanh"
    assert fused_path.start_up_kind(default, 10, torch.float64) == "tanh"  # the series are sized for float32


def test_the_pseudo_coordinate_prior_reaches_both_paths(monkeypatch):
    """innovation.PRIOR_COORDINATES (E7's alternative prior, 0 in the library) changes the read-out, hence the
    variance-adapted steps, and the fused kernel applies it as the reference does."""
    from kalman_optim.noise_models import innovation

    for name in ("fitted-va", "innovation-va"):
        make, options = CONFIGS[name]
        plain = _run(make, options, torch.float64, 60, fused=False)[0]
        monkeypatch.setattr(innovation, "PRIOR_COORDINATES", 50.0)
        reference = _run(make, options, torch.float64, 60, fused=False)[0]
        fused = _run(make, options, torch.float64, 60, fused=True)[0]
        monkeypatch.setattr(innovation, "PRIOR_COORDINATES", 0.0)
        assert any(not torch.equal(p, q) for p, q in zip(plain, reference)), name
        for index, (p, q) in enumerate(zip(reference, fused)):
            assert (p - q).abs().max() <= 1e-12 * p.abs().max(), f"{name}, tensor {index}"


@pytest.mark.parametrize("numel, rows", [(100, 1), (150, 50), (2100, 60), (97 * 89, 1), (64 * 1024, 64)])
def test_row_count_is_the_largest_divisor_in_range(numel, rows, monkeypatch):
    monkeypatch.setattr(fused_path, "ROW_SPLIT_MIN_ELEMENTS", 101)
    monkeypatch.setattr(fused_path, "ROW_RANGE", (4, 64))
    assert fused_path._row_count(numel) == rows  # 100: too small; 97 * 89: no divisor in range
    x = torch.randn(numel, dtype=torch.float64)
    assert abs(fused_path._row_sum(x) - x.sum()) <= 1e-13 * x.abs().sum()  # the same sum in another order


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-12)], ids=["float32", "float64"])
@pytest.mark.parametrize("name", ["lamb-pw-constant-bucket", "lamb-pw-adaptive-maximize-bucket"])
def test_lambs_bucket_sums_over_rows_equal_the_reference(name, dtype, tolerance, monkeypatch):
    """The bucket's graph of sums (`_lamb_sums_kernel`) with its sums taken over rows (`_row_sum`, here from 101
    elements on, so that tensors (6, 25) and (2100,) are summed as 50 and 60 rows): the 1000-step comparison."""
    monkeypatch.setattr(fused_path, "ROW_SPLIT_MIN_ELEMENTS", 101)
    monkeypatch.setattr(fused_path, "ROW_RANGE", (4, 64))
    assert [fused_path._row_count(math.prod(shape)) for shape in SHAPES] == [1, 50, 1, 1, 60]
    test_fused_equals_reference_over_1000_steps(name, dtype, tolerance, monkeypatch, lambda *args: None)
