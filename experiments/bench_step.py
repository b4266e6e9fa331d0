r"""Optimizer step time and state memory: KalmanAdam and KalmanLAMB against torch.optim.AdamW (issue #4).

    python -m experiments.bench_step [--sizes 1e5 1e6 1e7 3e7] [--repeats N] [--quick]
        [--out results/bench/step_cpu.json] [--device cpu|cuda] [--layout many|few|both]

Set-up: for each total parameter count N, one set of fp32 parameters -- layout "many": tensors of 1e5
elements (the layers of a network); "few": 4 large tensors -- with random gradients set once. Every
candidate steps on these same tensors with its own state (lr 1e-3, weight decay 1e-2).

Timing: interleaved rounds. Each round steps every candidate once, in an order shuffled by a seeded rng,
so slow drift of the machine (clock frequency, other load) falls on all candidates alike. Warm-up rounds
come first (state allocation; 3 steps reach every branch of noise="adaptive") and are not timed. One
sample is time.perf_counter() around optimizer.step() -- on CUDA with torch.cuda.synchronize() on both
sides, CUDA-event times are recorded as well. Per candidate: median and interquartile range over rounds,
and the ratio of its median to the median of the fastest torch AdamW implementation at that size (the
baseline; the per-round paired ratios give the ratio's IQR). torch.set_num_threads is fixed and recorded.

Memory: bytes of every tensor in optimizer.state except the scalar step, divided by the parameter count.

Output: <out> (JSON with provenance: commit, dirty flag, versions, device, threads, date, config, seed,
raw per-round times) written atomically, the same tables as Markdown in <out stem>.md, and a printed
table with the issue's targets marked met / not met (nothing is asserted: this is a measurement).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:  # minor page faults per step (fresh memory for temporaries) -- Unix only
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None
import torch
from tqdm import tqdm

from experiments.provenance import atomic_write
from experiments.provenance import provenance as shared_provenance
from kalman_optim import KalmanAdam, KalmanLAMB

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SIZES = (1e5, 1e6, 1e7, 3e7)
QUICK_SIZES = (1e5, 1e6, 1e7)
QUICK_REPEATS = 10
TENSOR_SIZE = 100_000  # elements per tensor in layout "many"
FEW_TENSORS = 4  # tensors in layout "few"
WARMUP = 3
SEED = 0
LR, WEIGHT_DECAY = 1e-3, 1e-2


def default_repeats(size: int) -> int:
    """Rounds per size of the default run: `make bench` takes about 3 to 4 minutes on 2 CPU cores."""
    if size <= 300_000:
        return 200
    if size <= 3_000_000:
        return 100
    if size <= 15_000_000:
        return 50
    return 30


# ----------------------------------------------------------------------------------------- candidates
OPTIMIZERS = {"AdamW": torch.optim.AdamW, "KalmanAdam": KalmanAdam, "KalmanLAMB": KalmanLAMB}
KALMAN_ADAM_MODES = {
    "adam": dict(noise="adam"),
    "constant": dict(noise="constant"),
    "adaptive": dict(noise="adaptive"),
    "adam+VA": dict(noise="adam", variance_adaptation=True),
}
# The eager paths (fused=False; experiments/bench_fused.py times the fused one): foreach=None is the library's
# default eager choice for the device; both eager paths are also forced.
PATHS = {"default": None, "foreach": True, "loop": False}


@dataclass(frozen=True)
class Candidate:
    name: str
    optimizer: str  # a key of OPTIMIZERS
    options: dict = field(default_factory=dict)
    mode: str | None = None  # a key of KALMAN_ADAM_MODES for KalmanAdam
    path: str = "default"  # "default" (foreach=None), "foreach", "loop", or "fused" (AdamW)

    def build(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.optimizer](params, lr=LR, weight_decay=WEIGHT_DECAY, **self.options)

    def describe(self) -> dict[str, Any]:
        return dict(name=self.name, optimizer=self.optimizer, options=self.options, mode=self.mode, path=self.path)


def candidates(device: torch.device) -> list[Candidate]:
    """AdamW's implementations on the device, KalmanAdam's modes on every path, KalmanLAMB."""
    out = [
        Candidate("AdamW [loop]", "AdamW", dict(foreach=False), path="loop"),
        Candidate("AdamW [foreach]", "AdamW", dict(foreach=True), path="foreach"),
    ]
    if device.type == "cuda":
        out.append(Candidate("AdamW [fused]", "AdamW", dict(fused=True), path="fused"))
    for mode, options in KALMAN_ADAM_MODES.items():
        for path, foreach in PATHS.items():
            suffix = "" if path == "default" else f" [{path}]"
            out.append(Candidate(f"KalmanAdam {mode}{suffix}", "KalmanAdam", dict(options, foreach=foreach, fused=False),
                                 mode, path))
    out.append(Candidate("KalmanLAMB", "KalmanLAMB", dict(precision_weighting=False, foreach=None, fused=False)))
    out.append(Candidate("KalmanLAMB precision", "KalmanLAMB", dict(precision_weighting=True, foreach=None, fused=False)))
    return out


# ----------------------------------------------------------------------------------------- parameters
def tensor_sizes(total: int, layout: str) -> list[int]:
    """Element counts of the tensors: 1e5-element tensors (and a remainder), or FEW_TENSORS equal ones."""
    if layout == "many":
        sizes = [TENSOR_SIZE] * (total // TENSOR_SIZE)
        return sizes + ([total % TENSOR_SIZE] if total % TENSOR_SIZE else [])
    count = min(FEW_TENSORS, total)
    base, extra = divmod(total, count)
    return [base + (i < extra) for i in range(count)]


def make_parameters(total: int, layout: str, device: torch.device, seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = []
    for size in tensor_sizes(total, layout):
        param = torch.nn.Parameter(torch.randn(size, generator=generator).to(device))
        param.grad = torch.randn(size, generator=generator).to(device)
        params.append(param)
    return params


def state_bytes_per_parameter(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> float:
    """Bytes of all per-element optimizer-state tensors, per parameter element (D6's count): 0-dim tensors -- the step
    count, KalmanLAMB's previous layer mean of P -- are per tensor, not per parameter, and are left out."""
    total = sum(
        value.nbytes
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value) and value.dim() > 0
    )
    return total / sum(p.numel() for p in params)


