"""experiments/bench_cuda_host.py: the CUDA structure on a CPU, with graphs whose replays launch nothing."""

import json

import pytest
import torch

from experiments import bench_cuda_host
from kalman_optim import KalmanAdam, KalmanLAMB, cuda_graphs
from kalman_optim import fused as fused_path

pytestmark = pytest.mark.skipif(not fused_path.compiler_available("cpu"), reason="no C++ compiler for inductor")


def test_the_emulation_takes_cudas_structure_and_restores_the_cpus():
    before = (fused_path.GRAPH_DEVICES, fused_path.TORCH_KERNEL_DEVICES, fused_path.per_tensor_calls,
              cuda_graphs._record)
    params = [torch.nn.Parameter(torch.randn(8)) for _ in range(2)]
    for p in params:
        p.grad = torch.randn_like(p)
    with bench_cuda_host.emulate_cuda_structure():
        adam, lamb = KalmanAdam(params, fused=True), KalmanLAMB(params, fused=True)
        assert not fused_path.per_tensor_calls(torch.device("cpu"))
        for _ in range(cuda_graphs.WARMUP_STEPS + 3):
            adam.step()
            lamb.step()
        stepped = [p.detach().clone() for p in params]
        adam.step()  # a replay: nothing runs
        assert all(torch.equal(p, q) for p, q in zip(params, stepped))
    graphs = [o._kernel_cache(o.param_groups[0]).graphs for o in (adam, lamb)]
    assert all(g.replays >= 3 for g in graphs)  # mode adam took the compiled kernel, LAMB a bucket: both graphed
    assert (fused_path.GRAPH_DEVICES, fused_path.TORCH_KERNEL_DEVICES, fused_path.per_tensor_calls,
            cuda_graphs._record) == before


def test_the_report_gives_each_candidates_median_host_time(tmp_path):
    out = tmp_path / "host.json"
    bench_cuda_host.main(["--tensors", "2", "--tensor-size", "16", "--repeats", "3", "--processes", "1",
                          "--candidates", "AdamW [fused]", "KalmanAdam innovation", "--out", str(out), "--no-progress"])
    report = json.loads(out.read_text())
    assert report["candidates"] == ["AdamW [fused]", "KalmanAdam innovation"]
    assert report["processes"][0]["KalmanAdam innovation"]["graph_replays"] >= 3
    assert all(s["median_us"] > 0 and len(s["process_medians_us"]) == 1 for s in report["summary"].values())
    assert "KalmanAdam innovation" in out.with_suffix(".md").read_text()


def test_candidates_that_run_their_kernels_are_refused():
    with pytest.raises(SystemExit):
        bench_cuda_host.parse_args(["--candidates", "KalmanAdam adam [no CUDA graphs]"])
