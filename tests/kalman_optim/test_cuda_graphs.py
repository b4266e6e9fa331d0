"""CUDA graphs of the fused step (kalman_optim/cuda_graphs.py): replayed only for the addresses they were recorded
for, equal to the reference path, version counters moved. On a CPU the recording is a stand-in that replays the
recorded call (the bookkeeping is what is tested); KALMAN_OPTIM_TEST_DEVICE=cuda records real graphs."""

import os

import pytest
import torch

from kalman_optim import KalmanAdam, KalmanLAMB, cuda_graphs
from kalman_optim import fused as fused_path

DEVICE = torch.device(os.environ.get("KALMAN_OPTIM_TEST_DEVICE", "cpu"))


class _StandInGraph:
    """What cuda_graphs._record returns on a CPU: replay runs the recorded call again."""

    def __init__(self, call):
        self.call = call

    def replay(self):
        self.call()


@pytest.fixture
def graphs_on_device(monkeypatch):
    """Graphs on DEVICE's type; on a CPU recorded by the stand-in."""
    monkeypatch.setattr(fused_path, "GRAPH_DEVICES", (DEVICE.type,))
    if DEVICE.type != "cuda":
        monkeypatch.setattr(cuda_graphs, "_record", _StandInGraph)


def test_a_graph_is_recorded_after_the_warm_up_and_replayed_only_at_its_addresses(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "_record", _StandInGraph)
    graphs, calls = cuda_graphs.StepGraphs(), []
    tensor = torch.zeros(3)
    call = lambda: calls.append(1)  # noqa: E731
    for _ in range(cuda_graphs.WARMUP_STEPS):
        graphs.run("k", ("a",), call, lambda: [tensor])
    assert graphs.recordings == 0 and len(calls) == cuda_graphs.WARMUP_STEPS
    version = tensor._version
    graphs.run("k", ("a",), call, lambda: [tensor])  # recorded, then replayed
    graphs.run("k", ("a",), call, lambda: [tensor])
    assert (graphs.recordings, graphs.replays) == (1, 2) and tensor._version == version + 2
    graphs.run("k", ("b",), call, lambda: [tensor])  # moved tensors: the kernels as they are
    assert graphs.replays == 2 and len(calls) == cuda_graphs.WARMUP_STEPS + 3
    graphs.run("k", ("a",), call, lambda: [tensor])  # back where it was recorded
    assert graphs.replays == 3
    graphs.run("other", ("a",), call, lambda: [tensor])  # another bucket has its own graph
    assert graphs.replays == 3


def test_addresses_that_keep_changing_stop_recording_after_the_limit(monkeypatch):
    monkeypatch.setattr(cuda_graphs, "_record", _StandInGraph)
    graphs = cuda_graphs.StepGraphs()
    for where in range(cuda_graphs.MAX_RECORDINGS + 2):
        for _ in range(cuda_graphs.WARMUP_STEPS + 1):
            graphs.run("k", (where,), lambda: None, list)
    assert graphs.recordings == cuda_graphs.MAX_RECORDINGS


def _pair(make, options, dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    shapes = [(300,), (20, 30), (7,)]
    params = [torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype).to(DEVICE)) for shape in shapes]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    return params, reference, make(params, fused=True, **options), make(reference, fused=False, **options)


CASES = {
    "adam-va": (KalmanAdam, dict(noise="adam", variance_adaptation=True, lr=1e-2, weight_decay=0.1)),
    "innovation": (KalmanAdam, dict(noise="innovation", lr=1e-2, weight_decay=0.1)),
    "lamb-precision-exact-mean": (KalmanLAMB, dict(noise="adaptive", lr=1e-2, weight_decay=0.1, precision_mean="current")),
}