# ----------------------------------------------------------------------------------------- timing
def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource is not None else 0


class StepTimer:
    """perf_counter around optimizer.step(); on CUDA synchronized on both sides, plus CUDA events.

    Returns (seconds, CUDA-event seconds or None, minor page faults of the process during the step). On CPU
    the faults show the cost of fresh memory for temporaries: torch allocates them with the system malloc,
    which returns freed memory to the OS, so a step with many large temporaries also pays for page faults.
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def __call__(self, optimizer: torch.optim.Optimizer) -> tuple[float, float | None, int]:
        faults = _minor_faults()
        if self.device.type != "cuda":
            start = time.perf_counter()
            optimizer.step()
            wall = time.perf_counter() - start
            return wall, None, _minor_faults() - faults
        torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        self.start.record()
        optimizer.step()
        self.end.record()
        torch.cuda.synchronize(self.device)
        wall = time.perf_counter() - start
        return wall, self.start.elapsed_time(self.end) / 1e3, _minor_faults() - faults


def quantiles(values: list[float]) -> tuple[float, float, float]:
    q25, median, q75 = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return float(q25), float(median), float(q75)


def bench_one(
    total: int, layout: str, cands: list[Candidate], rounds: int, warmup: int, device: torch.device, seed: int, bar,
    params: list[torch.nn.Parameter] | None = None,
) -> dict[str, Any]:
    """Time every candidate at one size and layout (or on the given `params`, with their gradients set); return the
    per-candidate statistics."""
    if params is None:
        params = make_parameters(total, layout, device, seed)
    sizes = [p.numel() for p in params]
    optimizers = {c.name: c.build(params) for c in cands}
    rng = random.Random(f"{seed}/{total}/{layout}")  # str seeds are deterministic across runs
    timer = StepTimer(device)
    times: dict[str, list[float]] = {c.name: [] for c in cands}
    event_times: dict[str, list[float]] = {c.name: [] for c in cands}
    faults: dict[str, list[int]] = {c.name: [] for c in cands}
    order = [c.name for c in cands]
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # no collector pauses inside a timed step
    try:
        for round_index in range(warmup + rounds):
            rng.shuffle(order)
            for name in order:
                wall, event, page_faults = timer(optimizers[name])
                if round_index >= warmup:
                    times[name].append(wall)
                    faults[name].append(page_faults)
                    if event is not None:
                        event_times[name].append(event)
                bar.update(1)
    finally:
        if gc_was_enabled:
            gc.enable()

    memory = {name: state_bytes_per_parameter(opt, params) for name, opt in optimizers.items()}
    adamw = [c.name for c in cands if c.optimizer == "AdamW"]
    baseline = min(adamw, key=lambda name: quantiles(times[name])[1])
    base_median = quantiles(times[baseline])[1]
    stats = {}
    for c in cands:
        q25, median, q75 = quantiles(times[c.name])
        paired = [t / b for t, b in zip(times[c.name], times[baseline])]
        r25, _, r75 = quantiles(paired)
        entry = dict(
            median_s=median,
            iqr_s=q75 - q25,
            q25_s=q25,
            q75_s=q75,
            min_s=min(times[c.name]),
            ratio=median / base_median,
            ratio_q25=r25,
            ratio_q75=r75,
            state_bytes_per_param=memory[c.name],
            minor_page_faults_median=float(np.median(faults[c.name])),
            times_s=times[c.name],
        )
        if event_times[c.name]:
            entry["cuda_event_median_s"] = quantiles(event_times[c.name])[1]
            entry["cuda_event_times_s"] = event_times[c.name]
        stats[c.name] = entry

    del optimizers, params
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(
        size=total, layout=layout, tensors=len(sizes), largest_tensor=max(sizes), rounds=rounds, warmup=warmup,
        baseline=baseline, baseline_median_s=base_median, candidates=stats,
    )


# ----------------------------------------------------------------------------------------- targets
TARGETS = [
    dict(id="adam", text="KalmanAdam noise='adam' <= 1.15x AdamW, 8 B/param", mode="adam", max_ratio=1.15, state=8.0),
    dict(id="constant", text="KalmanAdam noise='constant' <= 1.15x AdamW, 8 B/param", mode="constant", max_ratio=1.15,
         state=8.0),
    dict(id="adaptive", text="KalmanAdam noise='adaptive' <= 2x AdamW (state stated)", mode="adaptive", max_ratio=2.0,
         state=None),
    dict(id="variance_adaptation", text="adam+VA <= 1.10x noise='adam' (variance_adaptation adds <= 10%)", mode="adam+VA",
         over="adam", max_ratio=1.10, state=None),
]


def evaluate_targets(results: list[dict], cands: list[Candidate]) -> list[dict]:
    """One row per target, size, layout and KalmanAdam path; `met` compares with the threshold."""
    by_mode_path = {(c.mode, c.path): c.name for c in cands if c.optimizer == "KalmanAdam"}
    rows = []
    for target in TARGETS:
        for result in results:
            for path in PATHS:
                entry = result["candidates"][by_mode_path[(target["mode"], path)]]
                if "over" in target:
                    reference = result["candidates"][by_mode_path[(target["over"], path)]]
                    value, versus = entry["median_s"] / reference["median_s"], f"KalmanAdam {target['over']}"
                else:
                    value, versus = entry["ratio"], result["baseline"]
                state = entry["state_bytes_per_param"]
                met = value <= target["max_ratio"] and (target["state"] is None or state == target["state"])
                rows.append(dict(
                    target=target["id"], text=target["text"], size=result["size"], layout=result["layout"], path=path,
                    ratio=value, versus=versus, max_ratio=target["max_ratio"], state_bytes_per_param=state,
                    required_state_bytes_per_param=target["state"], met=bool(met),
                ))
    return rows


def target_summary(rows: list[dict]) -> list[dict]:
    """Per target, on the default path: met at every size and layout?"""
    summary = []
    for target in TARGETS:
        own = [r for r in rows if r["target"] == target["id"] and r["path"] == "default"]
        summary.append(dict(target=target["id"], text=target["text"], path="default", met=all(r["met"] for r in own),
                            worst_ratio=max(r["ratio"] for r in own)))
    return summary


# ----------------------------------------------------------------------------------------- provenance
def provenance(device: torch.device, argv: list[str], seed: int) -> dict[str, Any]:
    info = shared_provenance(device, argv, seed, module="experiments.bench_step")
    info["argv"] = list(argv)
    return info


# ----------------------------------------------------------------------------------------- output
def format_size(n: int) -> str:
    """1e5, 3e7, 2e4 ... for round sizes, else the integer."""
    exponent = int(math.floor(math.log10(n))) if n > 0 else 0
    mantissa = n / 10**exponent
    return f"{int(mantissa)}e{exponent}" if exponent >= 3 and mantissa == int(mantissa) else str(n)


def _columns(results: list[dict]) -> list[tuple[str, dict]]:
    layouts = {r["layout"] for r in results}
    return [(format_size(r["size"]) + ("" if len(layouts) == 1 else f" {r['layout']}"), r) for r in results]


def tables(report: dict) -> tuple[list[str], list[list[str]], list[str], list[list[str]], list[str], list[list[str]]]:
    """(header, rows) for the ratio table, the time table and the targets table."""
    columns = _columns(report["results"])
    names = [c["name"] for c in report["candidates"]]
    first = report["results"][0]["candidates"]
    ratio_header = ["candidate", "B/param"] + [f"N={label}" for label, _ in columns]
    ratio_rows = [
        [name, f"{first[name]['state_bytes_per_param']:.1f}"]
        + [f"{r['candidates'][name]['ratio']:.2f}x [{r['candidates'][name]['ratio_q25']:.2f}, "
           f"{r['candidates'][name]['ratio_q75']:.2f}]" for _, r in columns]
        for name in names
    ]
    time_header = ["candidate"] + [f"N={label} ms (IQR)" for label, _ in columns]
    time_rows = [
        [name] + [f"{1e3 * r['candidates'][name]['median_s']:.3f} ({1e3 * r['candidates'][name]['iqr_s']:.3f})"
                  for _, r in columns]
        for name in names
    ]
    target_header = ["target (default path, foreach=None)"] + [f"N={label}" for label, _ in columns] + ["met"]
    target_rows = []
    for summary in report["target_summary"]:
        own = [t for t in report["targets"] if t["target"] == summary["target"] and t["path"] == "default"]
        cells = [f"{t['ratio']:.2f}x {'met' if t['met'] else 'NOT met'}" for t in own]
        target_rows.append([summary["text"]] + cells + ["met" if summary["met"] else "NOT met"])
    return ratio_header, ratio_rows, time_header, time_rows, target_header, target_rows


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def describe_run(report: dict) -> str:
    p, c = report["provenance"], report["config"]
    commit = (p["git_commit"] or "unknown")[:12] + (" (dirty)" if p["git_dirty"] else "")
    rounds = ", ".join(f"{format_size(r['size'])}: {r['rounds']}" for r in report["results"] if r["layout"] == c["layouts"][0])
    return (
        f"{p['device_name']} ({p['device']}), {p['threads']} threads, torch {p['torch']}, python {p['python']}, "
        f"commit {commit}, {p['date_utc']}.\n"
        f"Layout {'/'.join(c['layouts'])} (tensors of {format_size(TENSOR_SIZE)} elements in 'many', {FEW_TENSORS} in 'few'); "
        f"{c['warmup']} warm-up rounds, then timed rounds per size ({rounds}), candidates shuffled in each round "
        f"(seed {c['seed']}).\n"
        f"Ratio = median step time / median of the fastest AdamW at that size [IQR of the per-round ratios]; "
        f"baseline: {', '.join(sorted({r['baseline'] for r in report['results']}))}. "
        f"B/param = optimizer-state bytes per parameter (step excluded). No suffix = foreach=None, fused=False (the default eager path; bench_fused.py times fused=True).\n"
        f"The JSON also holds every per-round time and the median minor page faults per step (fresh memory for "
        f"temporaries, which depends on the allocator's state: see the environment in the provenance)."
    )


def render_markdown(report: dict) -> str:
    ratio_h, ratio_r, time_h, time_r, target_h, target_r = tables(report)
    return "\n\n".join([
        f"# Optimizer step time and state memory ({report['provenance']['device']})",
        f"Generated by `{report['provenance']['command']}` (experiments/bench_step.py).",
        describe_run(report).replace("\n", "\n\n"),
        "## Step time relative to AdamW",
        markdown_table(ratio_h, ratio_r),
        "## Median step time",
        markdown_table(time_h, time_r),
        "## Targets (issue #4)",
        markdown_table(target_h, target_r),
    ]) + "\n"


# ----------------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=float, nargs="+", help=f"total parameter counts (default {DEFAULT_SIZES}; "
                        f"--quick: {QUICK_SIZES})")
    parser.add_argument("--repeats", type=int, help="timed rounds at every size (default: 200 at 1e5, 100 at 1e6, 50 at 1e7, 30 at 3e7; "
                        f"--quick: {QUICK_REPEATS})")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="untimed rounds first (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="smoke run of about 30 s")
    parser.add_argument("--layout", choices=("many", "few", "both"), default="many",
                        help="'many' tensors of 1e5 elements, 'few' (4) large tensors, or both (default %(default)s)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's current setting)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, help="JSON output (default results/bench/step_<device>.json); "
                        "the Markdown table goes next to it")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if any(not (s >= 1 and s == int(s)) for s in sizes):
        parser.error(f"--sizes must be positive whole numbers, got {sizes}")
    args.sizes = [int(s) for s in sizes]
    if args.repeats is None and args.quick:
        args.repeats = QUICK_REPEATS
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step allocates the state)")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    args.out = args.out or REPO_ROOT / "results" / "bench" / f"step_{args.device}.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    layouts = ["many", "few"] if args.layout == "both" else [args.layout]
    cands = candidates(device)
    plan = [(size, layout, args.repeats or default_repeats(size)) for size in args.sizes for layout in layouts]
    config = dict(
        sizes=args.sizes, layouts=layouts, repeats={f"{s}/{layout}": r for s, layout, r in plan}, warmup=args.warmup,
        quick=args.quick, device=args.device, threads=torch.get_num_threads(), seed=args.seed, tensor_size=TENSOR_SIZE,
        few_tensors=FEW_TENSORS, lr=LR, weight_decay=WEIGHT_DECAY, dtype="float32", out=str(args.out),
    )
    info = provenance(device, argv, args.seed)

    steps = sum((args.warmup + rounds) * len(cands) for _, _, rounds in plan)
    results = []
    progress = dict(desc="optimizer steps", unit="step", disable=args.no_progress, file=sys.stderr, mininterval=2.0)
    with tqdm(total=steps, **progress) as bar:
        for size, layout, rounds in plan:
            bar.set_postfix_str(f"N={format_size(size)} {layout}")
            results.append(bench_one(size, layout, cands, rounds, args.warmup, device, args.seed, bar))

    targets = evaluate_targets(results, cands)
    report = dict(
        benchmark="optimizer step time and state memory (experiments/bench_step.py, issue #4)",
        provenance=info,
        config=config,
        candidates=[c.describe() for c in cands],
        results=results,
        targets=targets,
        target_summary=target_summary(targets),
    )
    out = Path(args.out)
    atomic_write(out, json.dumps(report, indent=1) + "\n")
    atomic_write(out.with_suffix(".md"), render_markdown(report))

    ratio_h, ratio_r, time_h, time_r, target_h, target_r = tables(report)
    print(describe_run(report))
    print("\nStep time relative to the fastest AdamW [IQR of per-round ratios]\n" + text_table(ratio_h, ratio_r))
    print("\nMedian step time\n" + text_table(time_h, time_r))
    print("\nTargets (issue #4), library default path\n" + text_table(target_h, target_r))
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
