"""One rank of the distributed tests (tests/kalman_optim/test_distributed.py), plus what both sides share.

Run as ``python -m tests.kalman_optim._distributed_worker OUT_DIR`` with the torchrun variables
MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE set. Every case of CASES is trained in this one process
group (one start-up for all cases): DDP or FSDP2 (``fully_shard`` on each Linear and on the root), each
rank on its half of the global batch; the results (full parameters, gradient posteriors, layer
statistics) are written with torch.save to OUT_DIR/rank{RANK}.pt. An exception in one case is recorded
as that case's traceback and the other cases still run.

The test imports `make_model`, `global_batches`, `make_optimizer` and CASES from here, so the
single-process reference trains exactly the same network on exactly the same data.
"""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.nn.functional as F

from kalman_optim import KalmanAdam, KalmanLAMB
from kalman_optim.noise_models import fitted, innovation

STEPS = 10
GLOBAL_BATCH = 16
IN_FEATURES, CLASSES = 6, 5
LR = 1e-2

# case id -> (wrapper, optimizer, keyword arguments). KalmanLAMB cases are the ones whose trust ratio
# needs layer-wide norms; the foreach cases run the multi-tensor path that CUDA picks by default.
CASES: dict[str, tuple[str, str, dict]] = {
    "ddp-adam-noise_adam": ("ddp", "KalmanAdam", dict(noise="adam")),
    "ddp-adam-noise_adaptive": ("ddp", "KalmanAdam", dict(noise="adaptive")),
    "ddp-adam-variance_adaptation": ("ddp", "KalmanAdam", dict(noise="adam", variance_adaptation=True)),
    "ddp-lamb-precision_weighting": ("ddp", "KalmanLAMB", dict(precision_weighting=True)),
    "ddp-adam-noise_innovation-variance_adaptation": ("ddp", "KalmanAdam", dict(noise="innovation", variance_adaptation=True)),
    "fsdp2-adam-noise_adam": ("fsdp2", "KalmanAdam", dict(noise="adam")),
    "fsdp2-adam-noise_adaptive": ("fsdp2", "KalmanAdam", dict(noise="adaptive")),
    "fsdp2-adam-noise_adaptive-variance_adaptation-foreach": (
        "fsdp2", "KalmanAdam", dict(noise="adaptive", variance_adaptation=True, foreach=True)
    ),
    "fsdp2-adam-noise_innovation-variance_adaptation": (
        "fsdp2", "KalmanAdam", dict(noise="innovation", variance_adaptation=True)
    ),
    "fsdp2-lamb-precision_weighting-noise_innovation-foreach": (
        "fsdp2", "KalmanLAMB", dict(precision_weighting=True, noise="innovation", foreach=True)
    ),
    "ddp-adam-noise_transport": ("ddp", "KalmanAdam", dict(noise="transport")),
    "fsdp2-adam-noise_transport-foreach": ("fsdp2", "KalmanAdam", dict(noise="transport", foreach=True)),
    "ddp-adam-noise_extrapolated": ("ddp", "KalmanAdam", dict(noise="extrapolated")),
    "fsdp2-adam-noise_extrapolated-foreach": ("fsdp2", "KalmanAdam", dict(noise="extrapolated", foreach=True)),
    "fsdp2-lamb-plain": ("fsdp2", "KalmanLAMB", dict(precision_weighting=False)),
    "fsdp2-lamb-precision_weighting": ("fsdp2", "KalmanLAMB", dict(precision_weighting=True)),
    "fsdp2-lamb-precision_weighting-noise_adaptive": ("fsdp2", "KalmanLAMB", dict(precision_weighting=True, noise="adaptive")),
    "fsdp2-lamb-precision_weighting-foreach": ("fsdp2", "KalmanLAMB", dict(precision_weighting=True, foreach=True)),
    # The cases above divide by the previous step's layer mean of P (the default); these by this step's.
    "fsdp2-lamb-precision_mean_current-noise_innovation": (
        "fsdp2", "KalmanLAMB", dict(precision_weighting=True, precision_mean="current", noise="innovation")
    ),
    "ddp-lamb-precision_mean_current": ("ddp", "KalmanLAMB", dict(precision_weighting=True, precision_mean="current")),
    "ddp-adam-noise_fitted-variance_adaptation": ("ddp", "KalmanAdam", dict(noise="fitted", variance_adaptation=True)),
    "fsdp2-adam-noise_fitted-variance_adaptation": ("fsdp2", "KalmanAdam", dict(noise="fitted", variance_adaptation=True)),
    "fsdp2-lamb-precision_weighting-noise_fitted-foreach": (
        "fsdp2", "KalmanLAMB", dict(precision_weighting=True, noise="fitted", foreach=True)
    ),
    # The MLP's tensors are smaller than the lag samples; a sample of 5 coordinates makes them strided, with a shard
    # offset the stride does not divide (Linear(8, 6): 48 elements, stride 10, rank 1 starts at element 24).
    "fsdp2-adam-noise_innovation-strided_sample": (
        "fsdp2", "KalmanAdam", dict(noise="innovation", variance_adaptation=True, sample_size=5)
    ),
    "fsdp2-adam-noise_fitted-strided_sample": (
        "fsdp2", "KalmanAdam", dict(noise="fitted", variance_adaptation=True, sample_size=5)
    ),
}


