"""E3's analysis: the tuned learning rate per (optimizer, batch size) and its steps to target over seeds (tune,
format_steps), the local scaling efficiency between batch sizes and the critical batch size it gives, and the fit of
S(B) = S_min (1 + B_noise / B) with the critical batch size of that fit, all as experiments/e3_noisy_quadratic.py's
docstring defines them, and how closely one optimizer's steps follow another's (max_relative_step_difference); that
module is the experiment (plan, execute, figures, numbers) and re-exports these."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from experiments.stats import Estimate, mean_ci

SCALING_EFFICIENCY_THRESHOLD = math.log2(1 / 0.8)  # doubling B saves < 20% of the steps below this


# ------------------------------------------------------------------------------------------ tuning summary
@dataclass
class Tuned:
    """The tuned learning rate of one (optimizer, batch size) and its steps to target over seeds."""

    optimizer: str
    batch_size: int
    lr: float
    lr_index: int
    grid_size: int
    on_edge: bool
    reached: bool  # every seed reached the target at the tuned lr
    steps: Estimate  # over seeds at the tuned lr (mean = inf when not reached)
    steps_per_seed: list[float]  # inf for a seed that did not reach the target
    final_loss_fraction: float  # mean over seeds at the stop steps
    seeds: list[int]


def _steps_array(run: dict) -> np.ndarray:
    return np.array([math.inf if s is None else float(s) for s in run["metrics"]["steps_to_target"]])


def _loss_array(run: dict) -> np.ndarray:
    return np.array([math.inf if v is None else float(v) for v in run["metrics"]["final_loss_fraction"]])


def tune(runs: list[dict]) -> dict[tuple[str, int], Tuned]:
    """Per (optimizer, batch size): the lr with the smallest mean steps over seeds (inf if any seed missed the
    target), ties and all-missed broken by the smallest mean final loss; see the module docstring."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["config"]["optimizer"], int(run["config"]["batch_size"])), []).append(run)
    tuned = {}
    for (name, batch_size), group in groups.items():
        group = sorted(group, key=lambda r: int(r["config"]["seed"]))
        lrs = group[0]["metrics"]["lrs"]
        steps = np.stack([_steps_array(r) for r in group])  # (seeds, lrs)
        losses = np.stack([_loss_array(r) for r in group])
        mean_steps = np.where(np.isfinite(steps).all(0), steps.mean(0), math.inf)
        mean_losses = losses.mean(0)
        best = min(range(len(lrs)), key=lambda i: (mean_steps[i], mean_losses[i], i))
        per_seed = steps[:, best].tolist()
        reached = bool(np.isfinite(steps[:, best]).all())
        estimate = mean_ci(per_seed) if reached else Estimate(math.inf, math.inf, math.inf, len(per_seed))
        tuned[(name, batch_size)] = Tuned(
            optimizer=name, batch_size=batch_size, lr=float(lrs[best]), lr_index=best, grid_size=len(lrs),
            on_edge=best in (0, len(lrs) - 1), reached=reached, steps=estimate, steps_per_seed=per_seed,
            final_loss_fraction=float(mean_losses[best]), seeds=[int(r["config"]["seed"]) for r in group])
    return tuned


def format_steps(estimate: Estimate) -> str:
    """Mean steps (whole number from 100 up, else 3 significant digits), with the CI half-width over seeds."""
    mean = f"{estimate.mean:,.0f}" if estimate.mean >= 100 else f"{estimate.mean:.3g}"
    if estimate.n < 2 or not math.isfinite(estimate.half_width):
        return mean
    return f"{mean} ± {estimate.half_width:.2g}"


# ------------------------------------------------------------------------------------------ critical batch size
def scaling_efficiencies(batch_sizes: Sequence[int], steps: Sequence[float]) -> list[float]:
    """e_j = log(S_j / S_{j+1}) / log(B_{j+1} / B_j) between consecutive batch sizes (nan if either S is inf)."""
    out = []
    for (b0, s0), (b1, s1) in zip(zip(batch_sizes, steps), zip(batch_sizes[1:], steps[1:])):
        finite = math.isfinite(s0) and math.isfinite(s1) and s0 > 0 and s1 > 0
        out.append(math.log(s0 / s1) / math.log(b1 / b0) if finite else math.nan)
    return out


def critical_batch_size(batch_sizes: Sequence[int], steps: Sequence[float],
                        threshold: float = SCALING_EFFICIENCY_THRESHOLD) -> int | None:
    """Smallest B_j whose efficiency to the next batch size is below `threshold` (None if none is)."""
    for batch_size, efficiency in zip(batch_sizes, scaling_efficiencies(batch_sizes, steps)):
        if efficiency < threshold:  # nan compares False: unreached points never count as saturation
            return int(batch_size)
    return None


def fit_scaling_law(batch_sizes: Sequence[int], steps: Sequence[float]) -> tuple[float, float] | None:
    """(S_min, B_noise) of S(B) = S_min (1 + B_noise / B) (McCandlish et al. 2018) fitted to the reached points.

    S = a + b / B is linear in (a, b); least squares on relative residuals (S_j - a - b / B_j) / S_j, so every
    batch size counts alike. B_noise = b / a. None with fewer than two reached points or a non-positive a."""
    points = [(b, s) for b, s in zip(batch_sizes, steps) if math.isfinite(s) and s > 0]
    if len(points) < 2:
        return None
    design = np.array([[1.0 / s, 1.0 / (b * s)] for b, s in points])
    (a, slope), *_ = np.linalg.lstsq(design, np.ones(len(points)), rcond=None)
    if a <= 0:
        return None
    return float(a), float(slope / a)


def fitted_critical_batch_size(batch_sizes: Sequence[int], steps: Sequence[float]) -> float:
    """Under S = S_min (1 + B_n / B), S(2B) / S(B) = (1 + B_n / 2B) / (1 + B_n / B) = 0.8 at B = 1.5 B_n:
    doubling saves less than 20% beyond 1.5 B_noise (nan when the fit fails)."""
    fit = fit_scaling_law(batch_sizes, steps)
    return 1.5 * fit[1] if fit is not None else math.nan


# ------------------------------------------------------------------------------------------ paired step counts
def max_relative_step_difference(runs: list[dict], name: str, reference: str) -> tuple[float, int, int]:
    """Over every (batch size, seed, lr) both optimizers ran: max |S - S_ref| / S_ref where both reached the
    target, the number of points where only one of them reached it, and the number of points compared."""
    by_key = {(r["config"]["optimizer"], int(r["config"]["batch_size"]), int(r["config"]["seed"])): r for r in runs}
    worst, mismatched, compared = 0.0, 0, 0
    for (opt, batch_size, seed), run in by_key.items():
        other = by_key.get((reference, batch_size, seed))
        if opt != name or other is None or run["metrics"]["lrs"] != other["metrics"]["lrs"]:
            continue
        for a, b in zip(run["metrics"]["steps_to_target"], other["metrics"]["steps_to_target"]):
            compared += 1
            if (a is None) != (b is None):
                mismatched += 1
            elif a is not None:
                worst = max(worst, abs(a - b) / b)
    return worst, mismatched, compared
