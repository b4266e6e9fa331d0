"""A toy experiment for the runner's tests: instant runs, an execution log, and hooks to block or fail a run.

Profiles:
    smoke   four independent runs per seed ("run<i>_seed<s>"), loss = scale * (i - 1.5)^2 + noise
    full    two runs per seed over two seeds (what `figures --prefer-full` looks for)
    staged  two stages: stage 1 tunes x over `candidates` on seed 0 ("tune_x=<x>"); stage 2 ("final_seed<s>")
            runs every seed at the best x, and is planned only once every stage-1 result is in `done`

Hooks (environment variables, so that they reach a subprocess too):
    TOY_EXECUTION_LOG   a file execute() appends each run id to, one per line, before it does anything else
    TOY_BLOCK_RUN       a run id at which execute() writes "<log>.blocked" and then sleeps (to be killed)
    TOY_FAIL_RUN        a run id at which execute() raises RuntimeError (a crash mid-plan)
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from experiments.plotting import FigureOutput, style
from experiments.runner import RunSpec

NAME = "toy_experiment"
TITLE = "toy experiment for the runner's tests"
PROFILES = {
    "smoke": {"runs": 4, "scale": 1.0, "seeds": [0]},
    "full": {"runs": 2, "scale": 1.0, "seeds": [0, 1]},
    "staged": {"candidates": [0.1, 0.5, 0.9], "seeds": [0, 1, 2]},
}
TUNING_SEED = 0
NOISE_SCALE = 1e-3


def plan(settings: dict, seeds: list[int], done: dict[str, dict]) -> list[RunSpec]:
    if "candidates" in settings:
        return staged_plan(settings, seeds, done)
    return [RunSpec(f"run{i}_seed{seed}", {"seed": int(seed), "index": i, "x": float(i), "target": 1.5,
                                           "scale": float(settings["scale"])})
            for seed in seeds for i in range(settings["runs"])]


def staged_plan(settings: dict, seeds: list[int], done: dict[str, dict]) -> list[RunSpec]:
    """Stage 1: tune x on the tuning seed; stage 2 (only once stage 1 is complete): every seed at the best x."""
    tuning = [RunSpec(f"tune_x={x:g}", {"seed": TUNING_SEED, "stage": 1, "x": float(x), "target": 0.5, "scale": 1.0})
              for x in settings["candidates"]]
    if not all(spec.run_id in done for spec in tuning):
        return tuning
    best_x = min(tuning, key=lambda spec: done[spec.run_id]["metrics"]["loss"]).config["x"]
    final = [RunSpec(f"final_seed{seed}", {"seed": int(seed), "stage": 2, "x": best_x, "target": 0.5, "scale": 1.0})
             for seed in seeds]
    return tuning + final


def rng_draw() -> float:
    """One draw from each of Python's, NumPy's and torch's global generators (the ones the runner seeds)."""
    return random.random() + float(np.random.rand()) + float(torch.rand(()))


def execute(config: dict, device: torch.device) -> dict:
    """loss = scale * (x - target)^2 + 1e-3 * (a draw from the seeded generators): the noise shows the seeding."""
    run_id = run_id_of(config)
    log = os.environ.get("TOY_EXECUTION_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(run_id + "\n")
    if os.environ.get("TOY_BLOCK_RUN") == run_id:
        Path(f"{log}.blocked").write_text(run_id)
        time.sleep(600)  # the test kills this process here
    if os.environ.get("TOY_FAIL_RUN") == run_id:
        raise RuntimeError(f"toy failure in {run_id}")
    noise = rng_draw()
    loss = config["scale"] * (config["x"] - config["target"]) ** 2 + NOISE_SCALE * noise
    curve = torch.rand(5, device=device).tolist()
    return {"metrics": {"loss": loss, "noise": noise}, "curves": {"trace": curve}}


def run_id_of(config: dict) -> str:
    """The run id plan() gives this config (execute only sees the config)."""
    if config.get("stage") == 1:
        return f"tune_x={config['x']:g}"
    if config.get("stage") == 2:
        return f"final_seed{config['seed']}"
    return f"run{config['index']}_seed{config['seed']}"


def figures(runs: list[dict], out: FigureOutput) -> None:
    fig, ax = plt.subplots(figsize=(3, 2))
    for i, run in enumerate(runs):
        ax.plot(run["curves"]["trace"], label=run["run_id"], **style(i))
    ax.set_xlabel("step")
    ax.set_ylabel("draw (unitless)")
    ax.set_title(f"toy ({out.profile} profile)")
    out.save(fig, "toy_traces")
    out.table("toy_losses", ["run", "loss"], [[run["run_id"], f"{run['metrics']['loss']:.3f}"] for run in runs])


def numbers(runs: list[dict]) -> dict[str, float | int | str]:
    losses = [run["metrics"]["loss"] for run in runs]
    return {"MeanLoss": float(np.mean(losses)), "RunCount": len(runs), "Top3Loss": float(sorted(losses)[-1])}
