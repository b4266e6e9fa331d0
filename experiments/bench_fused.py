r"""Fused (compiled) optimizer steps against torch's fastest AdamW, with the copy bandwidth as the limit (issue 13).

    python -m experiments.bench_fused [--sizes 1e7 3e7] [--tensor-size 1e6] [--repeats N] [--quick]
        [--out results/bench/fused_cpu.json] [--device cpu|cuda]

Set-up: N fp32 parameters in tensors of `--tensor-size` elements (the large matrices of a network), random
gradients set once, lr 1e-3, weight decay 1e-2. Candidates: torch AdamW eager (foreach), fused (torch's own kernel)
and compiled (torch.compile of its step), and every KalmanAdam / KalmanLAMB mode with fused=True. The issue's
baseline: compiled AdamW on a CPU, torch's fused AdamW on CUDA (`BASELINES`), where every mode must also reach 80% of
the copy bandwidth, not 50%.

Warm-up, measured: each candidate's first step (the compile) and the steps after it, one candidate at a time;
"steps to steady" is the first step from which every warm-up step is within 1.5x the candidate's median.
Timing: interleaved rounds in a seeded shuffled order (as experiments/bench_step.py); per candidate the median,
the ratio to compiled AdamW and to the fastest AdamW, and the achieved bandwidth = bytes moved per step / median
time, as a fraction of the measured copy bandwidth: every parameter tensor copied into a buffer of its own (the same
tensors as a step, so caches help both alike). A copy's destination lines are read before they are written
(write-allocate), so a copy moves 12 bytes per 8 counted and a step can exceed 100% of it; the in-place rate (read
and write back, the access pattern of a step) is recorded too (see `stream_bandwidths`).

On CUDA, `--queued-steps K` adds a second timing of the same optimizers: blocks of K steps issued back to back and
synchronized only at their ends (`queued_step_time`), as a training loop runs them; "synchronized" (one step alone)
adds each step's host time to its kernels' time, "queued" only where the host time exceeds them. Both are reported,
each with its own copy-bandwidth yardstick, and the targets are evaluated on both.

Processes: the whole measurement runs in `--processes` fresh Python processes (default 5), one after another, and
the report gives per candidate the median over processes of its per-process numbers (the ratios are taken inside
each process, between interleaved rounds). One process's timings carry an effect of where its tensors landed in
memory that interleaving cannot remove: on the 2-core CPU the same adam kernel measured 0.66x, 0.74x and 1.01x
compiled AdamW at 3e7 in three single-process runs.

Compile times are cold in the first process: inductor's caches go to a fresh temporary folder
(TORCHINDUCTOR_CACHE_DIR) unless --warm-cache is given; the later processes reuse it, and the report's compile
times and warm-up come from the first.
Bytes moved per element are D6's count (reads + writes of parameter, gradient and state) for the variants it
lists, and the same count for the modes added later (innovation and fitted: +R read and written; transport: 5 more
tensors; extrapolated: +the iterate read and written).
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from experiments.bench_step import StepTimer, format_size, markdown_table, quantiles, state_bytes_per_parameter, text_table
from experiments.provenance import atomic_write
from experiments.provenance import provenance as shared_provenance
from kalman_optim import KalmanAdam, KalmanLAMB
from kalman_optim import fused as fused_path

REPO_ROOT = Path(__file__).resolve().parent.parent
SEED, LR, WEIGHT_DECAY = 0, 1e-3, 1e-2
WARMUP_STEPS = 8
STEADY_FACTOR = 1.5
BASELINE = "AdamW [compiled]"
#: The issue's baseline per device: compiled torch AdamW on a CPU (faster there than torch's fused kernel was when the
#: issue was filed), torch's fused AdamW (its multi-tensor CUDA kernel) on a GPU.
BASELINES = {"cpu": BASELINE, "cuda": "AdamW [fused]"}
BASELINE_TEXT = {"cpu": "compiled AdamW", "cuda": "torch's fused AdamW"}
#: The least fraction of the measured copy bandwidth every mode must reach, per device.
MIN_BANDWIDTH_FRACTIONS = {"cpu": 0.5, "cuda": 0.8}

#: name -> (builder, bytes moved per element: reads + writes of 4-byte floats, D6's count)
CANDIDATES: dict[str, tuple[Callable, int]] = {
    "AdamW [foreach]": (lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WEIGHT_DECAY, foreach=True), 28),
    "AdamW [fused]": (lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WEIGHT_DECAY, fused=True), 28),
    BASELINE: (lambda ps: _compiled(torch.optim.AdamW(ps, lr=LR, weight_decay=WEIGHT_DECAY, foreach=True)), 28),
    "KalmanAdam adam": (lambda ps: KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, fused=True), 28),
    "KalmanAdam constant": (lambda ps: KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="constant", fused=True), 28),
    # Modes adam and constant through torch's fused Adam kernel where their default is the compiled one (CUDA).
    "KalmanAdam adam [torch kernel]": (lambda ps: _with_cache_options(
        KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, fused=True), torch_kernel_devices=("cpu", "cuda")), 28),
    "KalmanAdam constant [torch kernel]": (lambda ps: _with_cache_options(
        KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="constant", fused=True),
        torch_kernel_devices=("cpu", "cuda")), 28),
    "KalmanAdam adam+VA": (lambda ps: KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, variance_adaptation=True,
                                                 fused=True), 28),
    # The compiled kernels launched as they are, not replayed from CUDA graphs (fused.GRAPH_DEVICES: CUDA).
    "KalmanAdam adam [no CUDA graphs]": (lambda ps: _with_cache_options(
        KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, fused=True), graph_devices=()), 28),
    "KalmanAdam adam+VA [no CUDA graphs]": (lambda ps: _with_cache_options(
        KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, variance_adaptation=True, fused=True), graph_devices=()), 28),
    "KalmanAdam adaptive": (lambda ps: KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="adaptive", fused=True), 60),
    # Mid start-up: the factor is still computed, with y = 2 t asinh(sqrt(lambda) / 2) large for most coordinates.
    "KalmanAdam adaptive, step 1k": (lambda ps: _past_start_up(KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY,
                                                                       noise="adaptive", fused=True), 1_000), 60),
    "KalmanAdam adaptive, step > 10k": (lambda ps: _past_start_up(KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY,
                                                                          noise="adaptive", fused=True)), 60),
    "KalmanAdam innovation": (lambda ps: KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="innovation",
                                                    fused=True), 36),
    "KalmanAdam innovation+VA": (lambda ps: KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="innovation",
                                                       variance_adaptation=True, fused=True), 36),
    "KalmanAdam fitted": (lambda ps: KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="fitted", fused=True), 36),
    "KalmanAdam fitted+VA": (lambda ps: KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="fitted",
                                                   variance_adaptation=True, fused=True), 36),
    "KalmanAdam transport": (lambda ps: KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="transport",
                                                   fused=True), 60),
    # The gradient is taken at the extrapolated point the parameters hold; the iterate is one more tensor (D8 sec. 4).
    "KalmanAdam extrapolated": (lambda ps: KalmanAdam(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="extrapolated",
                                                      fused=True), 36),
    "KalmanLAMB": (lambda ps: KalmanLAMB(ps, lr=LR, weight_decay=WEIGHT_DECAY, precision_weighting=False, fused=True), 40),
    # Precision weighting by default divides by the previous step's layer mean of P; "exact mean" by this step's.
    "KalmanLAMB precision": (lambda ps: KalmanLAMB(ps, lr=LR, weight_decay=WEIGHT_DECAY, fused=True), 40),
    "KalmanLAMB precision [no CUDA graphs]": (lambda ps: _with_cache_options(
        KalmanLAMB(ps, lr=LR, weight_decay=WEIGHT_DECAY, fused=True), graph_devices=()), 40),
    "KalmanLAMB precision innovation": (lambda ps: KalmanLAMB(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="innovation",
                                                              fused=True), 48),
    "KalmanLAMB precision, exact mean": (lambda ps: KalmanLAMB(ps, lr=LR, weight_decay=WEIGHT_DECAY,
                                                               precision_mean="current", fused=True), 40),
    "KalmanLAMB precision innovation, exact mean": (
        lambda ps: KalmanLAMB(ps, lr=LR, weight_decay=WEIGHT_DECAY, noise="innovation", precision_mean="current",
                              fused=True), 48),
}

#: The issue's targets: (candidate, text, ratio bound, "over" candidate). Bytes ratios to AdamW's 28: adaptive and
#: transport 60/28, extrapolated 36/28 (its iterate read and written).
TARGETS = [
    ("KalmanAdam adam", "adam <= 1.00x {baseline}", 1.00, None),
    ("KalmanAdam constant", "constant <= 1.00x {baseline}", 1.00, None),
    ("KalmanAdam adam+VA", "variance adaptation <= 1.05x {baseline}", 1.05, None),
    ("KalmanAdam adaptive", "adaptive <= 1.1 x 60/28 = 2.36x {baseline}", 1.1 * 60 / 28, None),
    ("KalmanAdam adaptive, step 1k", "adaptive at step 1000 (mid start-up) <= 2.36x {baseline}", 1.1 * 60 / 28, None),
    ("KalmanAdam adaptive, step > 10k", "adaptive after its start-up <= 2.36x {baseline}", 1.1 * 60 / 28, None),
    ("KalmanAdam transport", "transport (D8) <= 1.1 x 60/28 = 2.36x {baseline}", 1.1 * 60 / 28, None),
    ("KalmanAdam extrapolated", "extrapolated (D8) <= 1.1 x 36/28 = 1.41x {baseline}", 1.1 * 36 / 28, None),
    ("KalmanLAMB precision", "precision-weighted LAMB (default: previous step's mean P) <= 1.1x plain LAMB fused",
     1.1, "KalmanLAMB"),
    ("KalmanLAMB precision, exact mean", "precision-weighted LAMB, this step's exact mean P, <= 1.1x plain LAMB",
     1.1, "KalmanLAMB"),
]


def _compiled(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """torch's recipe for a compiled optimizer: torch.compile of its step (compiled on the first call)."""
    optimizer.step = torch.compile(optimizer.step)
    return optimizer


