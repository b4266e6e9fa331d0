"""Distributed training: DDP and FSDP2 (fully_shard) with 2 gloo processes on CPU give the parameters of
one process on the same global batch, and KalmanLAMB's layer statistics span the whole layer.

All cases run in one pair of worker processes (tests/kalman_optim/_distributed_worker.py, started once
per module with torchrun's environment variables); each rank trains on its half of every global batch
with a mean loss, so the averaged gradient is the global-batch gradient. The single-process reference
trains the same fixed-seed network on the full batches here.

Tolerance (float32): rtol=1e-5, atol=1e-6 on parameters. The gradients agree only to rounding: each rank
sums its 8 samples and the all-reduce / reduce-scatter averages the two partial means, where one
process sums all 16 at once, a different order of float32 additions (observed: |diff| <= 6e-8 after
10 steps, relative <= 1e-6). Gradient posterior variances r_hat = max(v_hat - m_hat^2, 0) / c (or
-Cov(d_t, d_{t-1}) in mode "adaptive") are differences of nearly equal numbers, so their rounding is
relative to the largest variance of the tensor: atol = 1e-5 * max |variance|.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from kalman_optim.functional import precision_weighted_norm
from tests.kalman_optim._distributed_worker import CASES, global_batches, loss_fn, make_model, make_optimizer, sample_size

WORLD_SIZE = 2
RTOL, ATOL = 1e-5, 1e-6
REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT_S = 240

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

FSDP2_LAMB = [case for case, (wrapper, opt, _) in CASES.items() if wrapper == "fsdp2" and opt == "KalmanLAMB"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory) -> list[dict]:
    """Run every case of CASES on 2 gloo ranks; return each rank's results (rank order)."""
    out_dir = tmp_path_factory.mktemp("distributed")
    port = _free_port()
    procs, logs = [], []
    for rank in range(WORLD_SIZE):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD_SIZE), OMP_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        log = open(out_dir / f"rank{rank}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.kalman_optim._distributed_worker", str(out_dir)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        ))
    try:
        for proc in procs:
            proc.wait(timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
    output = []
    for rank, log in enumerate(logs):
        log.seek(0)
        output.append(f"--- rank {rank} (exit code {procs[rank].returncode}) ---\n{log.read()[-4000:]}")
        log.close()
    assert all(proc.returncode == 0 for proc in procs), "distributed workers failed:\n" + "\n".join(output)
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def _case_results(distributed_results, case) -> list[dict]:
    per_rank = [results[case] for results in distributed_results]
    for rank, result in enumerate(per_rank):
        if "error" in result:
            pytest.fail(f"{case} raised on rank {rank}:\n{result['error']}", pytrace=False)
    return per_rank


def _train_single_process(case: str):
    """The reference: the same network and optimizer in one process, on the full global batches."""
    _, opt_name, kwargs = CASES[case]
    model = make_model()
    optimizer = make_optimizer(opt_name, model.parameters(), kwargs)
    with sample_size(kwargs):
        for x, y in global_batches():
            optimizer.zero_grad()
            loss_fn(model, x, y).backward()
            optimizer.step()
    return model, optimizer


@pytest.fixture(scope="module")
def references() -> dict:
    return {case: _train_single_process(case) for case in CASES}


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("case", CASES)
def test_same_parameters_as_one_process_on_the_global_batch(distributed_results, references, case):
    per_rank = _case_results(distributed_results, case)
    model, _ = references[case]
    expected = dict(model.named_parameters())
    for rank, result in enumerate(per_rank):
        assert result["params"].keys() == expected.keys()
        for name, reference in expected.items():
            torch.testing.assert_close(result["params"][name], reference.detach(), rtol=RTOL, atol=ATOL,
                                       msg=lambda m, n=name, r=rank: f"{case} rank {r} {n}: {m}")
    # The ranks hold one model: DDP replicas and FSDP2's gathered full tensors are bitwise equal.
    for name in expected:
        assert torch.equal(per_rank[0]["params"][name], per_rank[1]["params"][name]), name


@pytest.mark.parametrize("case", [case for case, (_, _, kwargs) in CASES.items()
                                  if kwargs.get("noise") not in ("transport", "extrapolated")])
def test_gradient_posterior_matches_one_process(distributed_results, references, case):
    """gradient_posterior works on DDP parameters and on FSDP2's sharded DTensor parameters: it returns
    DTensors sharded like the parameter, whose full tensors are the single-process posterior."""
    wrapper = CASES[case][0]
    per_rank = _case_results(distributed_results, case)
    model, optimizer = references[case]
    for name, p in model.named_parameters():
        with sample_size(CASES[case][2]):
            mean, variance = optimizer.gradient_posterior(p)
        assert variance.abs().max() > 0, f"{name}: a zero posterior variance would make this test vacuous"
        for rank, result in enumerate(per_rank):
            got = result["posterior"][name]
            if wrapper == "fsdp2":
                assert got["layout"]["type"] == "DTensor", (rank, name, got["layout"])
                assert got["layout"]["placements"] == result["layout"][name]["placements"] == ["S(0)"]
                assert got["layout"]["local_shape"] == result["layout"][name]["local_shape"]
            else:
                assert got["layout"]["type"] == "Tensor"
            torch.testing.assert_close(got["mean"], mean, rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(got["variance"], variance, rtol=RTOL, atol=1e-5 * variance.abs().max().item())


def test_fsdp2_shards_every_layer_including_an_uneven_one(distributed_results):
    """The cases above ran on real shards: dim 0 of size 8 and 6 split evenly, size 5 as 3 + 2."""
    layouts = [results["fsdp2-adam-noise_adam"]["layout"] for results in distributed_results]
    expected = {"0.weight": [(4, 6), (4, 6)], "0.bias": [(4,), (4,)], "2.weight": [(3, 8), (3, 8)],
                "2.bias": [(3,), (3,)], "4.weight": [(3, 6), (2, 6)], "4.bias": [(3,), (2,)]}
    for name, shapes in expected.items():
        assert [layout[name]["type"] for layout in layouts] == ["DTensor"] * WORLD_SIZE, name
        assert [layout[name]["local_shape"] for layout in layouts] == shapes, name


class _LocalShardLinear(torch.nn.Module):
    """A Linear whose weight and bias are stored as FSDP2's dim-0 shards (torch.chunk), one parameter
    each: an optimizer sees every shard as its own tensor, as a per-shard LAMB would."""

    def __init__(self, linear: torch.nn.Linear, shards: int):
        super().__init__()
        self.weights = torch.nn.ParameterList(w.detach().clone() for w in linear.weight.chunk(shards, dim=0))
        self.biases = torch.nn.ParameterList(b.detach().clone() for b in linear.bias.chunk(shards, dim=0))

    def forward(self, x):
        return F.linear(x, torch.cat(list(self.weights)), torch.cat(list(self.biases)))


def _train_with_local_shard_statistics(case: str) -> dict[str, torch.Tensor]:
    """What KalmanLAMB under FSDP2 would give if its norms were taken over each rank's local shard."""
    _, opt_name, kwargs = CASES[case]
    reference = make_model()
    model = torch.nn.Sequential(*(
        _LocalShardLinear(layer, WORLD_SIZE) if isinstance(layer, torch.nn.Linear) else layer for layer in reference
    ))
    optimizer = make_optimizer(opt_name, model.parameters(), kwargs)
    for x, y in global_batches():
        optimizer.zero_grad()
        loss_fn(model, x, y).backward()
        optimizer.step()
    full = {}
    for index, layer in enumerate(model):
        if isinstance(layer, _LocalShardLinear):
            full[f"{index}.weight"] = torch.cat([w.detach() for w in layer.weights])
            full[f"{index}.bias"] = torch.cat([b.detach() for b in layer.biases])
    return full


@pytest.mark.parametrize("case", FSDP2_LAMB)
def test_fsdp2_lamb_trust_ratio_uses_whole_layer_norms(distributed_results, references, case):
    """FSDP2 KalmanLAMB matches one process (test above) and is far from the per-shard-norm result."""
    per_rank = _case_results(distributed_results, case)
    model, _ = references[case]
    local_norm_params = _train_with_local_shard_statistics(case)
    for name, p in model.named_parameters():
        global_vs_local = (local_norm_params[name] - p.detach()).abs().max().item()
        assert global_vs_local > 1e-4, f"{name}: per-shard norms should change the result ({global_vs_local})"
        distributed_vs_local = (per_rank[0]["params"][name] - local_norm_params[name]).abs().max().item()
        assert distributed_vs_local > 100 * ATOL, f"{case} {name} looks like per-shard norms ({distributed_vs_local})"
        torch.testing.assert_close(per_rank[0]["params"][name], p.detach(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", FSDP2_LAMB)
def test_layer_statistics_of_sharded_state_span_the_whole_layer(distributed_results, case):
    """On the optimizer's sharded state, ||p|| and the precision-weighted norm N(u) (here of u = the
    posterior mean, weighted by the posterior variance) are those of the full tensors, on every rank;
    computed on the local shard they are the shard's statistics, which differ."""
    per_rank = _case_results(distributed_results, case)
    for name in per_rank[0]["params"]:
        full_param = per_rank[0]["params"][name]
        full_mean, full_variance = per_rank[0]["posterior"][name]["mean"], per_rank[0]["posterior"][name]["variance"]
        whole_param_norm = torch.linalg.vector_norm(full_param)
        whole_weighted_norm = precision_weighted_norm(full_mean, full_variance, 0.01)
        for rank, result in enumerate(per_rank):
            stats = result["lamb_statistics"][name]
            torch.testing.assert_close(stats["param_norm"], whole_param_norm, rtol=RTOL, atol=0.0)
            torch.testing.assert_close(stats["weighted_norm"], whole_weighted_norm, rtol=RTOL, atol=0.0)
            # The local statistics are the shard's own: rank r holds chunk r of dim 0 (torch.chunk).
            shard_param = full_param.chunk(WORLD_SIZE, dim=0)[rank]
            shard_mean = full_mean.chunk(WORLD_SIZE, dim=0)[rank]
            shard_variance = full_variance.chunk(WORLD_SIZE, dim=0)[rank]
            torch.testing.assert_close(stats["param_norm_local"], torch.linalg.vector_norm(shard_param), rtol=RTOL, atol=0.0)
            torch.testing.assert_close(stats["weighted_norm_local"], precision_weighted_norm(shard_mean, shard_variance, 0.01),
                                       rtol=RTOL, atol=0.0)
            for key in ("param_norm", "weighted_norm"):
                relative = abs(stats[f"{key}_local"].item() / stats[key].item() - 1)
                assert relative > 0.01, f"{name} rank {rank}: local {key} should differ from the layer's ({relative})"
