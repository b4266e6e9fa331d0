r"""Optimizer step time on the parameters of E4's small models, against torch's AdamW (issue 13, issue 14).

    python -m experiments.bench_models [--repeats N] [--quick] [--out results/bench/models_cpu.json]

Why: E4's models have 10 to 60 parameter tensors of 10 to 40k elements, so a step costs kernel launches and Python
per tensor, not bytes; experiments/bench_step.py's layouts (tensors of 1e5 elements and more) do not show that.
This benchmark times the step of every optimizer of E4's paper profile on exactly the parameter tensors of E4's
paper models (built by experiments.training.make_task with the paper profile's task settings), with random
gradients set once, lr 1e-3, weight decay 1e-2. Each optimizer on its default eager path (foreach=None: runs of
small tensors batched through foreach calls on CPU) and with foreach=False (one tensor at a time: the library's
reference loop, the cost before the batching), torch's AdamW on its loop (its CPU default) and foreach paths.

Each Kalman optimizer also runs with fused=True (its compiled path, which fused=None takes only from 1e6 elements in
a group: there the one-time compile pays for itself within a few hundred steps; here it takes thousands), beside
torch's AdamW compiled (torch.compile of its step). Their first step, the compile (inductor's cache as it is), is
timed apart and reported as `first_step_s`; the ratios stay over the fastest eager torch AdamW.

Timing as bench_step.py (interleaved rounds in a seeded shuffled order, warm-up first, median and the ratio to the
fastest torch AdamW, with the IQR of the per-round ratios); one thread (torch.set_num_threads(1)) unless --threads
says otherwise, as E4 runs its shards with one thread each. Nothing is asserted: this is a measurement.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from experiments import e4_training, training
from experiments.bench_step import WARMUP, bench_one, markdown_table, provenance, text_table
from experiments.provenance import atomic_write

REPO_ROOT = Path(__file__).resolve().parent.parent
LR, WEIGHT_DECAY, SEED = 1e-3, 1e-2, 0
DEFAULT_REPEATS, QUICK_REPEATS = 200, 10
#: The library's paths timed per optimizer, and the foreach argument of every path (torch AdamW's two included).
PATHS = ("default", "loop", "fused")
FOREACH_OF_PATH = {"default": None, "loop": False, "fused": None, "foreach": True, "compiled": True}
#: The optimizer key of torch's compiled AdamW: not "AdamW", so that it is no candidate for bench_one's baseline.
COMPILED_ADAMW = "AdamW-compiled"


@dataclass(frozen=True)
class ModelCandidate:
    """An optimizer of experiments.training.OPTIMIZERS on one eager path (bench_step.bench_one's candidate API)."""

    name: str
    optimizer: str  # a key of training.OPTIMIZERS, or COMPILED_ADAMW
    path: str  # "default" (foreach=None), "loop" (foreach=False), "fused" (fused=True) or "foreach"/"compiled" (AdamW)
    first_steps: dict | None = field(default=None, compare=False, hash=False)  # name -> seconds of the first step, filled by build for "fused" and "compiled"

    def build(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        foreach = FOREACH_OF_PATH[self.path]
        if self.optimizer == COMPILED_ADAMW:
            optimizer = training.make_optimizer("AdamW", params, LR, WEIGHT_DECAY, foreach=foreach)
            optimizer.step = torch.compile(optimizer.step)  # torch's recipe for a compiled optimizer
        else:
            extra = {} if self.optimizer == "AdamW" else dict(fused=self.path == "fused")
            optimizer = training.make_optimizer(self.optimizer, params, LR, WEIGHT_DECAY, foreach=foreach, **extra)
        if self.path in ("fused", "compiled") and self.first_steps is not None:
            start = time.perf_counter()
            optimizer.step()  # the compile; bench_one's warm-up rounds follow
            self.first_steps[self.name] = time.perf_counter() - start
        return optimizer

    def describe(self) -> dict[str, Any]:
        return dict(name=self.name, optimizer=self.optimizer, path=self.path)


def candidates(first_steps: dict | None = None, paths=PATHS) -> list[ModelCandidate]:
    """torch AdamW (loop: its CPU default, foreach, and with "fused" in `paths` compiled), then every other E4 paper
    optimizer on each of `paths`. bench_one's baseline is the fastest candidate whose `optimizer` is "AdamW" (eager)."""
    out = [ModelCandidate("AdamW [loop]", "AdamW", "loop"), ModelCandidate("AdamW [foreach]", "AdamW", "foreach")]
    if "fused" in paths:
        out.append(ModelCandidate("AdamW [compiled]", COMPILED_ADAMW, "compiled", first_steps))
    for name in e4_training.PAPER_OPTIMIZERS:
        if name == "AdamW":
            continue
        for path in (p for p in PATHS if p in paths):
            out.append(ModelCandidate(name + ("" if path == "default" else f" [{path}]"), name, path, first_steps))
    return out


def model_parameters(task_name: str, seed: int) -> list[torch.nn.Parameter]:
    """The trainable parameters of E4's paper model for `task_name`, with seeded random gradients."""
    torch.manual_seed(seed)
    task = training.make_task(task_name, torch.device("cpu"), **e4_training.PROFILES["paper"]["tasks"][task_name])
    params = [p for p in task.model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    return params


def loop_speedups(result: dict) -> dict[str, float]:
    """Per optimizer: median step time of its foreach=False loop over that of its default path."""
    by_name = result["candidates"]
    return {name: by_name[f"{name} [loop]"]["median_s"] / by_name[name]["median_s"]
            for name in e4_training.PAPER_OPTIMIZERS if name != "AdamW"}


def fused_ratios(result: dict) -> dict[str, float]:
    """Per optimizer: median step time of its fused path over torch's compiled AdamW's."""
    by_name = result["candidates"]
    return {name: by_name[f"{name} [fused]"]["median_s"] / by_name["AdamW [compiled]"]["median_s"]
            for name in e4_training.PAPER_OPTIMIZERS if name != "AdamW"}


def render(report: dict) -> tuple[str, str]:
    """(text, markdown) tables: ratio to the fastest AdamW and median ms per task; the loop / default speed-up."""
    tasks = [r["task"] for r in report["results"]]
    names = [c["name"] for c in report["candidates"]]
    header = ["candidate"] + [f"{t} ({r['tensors']} tensors, {r['size']} el.)"
                              for t, r in zip(tasks, report["results"])]
    rows = [[name] + [f"{r['candidates'][name]['ratio']:.2f}x [{r['candidates'][name]['ratio_q25']:.2f}, "
                      f"{r['candidates'][name]['ratio_q75']:.2f}] {1e3 * r['candidates'][name]['median_s']:.2f} ms"
                      for r in report["results"]] for name in names]
    speed_header = ["optimizer: loop time / default time"] + tasks
    speed_rows = [[name] + [f"{r['loop_speedup'][name]:.2f}x" for r in report["results"]]
                  for name in e4_training.PAPER_OPTIMIZERS if name != "AdamW"]
    fused = "fused_over_compiled_adamw" in report["results"][0]
    fused_header = ["fused path: step over compiled AdamW's (first step s)"] + tasks
    fused_rows = [[name] + [f"{r['fused_over_compiled_adamw'][name]:.2f}x "
                            f"({r['candidates'][name + ' [fused]']['first_step_s']:.1f} s)" for r in report["results"]]
                  for name in e4_training.PAPER_OPTIMIZERS if name != "AdamW"] if fused else []
    if fused:
        fused_rows.append(["AdamW [compiled], first step s"] + [
            f"{r['candidates']['AdamW [compiled]']['first_step_s']:.1f} s" for r in report["results"]])
    p = report["provenance"]
    intro = (f"{p['device_name']}, {p['threads']} thread(s), torch {p['torch']}, commit {(p['git_commit'] or '?')[:12]}"
             f"{' (dirty)' if p['git_dirty'] else ''}, {p['date_utc']}; {report['config']['repeats']} timed rounds "
             f"after {report['config']['warmup']} warm-up rounds. Ratio = median step / median of the fastest torch "
             f"AdamW [IQR of per-round ratios], then the median step time.")
    text = "\n\n".join([intro, text_table(header, rows), text_table(speed_header, speed_rows)]
                       + ([text_table(fused_header, fused_rows)] if fused else []))
    markdown = "\n\n".join([
        "# Optimizer step time on E4's paper models (CPU)",
        f"Generated by `{p['command']}` (experiments/bench_models.py).", intro,
        "## Step time relative to torch AdamW", markdown_table(header, rows),
        "## Speed-up of the default eager path over the per-tensor loop", markdown_table(speed_header, speed_rows),
    ] + (["## The fused path against torch's compiled AdamW, and its compile (first step)",
          markdown_table(fused_header, fused_rows)] if fused else [])) + "\n"
    return text, markdown


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m experiments.bench_models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, help=f"timed rounds per task (default {DEFAULT_REPEATS}; "
                        f"--quick: {QUICK_REPEATS})")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--tasks", nargs="+", choices=sorted(e4_training.PROFILES["paper"]["tasks"]),
                        default=list(e4_training.PROFILES["paper"]["tasks"]))
    parser.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                        help="the library's paths to time (default: all; \"fused\" adds torch's compiled AdamW)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default %(default)s, as E4)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "bench" / "models_cpu.json")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else (QUICK_REPEATS if args.quick else DEFAULT_REPEATS)
    if repeats < 1:
        parser.error(f"--repeats must be >= 1, got {repeats}")
    if not {"default", "loop"} <= set(args.paths):
        parser.error("--paths must include default and loop (the loop speed-up is reported)")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    first_steps: dict[str, float] = {}
    device, cands = torch.device("cpu"), candidates(first_steps, args.paths)
    info = provenance(device, argv, SEED)
    info["module"] = "experiments.bench_models"
    results = []
    with tqdm(total=len(args.tasks) * (WARMUP + repeats) * len(cands), desc="optimizer steps", unit="step",
              disable=args.no_progress, file=sys.stderr, mininterval=2.0) as bar:
        for task in args.tasks:
            bar.set_postfix_str(task)
            params = model_parameters(task, SEED)
            size = sum(p.numel() for p in params)
            first_steps.clear()
            result = bench_one(size, f"model:{task}", cands, repeats, WARMUP, device, SEED, bar, params=params)
            for name, seconds in first_steps.items():
                result["candidates"][name]["first_step_s"] = seconds
            result.update(task=task, loop_speedup=loop_speedups(result))
            if "fused" in args.paths:
                result["fused_over_compiled_adamw"] = fused_ratios(result)
            results.append(result)
    report = dict(benchmark="optimizer step time on E4's paper models (experiments/bench_models.py)", provenance=info,
                  config=dict(tasks=args.tasks, task_settings={t: e4_training.PROFILES["paper"]["tasks"][t]
                                                               for t in args.tasks},
                              repeats=repeats, warmup=WARMUP, threads=torch.get_num_threads(), seed=SEED, lr=LR,
                              weight_decay=WEIGHT_DECAY, quick=args.quick, dtype="float32", paths=args.paths),
                  candidates=[c.describe() for c in cands], results=results)
    text, markdown = render(report)
    atomic_write(args.out, json.dumps(report, indent=1) + "\n")
    atomic_write(args.out.with_suffix(".md"), markdown)
    print(text + f"\n\nwrote {args.out} and {args.out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
