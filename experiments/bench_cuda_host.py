r"""Host time of the fused CUDA step, measured on a CPU (issue 13): the CUDA code path with its kernels taken out.

    python -m experiments.bench_cuda_host [--tensors 10] [--tensor-size 1e3] [--repeats 300] [--processes 3]
        [--out results/bench/cuda_host.json]

Why: a GPU step timed alone ("synchronized" in bench_fused) takes its kernels' time plus the host time spent before
the first launch (scalars, staging, address checks, the graph replay). On the H200 (results/bench/fused_cuda.md)
the modes that missed 80% of the copy bandwidth only when synchronized (innovation, fitted) missed it by their host
time. This measures that host time where no GPU is lent.

Plan: the candidates of bench_fused (the same builders), on `--tensors` CPU tensors of `--tensor-size` elements, with
the CUDA structure (`emulate_cuda_structure`): a bucket per (dtype, step) as on CUDA (not LAMB's per-tensor calls of
a CPU), modes adam/constant through the compiled kernel (not torch's fused Adam kernel, a CPU's choice), CUDA graphs
recorded after their warm-up. A recorded graph is a no-op (`NoOpGraph`): after the warm-up a step runs everything but
the kernels. The staging of the coefficients is a CPU tensor copy, not CUDA's pinned ring and asynchronous copy.
Measurement: bench_fused's warm-up, then interleaved rounds; per candidate the median step time in microseconds,
per process and as the median over fresh processes (`--processes`). Torch's fused AdamW runs for real on the tiny
tensors as a yardstick of the machine's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from experiments import bench_fused
from experiments.bench_step import StepTimer, markdown_table
from experiments.provenance import atomic_write
from experiments.provenance import provenance as shared_provenance
from kalman_optim import cuda_graphs
from kalman_optim import fused as fused_path

DEFAULT_CANDIDATES = ("AdamW [fused]", "KalmanAdam adam", "KalmanAdam adam+VA", "KalmanAdam adaptive",
                      "KalmanAdam innovation", "KalmanAdam fitted", "KalmanAdam transport", "KalmanAdam extrapolated",
                      "KalmanLAMB", "KalmanLAMB precision", "KalmanLAMB precision, exact mean")


class NoOpGraph:
    """What `cuda_graphs._record` returns here: a graph whose replay launches nothing."""

    def __init__(self, call) -> None:
        del call

    def replay(self) -> None:
        pass


@contextlib.contextmanager
def emulate_cuda_structure():
    """Within: the fused path takes CUDA's structure on a CPU (see the module's docstring), for the optimizers built
    within (a param group's kernel cache copies the device lists when it is made)."""
    saved = [(fused_path, "GRAPH_DEVICES"), (fused_path, "TORCH_KERNEL_DEVICES"), (fused_path, "per_tensor_calls"),
             (cuda_graphs, "_record")]
    saved = [(module, name, getattr(module, name)) for module, name in saved]
    fused_path.GRAPH_DEVICES = ("cpu",)
    fused_path.TORCH_KERNEL_DEVICES = ()
    fused_path.per_tensor_calls = lambda device: False
    cuda_graphs._record = NoOpGraph
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def measure(names: list[str], tensors: int, tensor_size: int, rounds: int, seed: int, bar) -> dict[str, Any]:
    """Per candidate: the warm-up's step times and the median of `rounds` interleaved timed steps (seconds)."""
    params = bench_fused.make_parameters(tensors * tensor_size, tensor_size, torch.device("cpu"), seed)
    timer = StepTimer(torch.device("cpu"))
    optimizers, warm = {}, {}
    with emulate_cuda_structure():
        for name in names:
            optimizers[name] = bench_fused.CANDIDATES[name][0](params)
            warm[name] = bench_fused.warm_up(optimizers[name], timer)["warmup_times_s"]
            bar.update(bench_fused.WARMUP_STEPS)
        times = bench_fused.timed_rounds(names, rounds, random.Random(seed), lambda name: timer(optimizers[name])[0],
                                         bar)
    replays = {name: sum(optimizers[name]._kernel_cache(g).graphs.replays for g in optimizers[name].param_groups)
               if hasattr(optimizers[name], "_kernel_cache") else None for name in names}
    return {name: dict(median_s=statistics.median(times[name]), warmup_times_s=warm[name], graph_replays=replays[name],
                       times_s=times[name]) for name in names}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=10)
    parser.add_argument("--tensor-size", type=float, default=1e3)
    parser.add_argument("--repeats", type=int, default=300, help="timed rounds (default %(default)s)")
    parser.add_argument("--processes", type=int, default=3, help="fresh processes (default %(default)s)")
    parser.add_argument("--candidates", nargs="+", choices=list(bench_fused.CANDIDATES), default=None)
    parser.add_argument("--seed", type=int, default=bench_fused.SEED)
    parser.add_argument("--out", type=Path, default=bench_fused.REPO_ROOT / "results" / "bench" / "cuda_host.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.tensor_size = int(args.tensor_size)
    if min(args.tensors, args.tensor_size, args.repeats, args.processes) < 1:
        parser.error("--tensors, --tensor-size, --repeats and --processes must be >= 1")
    args.candidates = args.candidates or list(DEFAULT_CANDIDATES)
    if any("[no CUDA graphs]" in name for name in args.candidates):
        parser.error("candidates without CUDA graphs run their kernels: their time is not host time")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    names = [n for n in bench_fused.CANDIDATES if n in args.candidates]
    if args.processes == 1:
        total = len(names) * (bench_fused.WARMUP_STEPS + args.repeats)
        with tqdm(total=total, desc="optimizer steps", disable=args.no_progress, file=sys.stderr, mininterval=2.0) as bar:
            processes = [measure(names, args.tensors, args.tensor_size, args.repeats, args.seed, bar)]
    else:
        runs = (bench_fused.run_in_process(argv, "experiments.bench_cuda_host", options=())
                for _ in tqdm(range(args.processes), desc="processes", disable=args.no_progress, file=sys.stderr))
        processes = [run["processes"][0] for run in runs]
    summary = {name: dict(median_us=1e6 * statistics.median(p[name]["median_s"] for p in processes),
                          process_medians_us=[1e6 * p[name]["median_s"] for p in processes]) for name in names}
    report = dict(benchmark="host time of the fused CUDA step, emulated on a CPU (experiments/bench_cuda_host.py)",
                  provenance=shared_provenance(torch.device("cpu"), argv, args.seed,
                                               module="experiments.bench_cuda_host"),
                  config=dict(tensors=args.tensors, tensor_size=args.tensor_size, rounds=args.repeats,
                              processes=args.processes, seed=args.seed, threads=torch.get_num_threads()),
                  candidates=names, summary=summary, processes=processes)
    atomic_write(args.out, json.dumps(report, indent=1) + "\n")
    rows = [[name, f"{s['median_us']:.0f}", ", ".join(f"{t:.0f}" for t in s["process_medians_us"])]
            for name, s in summary.items()]
    p = report["provenance"]
    atomic_write(args.out.with_suffix(".md"), "\n\n".join([
        "# Host time of the fused CUDA step (emulated on a CPU)", f"Generated by `{p['command']}`.",
        f"{p['device_name']}, {p['threads']} threads, torch {p['torch']}, commit {(p['git_commit'] or 'unknown')[:12]}"
        f"{' (dirty)' if p['git_dirty'] else ''}, {p['date_utc']}. {args.tensors} tensors of {args.tensor_size} "
        f"fp32 elements, {args.repeats} interleaved rounds after {bench_fused.WARMUP_STEPS} warm-up steps, "
        f"{args.processes} processes. The CUDA code path with CUDA graphs whose replays launch nothing (see the "
        "module's docstring): a step's time here is its host time; AdamW [fused] runs its real kernel.",
        markdown_table(["candidate", "median step (us)", "per process (us)"], rows)]) + "\n")
    print("\n".join(f"{row[0]:40s} {row[1]:>6s} us  [{row[2]}]" for row in rows))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