def make_model(seed: int = 0) -> torch.nn.Sequential:
    """Fixed-seed MLP: two Linear layers with dim 0 divisible by 2 (8, 6), one with dim 0 odd (5: shards 3 + 2)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(IN_FEATURES, 8),
        torch.nn.Tanh(),
        torch.nn.Linear(8, 6),
        torch.nn.Tanh(),
        torch.nn.Linear(6, CLASSES),
    )


def global_batches(steps: int = STEPS, seed: int = 7):
    """The fixed global batches (x, y); rank r of w trains on rows [r * n / w, (r + 1) * n / w)."""
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(IN_FEATURES, CLASSES, generator=generator)
    out = []
    for _ in range(steps):
        x = torch.randn(GLOBAL_BATCH, IN_FEATURES, generator=generator)
        y = (x @ teacher + 0.5 * torch.randn(GLOBAL_BATCH, CLASSES, generator=generator)).argmax(dim=1)
        out.append((x, y))
    return out


def make_optimizer(name: str, params, kwargs: dict):
    cls = {"KalmanAdam": KalmanAdam, "KalmanLAMB": KalmanLAMB}[name]
    return cls(params, lr=LR, **{key: value for key, value in kwargs.items() if key != "sample_size"})


@contextmanager
def sample_size(kwargs: dict):
    """A case's `sample_size` (tests only): both innovation modes' lag samples this many coordinates per tensor while
    the case trains and is read out (the modules' constants are read at call time)."""
    size = kwargs.get("sample_size")
    saved = innovation.SAMPLE_SIZE, fitted.SAMPLE_SIZE
    if size is not None:
        innovation.SAMPLE_SIZE = fitted.SAMPLE_SIZE = size
    try:
        yield
    finally:
        innovation.SAMPLE_SIZE, fitted.SAMPLE_SIZE = saved


def loss_fn(model, x, y):
    """Mean loss: the average over ranks of the half-batch means is the global-batch mean."""
    return F.cross_entropy(model(x), y)


# ------------------------------------------------------------------------------------------- worker
def _fsdp_api():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch < 2.6
        from torch.distributed._composable.fsdp import fully_shard
    try:
        from torch.distributed.tensor import DTensor, Shard
    except ImportError:  # torch < 2.5
        from torch.distributed._tensor import DTensor, Shard
    return fully_shard, DTensor, Shard


def _full(t):
    _, DTensor, _ = _fsdp_api()
    return (t.full_tensor() if isinstance(t, DTensor) else t).detach().clone()


def _describe(t) -> dict:
    _, DTensor, _ = _fsdp_api()
    if isinstance(t, DTensor):
        return dict(type="DTensor", placements=[str(p) for p in t.placements], local_shape=tuple(t.to_local().shape))
    return dict(type=type(t).__name__, placements=None, local_shape=tuple(t.shape))


def _run_case(case: str, rank: int, world: int, mesh) -> dict:
    from kalman_optim.functional import precision_weighted_norm

    wrapper, opt_name, kwargs = CASES[case]
    model = make_model()
    if wrapper == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model)
    else:
        fully_shard, _, _ = _fsdp_api()
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    optimizer = make_optimizer(opt_name, model.parameters(), kwargs)
    rows = GLOBAL_BATCH // world
    for x, y in global_batches():
        optimizer.zero_grad()
        loss_fn(wrapped, x[rank * rows:(rank + 1) * rows], y[rank * rows:(rank + 1) * rows]).backward()
        optimizer.step()

    result = dict(params={}, layout={}, posterior={}, lamb_statistics={})
    for name, p in model.named_parameters():
        result["layout"][name] = _describe(p)
        result["params"][name] = _full(p)
        if kwargs.get("noise") in ("transport", "extrapolated"):  # no posterior read-out (D8 keeps no noise statistic)
            continue
        mean, variance = optimizer.gradient_posterior(p)
        result["posterior"][name] = dict(mean=_full(mean), variance=_full(variance), layout=_describe(mean))
        if opt_name == "KalmanLAMB" and wrapper == "fsdp2":
            # The layer statistics of the trust ratio, on the optimizer's own sharded state: on the
            # DTensor (what KalmanLAMB computes) and on this rank's local shard only (what a per-shard
            # implementation would compute).
            result["lamb_statistics"][name] = dict(
                param_norm=_full(torch.linalg.vector_norm(p)),
                param_norm_local=torch.linalg.vector_norm(p.to_local()).clone(),
                weighted_norm=_full(precision_weighted_norm(mean, variance, 0.01)),
                weighted_norm_local=precision_weighted_norm(mean.to_local(), variance.to_local(), 0.01).clone(),
            )
    return result


def main(out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)  # two ranks on (at least) two cores
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results: dict[str, dict] = {}
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,))
        for case in CASES:
            try:
                with sample_size(CASES[case][2]):
                    results[case] = _run_case(case, rank, world, mesh)
            except Exception:  # recorded per case; the test of that case reports it
                results[case] = dict(error=traceback.format_exc())
            dist.barrier()
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