@pytest.mark.parametrize("fresh_gradients", [False, True], ids=["gradients-in-place", "gradients-moved"])
@pytest.mark.parametrize("name", CASES)
def test_replayed_steps_equal_the_reference_path(name, fresh_gradients, graphs_on_device, monkeypatch):
    """Gradients written into the same tensors each step: the graphs replay. New gradient tensors each step, all kept
    alive so no address comes back: nothing replays, and the steps are still right."""
    monkeypatch.setattr(fused_path, "per_tensor_calls", lambda device: False)
    make, options = CASES[name]
    params, reference, fused, eager = _pair(make, options)
    generator, kept = torch.Generator().manual_seed(1), []
    for step in range(12):
        for p, q in zip(params, reference):
            g = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(DEVICE) + 0.1 * p.detach()
            if fresh_gradients or p.grad is None:
                p.grad = g
                kept.append(g)
            else:
                p.grad.copy_(g)
            q.grad = g.clone()
        versions = [p._version for p in params]
        fused.step()
        eager.step()
        assert all(p._version > version for p, version in zip(params, versions))
    graphs = fused._kernel_cache(fused.param_groups[0]).graphs
    if fresh_gradients:
        assert graphs.replays == 0
    else:
        assert graphs.recordings == 1 and graphs.replays == 12 - cuda_graphs.WARMUP_STEPS
    for p, q in zip(params, reference):
        assert (p - q).abs().max() <= 1e-12 * q.abs().max()
        for key, value in eager.state[q].items():
            assert (fused.state[p][key] - value).abs().max() <= 1e-12 * value.abs().max(), key


def test_a_failed_recording_turns_graphs_off_and_the_step_still_runs(graphs_on_device, monkeypatch):
    def failing_record(call):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(cuda_graphs, "_record", failing_record)
    params, reference, fused, eager = _pair(KalmanAdam, dict(noise="adam", variance_adaptation=True, lr=1e-2))
    generator = torch.Generator().manual_seed(1)
    with pytest.warns(UserWarning, match="CUDA graphs of the fused step disabled"):
        for _ in range(6):
            for p, q in zip(params, reference):
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype).to(DEVICE))
                q.grad = p.grad.clone()
            fused.step()
            eager.step()
    graphs = fused._kernel_cache(fused.param_groups[0]).graphs
    assert graphs.disabled_reason is not None and graphs.replays == 0
    for p, q in zip(params, reference):
        assert (p - q).abs().max() <= 1e-12 * q.abs().max()


def test_a_step_inside_a_cuda_graph_capture_is_refused_and_changes_nothing(monkeypatch):
    """The per-step scalars are host values: a step recorded in the caller's own CUDA graph would replay them forever."""
    params, reference, fused, eager = _pair(KalmanAdam, dict(noise="adam", lr=1e-2))
    for p in params:
        p.grad = torch.ones_like(p)
    fused.step()
    before = [p.detach().clone() for p in params]
    state = [{key: value.clone() for key, value in fused.state[p].items()} for p in params]
    monkeypatch.setattr(cuda_graphs, "capturing", lambda: True)
    with pytest.raises(RuntimeError, match="cannot be recorded in a CUDA graph"):
        fused.step()
    for p, old, old_state in zip(params, before, state):
        assert torch.equal(p, old)
        assert all(torch.equal(fused.state[p][key], value) for key, value in old_state.items())


def test_a_gradient_assigned_with_other_strides_is_not_replayed_through_the_old_graph(graphs_on_device, monkeypatch):
    """A graph's kernels are specialized on the strides they were recorded with: a gradient of the same shape at the
    same address but transposed strides runs the compiled kernels, and the step is right."""
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(20, 30, generator=generator, dtype=torch.float64).to(DEVICE))]
    reference = [torch.nn.Parameter(params[0].detach().clone())]
    options = dict(noise="adam", variance_adaptation=True, lr=1e-2)
    fused, eager = KalmanAdam(params, fused=True, **options), KalmanAdam(reference, fused=False, **options)
    storage = torch.randn(600, generator=generator, dtype=torch.float64).to(DEVICE)
    for step in range(6):
        values = torch.randn(600, generator=generator, dtype=torch.float64).to(DEVICE)
        storage.copy_(values)
        # The same memory each step; from step 4 on read as the transpose of a (30, 20) tensor.
        grad = storage.view(20, 30) if step < 4 else storage.view(30, 20).t()
        params[0].grad, reference[0].grad = grad, grad.clone()
        fused.step()
        eager.step()
    graphs = fused._kernel_cache(fused.param_groups[0]).graphs
    assert graphs.replays >= 1  # steps 3 and 4 replayed before the strides changed
    assert (params[0] - reference[0]).abs().max() <= 1e-12 * reference[0].abs().max()
