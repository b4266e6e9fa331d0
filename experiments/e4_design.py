"""E4's fixed design, shared by its plan and its report: the tasks and optimizers with their display names, and the
learning-rate tuning protocol (the grid, its widening beyond an edge, the choice of the best rate), replayed on
the results so that a plan and a report agree on what stage 1 chose."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

TASKS = ("fashion_mnist", "fashion_mnist_resnet", "shakespeare")  # the order of rows, panels and numbers
TASK_TITLES = {"fashion_mnist": "Fashion-MNIST, SmallCNN",
               "fashion_mnist_resnet": "Fashion-MNIST, ResNet with BatchNorm",
               "shakespeare": "Shakespeare, char transformer"}
# The task column of the results table (both Fashion-MNIST tasks would read "Fashion-MNIST" in the titles' first part).
TASK_TABLE_NAMES = {"fashion_mnist": "Fashion-MNIST", "fashion_mnist_resnet": "Fashion-MNIST ResNet",
                    "shakespeare": "Shakespeare"}
# Prefixes of numbers() keys (letters only: they become LaTeX macros).
TASK_KEYS = {"fashion_mnist": "Fashion", "fashion_mnist_resnet": "ResNet", "shakespeare": "Shakespeare"}
BASELINE = "AdamW"
SANITY = "KalmanAdam-adam"  # must equal AdamW up to float rounding
# Short CamelCase names of the optimizers for numbers() keys (letters only: they become LaTeX macros).
OPTIMIZER_KEYS = {
    "AdamW": "AdamW", "KalmanAdam-adam": "KalmanAdam", "KalmanAdam-constant": "Constant",
    "KalmanAdam-adaptive": "Adaptive", "KalmanAdam-VA": "VA", "LAMB": "LAMB", "KalmanLAMB-PW": "LAMBPW",
    "KalmanLAMB-adaptive-PW": "AdaptiveLAMBPW", "KalmanAdam-innovation": "Innovation",
    "KalmanAdam-innovation-VA": "InnovationVA", "KalmanAdam-transport": "Transport",
    "KalmanLAMB-innovation-PW": "InnovationLAMBPW", "KalmanAdam-extrapolated": "Extrapolated",
}
# The Kalman variants that differ from their baseline (the sanity row is AdamW itself).
KALMAN_VARIANTS = ("KalmanAdam-constant", "KalmanAdam-adaptive", "KalmanAdam-VA", "KalmanAdam-innovation-VA",
                   "KalmanAdam-transport", "KalmanLAMB-PW", "KalmanLAMB-adaptive-PW", "KalmanLAMB-innovation-PW",
                   "KalmanAdam-extrapolated")


# ------------------------------------------------------------------------------------------ lr grid and tuning
def grid_ratio(low: float, high: float, count: int) -> float:
    """Ratio of neighbouring grid lrs: (high / low)^(1 / (count - 1)); one decade for a single-point grid."""
    return (high / low) ** (1.0 / (count - 1)) if count > 1 else 10.0


def extended_lr(low: float, high: float, count: int, index: int) -> float:
    """Grid point `index` of the infinite log grid through lr_grid(low, high, count): low * ratio^index,
    rounded to 3 significant digits like lr_grid (index < 0: below the grid, index >= count: above it)."""
    return float(f"{low * grid_ratio(low, high, count) ** index:.3g}")


def tuning_config(settings: dict) -> dict[str, Any]:
    """The tuning protocol, stored in every run's config: changing it invalidates the selection."""
    return dict(lr_low=float(settings["lr_low"]), lr_high=float(settings["lr_high"]),
                lr_count=int(settings["lr_count"]), max_extra_lrs=int(settings["max_extra_lrs"]),
                seed=int(settings["tuning_seed"]), target_slack=float(settings["target_slack"]))


def run_id(task: str, optimizer: str, lr: float, seed: int) -> str:
    return f"{task}_{optimizer}_lr={lr:g}_seed{seed}"


def selection_loss(result: dict | None) -> float:
    """Final validation loss of a tuning run; +inf for a diverged or non-finite run."""
    metrics = (result or {}).get("metrics", {})
    value = metrics.get("val_loss", math.inf)
    if metrics.get("diverged") or value is None or not math.isfinite(float(value)):
        return math.inf
    return float(value)


@dataclass
class Tuning:
    """Stage 1 of one (task, optimizer): the grid as widened so far, its losses, and the choice when complete."""

    grid: list[float]
    pending: list[float]  # grid lrs without a result: stage 1 is incomplete while non-empty
    losses: dict[float, float] = field(default_factory=dict)  # lr -> final validation loss (tuning seed)
    best_lr: float | None = None
    on_edge: bool = False  # the best lr is still an edge of the (widened) grid
    extra: int = 0  # points added beyond the base grid

    @property
    def complete(self) -> bool:
        return self.best_lr is not None


def tuning_state(tuning: dict, task: str, optimizer: str, done: dict[str, dict]) -> Tuning:
    """Replay the widening rule on the results in `done`.

    Start from lr_grid(lr_low, lr_high, lr_count); while every grid lr has a result: best = argmin of the
    validation loss (ties: the smaller lr); if best is the lowest (highest) grid lr and fewer than
    max_extra_lrs points were added, add the next lower (higher) lr of the same log grid and go on."""
    low, high, count = tuning["lr_low"], tuning["lr_high"], tuning["lr_count"]
    first, last = 0, count - 1  # indices into the infinite log grid
    while True:
        grid = [extended_lr(low, high, count, i) for i in range(first, last + 1)]
        ids = {lr: run_id(task, optimizer, lr, tuning["seed"]) for lr in grid}
        extra = (last - first + 1) - count
        pending = [lr for lr in grid if ids[lr] not in done]
        if pending:
            return Tuning(grid, pending, extra=extra)
        losses = {lr: selection_loss(done[ids[lr]]) for lr in grid}
        best = min(grid, key=lambda lr: (losses[lr], lr))
        at_low, at_high = best == grid[0], best == grid[-1]
        if extra < tuning["max_extra_lrs"] and (at_low or at_high):
            first, last = (first - 1, last) if at_low else (first, last + 1)
            continue
        return Tuning(grid, [], losses, best, at_low or at_high, extra)