def _with_cache_options(optimizer, **options):
    """`optimizer` with its param groups' kernel caches set to `options`, e.g. torch_kernel_devices=("cpu", "cuda")
    (modes adam/constant through torch's fused Adam kernel on every device; fused.TORCH_KERNEL_DEVICES: a CPU only) or
    graph_devices=() (the compiled kernels without CUDA graphs; fused.GRAPH_DEVICES: CUDA)."""
    for group in optimizer.param_groups:
        for name, value in options.items():
            setattr(optimizer._kernel_cache(group), name, value)
    return optimizer


def _past_start_up(optimizer: KalmanAdam, step: int = 10_000) -> KalmanAdam:
    """One step, then every state's step count set to `step`: by default mode adaptive past its start-up factor
    (exactly 1 from step ~7,970 in float32 at beta_range[1] = 0.999), the kernel a long run spends its steps in."""
    optimizer.step()
    for state in optimizer.state.values():
        state["step"].fill_(step)
    return optimizer


def make_parameters(total: int, tensor_size: int, device: torch.device, seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    sizes = [tensor_size] * (total // tensor_size) + ([total % tensor_size] if total % tensor_size else [])
    params = []
    for size in sizes:
        param = torch.nn.Parameter(torch.randn(size, generator=generator).to(device))
        param.grad = torch.randn(size, generator=generator).to(device)
        params.append(param)
    return params


def stream_bandwidths(params: list[torch.Tensor], repeats: int = 20, per_sample: int = 1) -> dict[str, float]:
    """Bytes per second, median of `repeats`, over the same tensors a step streams through (caches help alike):
    "copy" = every parameter tensor copied into a buffer of its own (8 bytes per element); "in_place" = every tensor
    read and written back (x.mul_(1), 8 bytes per element), the access pattern of an optimizer step. A copy's writes
    go to lines it never read, which the CPU first reads (write-allocate), so on CPU it understates the limit.
    `per_sample` operations back to back per timed sample (synchronized at its ends on CUDA), as `queued_step_time`."""
    sources = [p.detach() for p in params]
    destinations = [torch.empty_like(p) for p in sources]
    device, moved = sources[0].device, 8 * sum(p.numel() for p in sources)

    def rate(operation) -> float:
        times = []
        for _ in range(repeats + 2):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(per_sample):
                operation()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - start) / per_sample)
        return moved / quantiles(times[2:])[1]

    return dict(copy=rate(lambda: torch._foreach_copy_(destinations, sources)),
                in_place=rate(lambda: torch._foreach_mul_(destinations, 1.0)))


