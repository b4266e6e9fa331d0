"""Reading E2's result dicts for its figures, tables and numbers: selecting runs by task, mode and training or
static, pooling the stored window summaries and calibration counts over checkpoints and seeds, and printing a
stored number in a table cell."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from experiments.e2_design import QUANTILES, TASK_LABELS
from experiments.stats import Estimate, binomial_ci


def with_shadow_runs(runs: list[dict]) -> list[dict]:
    """`runs` and, after each run with shadow filters, one run per shadow mode as if it had been run on its own: the
    same config with that mode and no gradient windows, the shadow's checkpoints as its calibration (the level
    changes are stored once, with the training run's)."""
    out = []
    for run in runs:
        out.append(run)
        for mode, shadow in run["metrics"].get("shadows", {}).items():
            config = dict(run["config"], mode=mode, record_windows=False, shadow_of=run["config"]["mode"])
            metrics = {k: v for k, v in run["metrics"].items() if k not in ("shadows", "windows", "coordinates")}
            out.append(dict(run, run_id=f"{run['run_id']}/{mode}", config=config,
                            metrics=dict(metrics, calibration=shadow["calibration"])))
    return out


def tasks_of(runs: list[dict]) -> list[str]:
    return [t for t in TASK_LABELS if any(r["config"]["task"] == t for r in runs)]


def is_static(run: dict) -> bool:
    return bool(run["config"].get("static", False))


def select(runs: list[dict], task: str, mode: str | None = None, static: bool = False) -> list[dict]:
    return [r for r in runs if r["config"]["task"] == task and is_static(r) == static
            and (mode is None or r["config"]["mode"] == mode)]


def window_runs(runs: list[dict], task: str, static: bool = False) -> list[dict]:
    return [r for r in select(runs, task, static=static) if r["metrics"].get("windows")]


def window_summaries(runs: list[dict], task: str, static: bool = False) -> dict[tuple[str, str], list[dict]]:
    """(phase, layer type) -> the per-seed summaries of that window and type, in phase and type order."""
    out: dict[tuple[str, str], list[dict]] = {}
    for run in window_runs(runs, task, static):
        for window in run["metrics"]["windows"]:
            for kind, summary in window["summary"].items():
                out.setdefault((window["phase"], kind), []).append(summary)
    return out


def mean_of(values: Sequence[float | None], infinite: float = math.inf) -> float:
    """Mean of stored numbers (None = inf or NaN from finite_or_none, read as `infinite`)."""
    numbers = [infinite if v is None else float(v) for v in values]
    return float(np.mean(numbers)) if numbers else math.nan


def pooled_quantiles(summaries: list[dict], key: str) -> list[float]:
    """Quantiles averaged over seeds (quantile averaging); a None (infinite) quantile stays infinite."""
    return [mean_of([s[key][i] for s in summaries]) for i in range(len(QUANTILES))]


def calibration_counts(runs: list[dict], task: str, mode: str, level: float,
                       static: bool = False) -> tuple[int, int, list[float]]:
    """(inside, total) over all checkpoints and seeds, and the per-(seed, checkpoint) coverages."""
    inside = total = 0
    coverages = []
    for run in select(runs, task, mode, static):
        for checkpoint in run["metrics"]["calibration"]:
            k, n = checkpoint["inside"][str(level)]["all"], checkpoint["total"]
            if n:
                inside, total = inside + k, total + n
                coverages.append(k / n)
    return inside, total, coverages


def coverage_by_seed(runs: list[dict], task: str, mode: str, level: float, static: bool = False) -> dict[int, float]:
    """seed -> coverage pooled over that seed's coordinates and checkpoints (the seed-to-seed spread)."""
    coverage = {}
    for seed in sorted({int(run["config"]["seed"]) for run in select(runs, task, mode, static)}):
        seed_runs = [run for run in runs if int(run["config"]["seed"]) == seed]
        inside, total, _ = calibration_counts(seed_runs, task, mode, level, static)
        if total:
            coverage[seed] = inside / total
    return coverage


def dead_counts(runs: list[dict], task: str, mode: str, level: float, static: bool = False) -> tuple[int, int]:
    """(inside, total) of the dead coordinates (full-batch gradient exactly 0, filtered mean not yet 0) over all
    checkpoints and seeds; they are left out of calibration_counts."""
    inside = total = 0
    for run in select(runs, task, mode, static):
        for checkpoint in run["metrics"]["calibration"]:
            inside += checkpoint["dead_inside"][str(level)]
            total += checkpoint["dead"]
    return inside, total


def coverage_estimate(runs: list[dict], task: str, mode: str, level: float, static: bool = False) -> Estimate:
    """Observed coverage pooled over coordinates, checkpoints and seeds, with a Wilson interval (which treats
    coordinates as independent: they are not, so it understates the uncertainty)."""
    inside, total, _ = calibration_counts(runs, task, mode, level, static)
    return binomial_ci(inside, total)


def coverage_by_step(runs: list[dict], task: str, mode: str, level: float,
                     static: bool = False) -> tuple[list[int], list[float]]:
    """Mean coverage over seeds at each checkpoint step."""
    values: dict[int, list[float]] = {}
    for run in select(runs, task, mode, static):
        for checkpoint in run["metrics"]["calibration"]:
            if checkpoint["total"]:
                values.setdefault(checkpoint["step"], []).append(
                    checkpoint["inside"][str(level)]["all"] / checkpoint["total"])
    steps = sorted(values)
    return steps, [float(np.mean(values[s])) for s in steps]


def level_change_ratios(runs: list[dict], task: str, kind: str = "all") -> dict[int, dict[int, float]]:
    """checkpoint step -> {lag l: sum_i (G_i(theta_{c-1}) - G_i(theta_{c-1-l}))^2 / sum_i (g_i,c - G_i)^2},
    averaged over seeds (training AdamW runs). A random walk with ratio lambda gives l * lambda."""
    values: dict[int, dict[int, list[float]]] = {}
    for run in select(runs, task, "adam"):
        for checkpoint in run["metrics"]["calibration"]:
            noise = checkpoint.get("noise_sq", {}).get(kind, 0.0)
            for lag, sums in checkpoint.get("level_change_sq", {}).items():
                if noise > 0 and kind in sums:
                    values.setdefault(checkpoint["step"], {}).setdefault(int(lag), []).append(sums[kind] / noise)
    return {step: {lag: float(np.mean(v)) for lag, v in sorted(by_lag.items())} for step, by_lag in sorted(values.items())}


def format_cell(value: float | None, digits: int = 3) -> str:
    """A stored number for a table cell: `digits` significant digits, None / NaN as n/a, inf as ∞."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}"
