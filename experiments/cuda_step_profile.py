"""Where a fused step's time goes on a GPU: host time of `step()` (until it returns, nothing synchronized), the
synchronized wall time, and the GPU kernels' own time (torch.profiler), for torch's fused AdamW and KalmanAdam.

    python -m experiments.cuda_step_profile [--sizes 1e7 1e6] [--total 1e8]

A measurement aid for bench_fused's CUDA rows (issue 13): a step whose wall time exceeds its kernels' time by its
host time is bound by Python, not by memory.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from experiments.bench_fused import CANDIDATES, make_parameters

#: bench_fused's builders of the optimizers profiled (same learning rate and weight decay); the first four by default.
OPTIMIZERS = {name: CANDIDATES[name][0] for name in CANDIDATES}
DEFAULT_OPTIMIZERS = ["AdamW [fused]", "KalmanAdam adam", "KalmanAdam constant", "KalmanAdam adam+VA"]


def measure(optimizer, steps: int = 30) -> dict[str, float]:
    for _ in range(5):
        optimizer.step()
    host, wall = [], []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.step()
        host.append(time.perf_counter() - start)
        torch.cuda.synchronize()
        wall.append(time.perf_counter() - start)
    averages = profiled_steps(optimizer, 10).key_averages()
    kernels = sum(e.self_device_time_total for e in averages) / 10 / 1e6
    launches = sum(e.count for e in averages if e.self_device_time_total > 0) / 10
    return dict(host_ms=1e3 * statistics.median(host), wall_ms=1e3 * statistics.median(wall), kernels_ms=1e3 * kernels,
                kernels_per_step=launches)


def profiled_steps(optimizer, steps: int) -> profile:
    """torch.profiler's record of the GPU activity of `steps` steps (after the caller's warm-up)."""
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            optimizer.step()
        torch.cuda.synchronize()
    return prof


def print_kernel_table(name: str, optimizer, steps: int = 10) -> None:
    """Each GPU kernel of `name`'s step: launches and microseconds per step, the slowest first."""
    for _ in range(5):
        optimizer.step()
    torch.cuda.synchronize()
    kernels = sorted((e for e in profiled_steps(optimizer, steps).key_averages() if e.self_device_time_total > 0),
                     key=lambda e: -e.self_device_time_total)
    print(f"##### kernels of {name} per step", flush=True)
    for e in kernels:
        print(f"  {e.self_device_time_total / steps:9.1f} us  {e.count / steps:4.1f}x  {e.key[:150]}", flush=True)


def print_host_profile(name: str, optimizer, steps: int = 50) -> None:
    """cProfile of `steps` unsynchronized steps of `name`: where the host time goes (top 25 by own time)."""
    import cProfile
    import io
    import pstats

    for _ in range(5):
        optimizer.step()
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        optimizer.step()
    profiler.disable()
    torch.cuda.synchronize()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
    print(f"##### host profile of {name}, {steps} steps", stream.getvalue(), sep="\n", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e7, 1e6], help="elements per tensor")
    parser.add_argument("--total", type=float, default=1e8)
    parser.add_argument("--optimizers", nargs="+", choices=list(OPTIMIZERS), default=DEFAULT_OPTIMIZERS)
    parser.add_argument("--no-table", action="store_true", help="skip the operator table of mode adam")
    parser.add_argument("--kernel-table", nargs="+", choices=list(OPTIMIZERS), default=[], metavar="NAME",
                        help="print these optimizers' kernels (name, launches and GPU time per step), slowest first")
    parser.add_argument("--host-profile", nargs="+", choices=list(OPTIMIZERS), default=[], metavar="NAME",
                        help="print a cProfile of these optimizers' steps (host time by function)")
    args = parser.parse_args()
    device = torch.device("cuda")
    for size in args.sizes:
        params = make_parameters(int(args.total), int(size), device, seed=0)
        print(f"{int(args.total):.0e} parameters in tensors of {int(size):.0e}")
        for name in args.optimizers:
            result = measure(OPTIMIZERS[name](params))
            print(f"  {name:22s} host {result['host_ms']:7.3f} ms  wall {result['wall_ms']:7.3f} ms  "
                  f"kernels {result['kernels_ms']:7.3f} ms in {result['kernels_per_step']:.0f} per step", flush=True)
        for name in args.kernel_table:
            print_kernel_table(name, OPTIMIZERS[name](params))
        for name in args.host_profile:
            print_host_profile(name, OPTIMIZERS[name](params))
        if args.no_table:
            del params
            continue
        optimizer = OPTIMIZERS["KalmanAdam adam"](params)
        for _ in range(3):
            optimizer.step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                optimizer.step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14), flush=True)
        del params


if __name__ == "__main__":
    main()