def warm_up(optimizer, timer: StepTimer) -> dict[str, Any]:
    """Time the first WARMUP_STEPS steps one by one (the first includes the compile)."""
    times = [timer(optimizer)[0] for _ in range(WARMUP_STEPS)]
    return dict(first_step_s=times[0], warmup_times_s=times, compilations=getattr(optimizer, "fused_compilations", None))


def queued_step_time(optimizer: torch.optim.Optimizer, steps: int, device: torch.device) -> float:
    """Seconds per step of `steps` steps issued back to back, synchronized only before the first and after the last:
    what a training loop sees, whose host queues the next work while the GPU runs (torch.utils.benchmark's Timer
    times blocks of statements the same way). A step's host time then costs only where it exceeds its kernels'."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def timed_rounds(names: list[str], rounds: int, rng: random.Random, time_one: Callable[[str], float],
                 bar) -> dict[str, list[float]]:
    """`rounds` rounds, each timing every candidate once in a shuffled order (interleaved: drifts hit all alike)."""
    order, times = list(names), {name: [] for name in names}
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                times[name].append(time_one(name))
                bar.update(1)
    finally:
        gc.enable()
    return times


def bench_size(total: int, tensor_size: int, names: list[str], rounds: int, device: torch.device, seed: int, bar,
               queued_steps: int = 0) -> list[dict[str, Any]]:
    """One size's results: synchronized steps (each timed alone, its host time added to its kernels'), and with
    `queued_steps` > 0 also steps queued back to back in blocks of that many (`queued_step_time`)."""
    params = make_parameters(total, tensor_size, device, seed)
    timer = StepTimer(device)
    optimizers, warm = {}, {}
    for name in names:
        optimizers[name] = CANDIDATES[name][0](params)
        warm[name] = warm_up(optimizers[name], timer)
        bar.update(WARMUP_STEPS)
    rng = random.Random(f"{seed}/{total}")
    times = timed_rounds(names, rounds, rng, lambda name: timer(optimizers[name])[0], bar)
    results = [summarize(times, stream_bandwidths(params), warm, optimizers, params, total, tensor_size, device,
                         timing="synchronized", steps_per_sample=1)]
    if queued_steps:
        queued = timed_rounds(names, rounds, rng, lambda name: queued_step_time(optimizers[name], queued_steps, device),
                              bar)
        results.append(summarize(queued, stream_bandwidths(params, per_sample=queued_steps), warm, optimizers, params,
                                 total, tensor_size, device, timing="queued", steps_per_sample=queued_steps))
    del optimizers, params
    gc.collect()
    return results


def summarize(times: dict[str, list[float]], bandwidths: dict[str, float], warm: dict, optimizers: dict, params: list,
              total: int, tensor_size: int, device: torch.device, *, timing: str, steps_per_sample: int) -> dict:
    """One size's result of one timing: per candidate the median step time, its ratios, its bandwidth fraction."""
    names = list(times)
    bandwidth = bandwidths["copy"]  # the yardstick; the in-place rate is recorded beside it
    rounds = len(times[names[0]])
    medians = {name: quantiles(values)[1] for name, values in times.items()}
    baseline = BASELINES[device.type]
    fastest_adamw = min((n for n in names if n.startswith("AdamW")), key=medians.get)
    stats = {}
    for name in names:
        median = medians[name]
        steady = next(i for i in range(WARMUP_STEPS + 1)
                      if all(t <= STEADY_FACTOR * median for t in warm[name]["warmup_times_s"][i:]))
        moved = CANDIDATES[name][1] * total
        stats[name] = dict(
            median_s=median, q25_s=quantiles(times[name])[0], q75_s=quantiles(times[name])[2],
            ratio_to_compiled_adamw=median / medians[BASELINE] if BASELINE in medians else None,
            ratio_to_baseline=median / medians[baseline],
            ratio_to_fastest_adamw=median / medians[fastest_adamw],
            bytes_moved_per_element=CANDIDATES[name][1], bandwidth_fraction=moved / median / bandwidth,
            state_bytes_per_param=state_bytes_per_parameter(optimizers[name], params),
            steps_to_steady=steady + 1, **warm[name], times_s=times[name],
        )
    return dict(size=total, tensor_size=tensor_size, tensors=-(-total // tensor_size), rounds=rounds,
                device=device.type, baseline=baseline, timing=timing, steps_per_sample=steps_per_sample,
                bandwidth_bytes_per_s=bandwidth, copy_bandwidth_bytes_per_s=bandwidths["copy"],
                in_place_bandwidth_bytes_per_s=bandwidths["in_place"], fastest_adamw=fastest_adamw, candidates=stats)


def ratio_between(result: dict, name: str, over: str) -> float:
    """Step time of `name` over `over`: the median over processes of the ratio of their medians in each process
    (a single-process result: the ratio of its medians)."""
    runs = result.get("processes") or [result]
    return statistics.median([run["candidates"][name]["median_s"] / run["candidates"][over]["median_s"]
                              for run in runs])


def process_times(result: dict, name: str) -> list[list[float]]:
    """`name`'s round times per process (a merged result keeps them process after process, rounds in order)."""
    times = result["candidates"][name]["times_s"]
    count = len(result.get("processes") or [result])
    per = len(times) // count
    return [times[k * per:(k + 1) * per] for k in range(count)]


def ratio_interval(result: dict, name: str, over: str, level: float = 0.95, resamples: int = 2000,
                   seed: int = SEED) -> tuple[float, float]:
    """A `level` interval for ratio_between(result, name, over): a two-level bootstrap that resamples processes and,
    within each, its interleaved rounds (the two candidates' times of one round as a pair), and recomputes the
    statistic as ratio_between does (median over processes of each process's ratio of medians). The processes'
    share matters most: where a process's tensors landed moves every ratio in it (module docstring)."""
    pairs = [np.array([a, b]) for a, b in zip(process_times(result, name), process_times(result, over))]
    rng = np.random.default_rng(seed)
    statistics_ = np.empty(resamples)
    for index in range(resamples):
        ratios = []
        for k in rng.integers(len(pairs), size=len(pairs)):
            rounds = pairs[k][:, rng.integers(pairs[k].shape[1], size=pairs[k].shape[1])]
            ratios.append(np.median(rounds[0]) / np.median(rounds[1]))
        statistics_[index] = np.median(ratios)
    low, high = np.quantile(statistics_, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def merge_processes(results: list[dict]) -> dict:
    """One size's results of several processes as one: per candidate the median over processes of the median time,
    the ratios and the bandwidth fraction; quartiles over all rounds; the times of every round, process after
    process (so round i of every candidate is still the same round); compile times and warm-up of the first
    process (its inductor cache was the cold one). `processes` keeps each process's medians and bandwidths."""
    first = results[0]
    merged = {key: value for key, value in first.items() if key not in ("candidates", "processes")}
    merged["rounds"] = sum(r["rounds"] for r in results)
    for key in ("bandwidth_bytes_per_s", "copy_bandwidth_bytes_per_s", "in_place_bandwidth_bytes_per_s"):
        merged[key] = statistics.median([r[key] for r in results])
    candidates = {}
    for name, entry in first["candidates"].items():
        runs = [r["candidates"][name] for r in results]
        times = [t for run in runs for t in run["times_s"]]
        q25, _, q75 = quantiles(times)
        candidates[name] = dict(entry, median_s=statistics.median([run["median_s"] for run in runs]), q25_s=q25,
                                q75_s=q75, times_s=times,
                                bandwidth_fraction=statistics.median([run["bandwidth_fraction"] for run in runs]))
    merged["candidates"] = candidates
    merged["fastest_adamw"] = min((n for n in candidates if n.startswith("AdamW")), key=lambda n: candidates[n]["median_s"])
    merged["processes"] = [dict(bandwidth_bytes_per_s=r["bandwidth_bytes_per_s"],
                                candidates={n: dict(median_s=c["median_s"]) for n, c in r["candidates"].items()})
                           for r in results]
    for name, entry in candidates.items():
        entry["ratio_to_compiled_adamw"] = ratio_between(merged, name, BASELINE) if BASELINE in candidates else None
        entry["ratio_to_baseline"] = ratio_between(merged, name, merged.get("baseline", BASELINE))
        entry["ratio_to_fastest_adamw"] = ratio_between(merged, name, merged["fastest_adamw"])
    return merged


def evaluate_targets(result: dict) -> list[dict]:
    device = result.get("device", "cpu")
    minimum = MIN_BANDWIDTH_FRACTIONS[device]
    rows = []
    for name, text, bound, over in TARGETS:
        if name not in result["candidates"]:  # a run restricted with --candidates
            continue
        over = over or result.get("baseline", BASELINE)
        ratio = ratio_between(result, name, over)
        rows.append(dict(target=text.format(baseline=BASELINE_TEXT[device]), candidate=name, versus=over,
                         size=result["size"], timing=result.get("timing", "synchronized"), ratio=ratio, bound=bound,
                         met=bool(ratio <= bound), interval=list(ratio_interval(result, name, over))))
    for name, entry in result["candidates"].items():
        if not name.startswith("AdamW"):
            rows.append(dict(target=f"{name}: >= {100 * minimum:.0f}% of copy bandwidth", candidate=name,
                             versus="copy", size=result["size"], timing=result.get("timing", "synchronized"),
                             ratio=entry["bandwidth_fraction"], bound=minimum,
                             met=bool(entry["bandwidth_fraction"] >= minimum)))
    return rows


def result_label(result: dict) -> str:
    """A result's size, and its timing when the steps were queued ("1e8 queued": `queued_step_time`)."""
    queued = result.get("timing") == "queued"
    return format_size(result["size"]) + (" queued" if queued else "")


def timing_result(report: dict, timing: str = "synchronized") -> dict | None:
    """The largest size's result of `timing` ("synchronized" or "queued"); reports without timings are synchronized."""
    matching = [r for r in report["results"] if r.get("timing", "synchronized") == timing]
    return matching[-1] if matching else None


def tables(report: dict):
    results = report["results"]
    device = report["config"]["device"]
    header = ["candidate", "B/param", "B moved/elem"] + [
        f"N={result_label(r)}: x {BASELINE_TEXT[device]} / x fastest AdamW / % copy bandwidth" for r in results
    ] + ["first step s", "steps to steady"]
    rows = []
    for name in report["candidates"]:
        last = results[-1]["candidates"][name]
        rows.append([name, f"{last['state_bytes_per_param']:.1f}", str(last["bytes_moved_per_element"])] + [
            f"{r['candidates'][name].get('ratio_to_baseline', r['candidates'][name]['ratio_to_compiled_adamw']):.2f}"
            f" / {r['candidates'][name]['ratio_to_fastest_adamw']:.2f}"
            f" / {100 * r['candidates'][name]['bandwidth_fraction']:.0f}%" for r in results
        ] + [f"{last['first_step_s']:.1f}", str(last["steps_to_steady"])])
    target_header = ["target", "N", "measured", "95% interval", "met"]
    target_rows = [[t["target"], result_label(t), f"{t['ratio']:.2f}",
                    f"[{t['interval'][0]:.2f}, {t['interval'][1]:.2f}]" if "interval" in t else "",
                    "met" if t["met"] else "NOT met"] for t in report["targets"]]
    return header, rows, target_header, target_rows


QUEUED_TEXT = ("Two timings: \"synchronized\" times each step alone (the host waits for the GPU before and after it, "
               "so the step's host time adds to its kernels'); \"queued\" times blocks of {k} steps issued back to back "
               "and synchronized only at their ends, as a training loop runs them (the host queues work while the GPU "
               "runs), in rounds of their own after the synchronized ones; the copy bandwidth is measured both ways. ")


def describe(report: dict) -> str:
    p, c = report["provenance"], report["config"]
    bandwidths = ", ".join(f"N={result_label(r)}: copy {r['copy_bandwidth_bytes_per_s'] / 1e9:.1f}, in place "
                           f"{r['in_place_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s" for r in report["results"])
    return (f"{p['device_name']} ({p['device']}), {p['threads']} threads, torch {p['torch']}, commit "
            f"{(p['git_commit'] or 'unknown')[:12]}{' (dirty)' if p['git_dirty'] else ''}, {p['date_utc']}. Tensors of "
            f"{format_size(c['tensor_size'])} fp32 elements; {c['rounds']} interleaved rounds after {WARMUP_STEPS} warm-up "
            f"steps per candidate (seed {c['seed']}) in each of {c.get('processes', 1)} processes, medians over them. "
            f"{QUEUED_TEXT.format(k=c['queued_steps']) if c.get('queued_steps') else ''}"
            f"Measured bandwidth (\"%\" is of the copy's): {bandwidths}. Compile "
            f"times {'with a warm' if c.get('warm_cache') else 'from an empty'} inductor cache. Last two columns: at the "
            "largest N. Targets: met or not by the measured ratio; its 95% interval is a bootstrap over the processes and "
            "their rounds (`ratio_interval`). Inductor options of the fused kernels: "
            f"{c.get('kernel_config', 'not recorded')}.")


def write_markdown(report: dict, out: Path) -> None:
    header, rows, target_header, target_rows = tables(report)
    atomic_write(out.with_suffix(".md"), "\n\n".join([
        f"# Fused optimizer steps ({report['config']['device']})", f"Generated by `{report['provenance']['command']}`.",
        describe(report), "## Step time and bandwidth", markdown_table(header, rows), "## Targets (issue 13)",
        markdown_table(target_header, target_rows)]) + "\n")


#: A variant's suffix -> whether on a device type it is what the default candidate already runs.
VARIANT_IS_DEFAULT = {
    "[torch kernel]": lambda device: device in fused_path.TORCH_KERNEL_DEVICES,
    "[no CUDA graphs]": lambda device: device not in fused_path.GRAPH_DEVICES,
}


def default_candidates(device: str) -> list[str]:
    """Every candidate, less the variants ("[torch kernel]", "[no CUDA graphs]") that on `device` run what the default
    candidate runs (on a CPU: both)."""
    return [name for name in CANDIDATES
            if not any(name.endswith(suffix) and same(device) for suffix, same in VARIANT_IS_DEFAULT.items())]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_fused", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=None,
                        help="total parameter counts (default 1e7 3e7 on a CPU, 1e8 on CUDA)")
    parser.add_argument("--tensor-size", type=float, default=1e6, help="elements per tensor (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per size (default 30; --quick 5)")
    parser.add_argument("--quick", action="store_true", help="1e6 parameters in tensors of 1e5, 5 rounds")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=None,
                        help="default: every candidate, less the [torch kernel] variants where that is the default path")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--warm-cache", action="store_true", help="keep inductor's cache (compile times are then warm)")
    parser.add_argument("--kernel-option", action="append", default=[], metavar="NAME=VALUE",
                        help="an inductor option of the fused kernels (kalman_optim.fused.KERNEL_CONFIG) for this run, "
                             "e.g. combo_kernels=False (an A/B run; recorded in the report's config)")
    parser.add_argument("--queued-steps", type=int, default=0, metavar="K",
                        help="also time blocks of K steps queued back to back, synchronized at their ends (a GPU's "
                             "training-loop timing; 0 = off, the default)")
    parser.add_argument("--processes", type=int, default=5,
                        help="fresh processes measured one after another, medians over them (default %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.tensor_size = args.sizes or [1e6], 1e5
        args.repeats = 5 if args.repeats is None else args.repeats
    args.sizes = [int(s) for s in (args.sizes or ([1e8] if args.device == "cuda" else [1e7, 3e7]))]
    args.tensor_size, args.repeats = int(args.tensor_size), 30 if args.repeats is None else args.repeats
    if args.repeats < 1 or args.tensor_size < 1 or args.processes < 1 or any(s < 1 for s in args.sizes):
        parser.error("--sizes, --tensor-size, --repeats and --processes must be >= 1")
    if args.queued_steps < 0:
        parser.error(f"--queued-steps must be >= 0 (0 = off), got {args.queued_steps}")
    args.candidates = args.candidates or default_candidates(args.device)
    for needed in (BASELINES[args.device], "KalmanLAMB"):
        if needed not in args.candidates:
            args.candidates.insert(0, needed)
    args.out = args.out or REPO_ROOT / "results" / "bench" / f"fused_{args.device}.json"
    try:
        args.kernel_options = {name: ast.literal_eval(value) for name, value in
                               (option.split("=", 1) for option in args.kernel_option)}
    except (ValueError, SyntaxError):
        parser.error(f"--kernel-option takes NAME=VALUE with a Python literal VALUE, got {args.kernel_option}")
    return args


def run_in_process(argv: list[str], module: str = "experiments.bench_fused",
                   options: tuple[str, ...] = ("--warm-cache",)) -> dict:
    """One fresh `python -m <module> --processes 1` with the same arguments (the same seed: the same data) and
    `options`, its report. bench_fused's processes share the inductor cache of this run (`--warm-cache`: the cache
    folder is chosen by this process, cold at first)."""
    with tempfile.TemporaryDirectory(prefix="bench_process_") as folder:
        out = Path(folder) / "report.json"
        child = _without_option(_without_option(argv, "--out"), "--processes")
        command = [sys.executable, "-m", module, *child, "--processes", "1", "--out", str(out), "--no-progress",
                   *options]
        subprocess.run(command, check=True, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def _without_option(argv: list[str], option: str) -> list[str]:
    """argv without `option` and its value (either "--option value" or "--option=value")."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            out.append(item)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    if not args.warm_cache:  # cold compile times: nothing compiled before is reused
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench_fused_inductor_")
    names = [n for n in CANDIDATES if n in args.candidates]
    fused_path.KERNEL_CONFIG.update(args.kernel_options)
    config = dict(sizes=args.sizes, tensor_size=args.tensor_size, rounds=args.repeats, seed=args.seed, lr=LR,
                  weight_decay=WEIGHT_DECAY, dtype="float32", threads=torch.get_num_threads(), device=args.device,
                  warmup_steps=WARMUP_STEPS, steady_factor=STEADY_FACTOR, warm_cache=args.warm_cache)
    config["processes"] = args.processes
    config["queued_steps"] = args.queued_steps
    config["kernel_config"] = dict(fused_path.KERNEL_CONFIG)
    if args.processes == 1:
        total_steps = len(args.sizes) * len(names) * (WARMUP_STEPS + args.repeats * (1 + bool(args.queued_steps)))
        with tqdm(total=total_steps, desc="optimizer steps", disable=args.no_progress, file=sys.stderr,
                  mininterval=2.0) as bar:
            results = [result for size in args.sizes
                       for result in bench_size(size, args.tensor_size, names, args.repeats, device, args.seed, bar,
                                                args.queued_steps)]
    else:
        runs = [run_in_process(argv) for _ in tqdm(range(args.processes), desc="processes", disable=args.no_progress,
                                                   file=sys.stderr)]
        results = [merge_processes([run["results"][i] for run in runs]) for i in range(len(runs[0]["results"]))]
    report = dict(benchmark="fused optimizer steps (experiments/bench_fused.py, issue 13)",
                  provenance=shared_provenance(device, argv, args.seed, module="experiments.bench_fused"),
                  config=config, candidates=names, results=results,
                  targets=[row for result in results for row in evaluate_targets(result)])
    atomic_write(args.out, json.dumps(report, indent=1) + "\n")
    write_markdown(report, args.out)
    header, rows, target_header, target_rows = tables(report)
    print(describe(report))
    print(text_table(header, rows))
    print(text_table(target_header, target_rows))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
