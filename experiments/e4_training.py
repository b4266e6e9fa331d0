r"""E4: training on real data -- every optimizer tuned on one learning-rate grid, then compared over seeds.

Three tasks (experiments/training.py): (a) SmallCNN on Fashion-MNIST, (b) a character-level transformer on
Shakespeare (held-out plays), (c) a small ResNet with BatchNorm on Fashion-MNIST (paper profile only: normalization
makes most weights scale-invariant, which changes how step size, weight decay and trust ratios act).
Eleven optimizers (training.OPTIMIZERS without the modes that take AdamW's steps exactly): AdamW, KalmanAdam
with noise "adam" (the sanity row: AdamW exactly), "constant", "adaptive", "adam" + variance adaptation,
"innovation" + variance adaptation (on the calibrated uncertainty, D7), "transport" (D8), plain LAMB, KalmanLAMB
with precision weighting on the zero-memory, adaptive and innovation uncertainty.

Fair tuning (the same protocol for every optimizer):

* one common learning-rate grid for ALL optimizers: `lr_count` log-spaced values from `lr_low` to `lr_high`
  (1e-4 .. 1e-1: three decades, wide enough for Adam-type steps, ~1e-3, and LAMB-type layer-wise trust-ratio
  steps, ~1e-2 and up); the same step budget, batch size and weight decay (0 for all: AdamW's decoupled decay
  is scaled by lr while LAMB's sits inside the trust ratio, so any non-zero value would favour one family);
* stage 1 (tuning): the tuning seed at every grid lr; the best lr minimises the final VALIDATION loss
  (a diverged run counts as +inf; ties go to the smaller lr). If the best lr is an edge of the grid, the
  grid is widened by one point beyond that edge at the same log spacing and the new point is run; this
  repeats up to `max_extra_lrs` extra points. A best lr still on the edge after that is flagged `on_edge`;
* stage 2 (evaluation): at the best lr, one run per seed in {tuning seed} + profile seeds. The tuning seed's
  run at the best lr IS one of them (the identical config and run id: it is reused, not rerun). Reusing it
  carries a small selection bias (its validation loss won the selection), alike for every optimizer;
  test metrics come from the held-out test split, never used for selection.

Reported per (task, optimizer) at the best lr: final test loss and accuracy (mean with 95% t-interval over
seeds), steps to a target validation loss, and the paired difference (by seed: same initial model, same
mini-batches) of the test loss against AdamW, d_i = L_i(optimizer) - L_i(AdamW), mean with its t-interval.

Target validation loss of a task = (1 + target_slack) x the mean over seeds of AdamW's final validation loss
at its best lr; steps to target = the first evaluation step with validation loss <= target (the evaluation
interval sets the resolution); seeds that never reach it are counted, not averaged.

Sanity: KalmanAdam(noise="adam") must reproduce AdamW; numbers() reports the largest absolute difference of
any validation/test loss between the two at the same (task, lr, seed), over every run both have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from experiments import training
from experiments.plotting import FigureOutput, style
from experiments.runner import RunSpec
from experiments.stats import Estimate, holm_reject, mean_ci, paired_difference, paired_ratio, paired_t_p_value

NAME = "e4_training"
TITLE = "Fashion-MNIST CNN and ResNet, Shakespeare transformer: 11 optimizers tuned on one lr grid, seeds, CIs vs AdamW"

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
# Modes that take AdamW's steps exactly (they differ only in the uncertainty they read out): not trained again.
SAME_STEPS_AS_ADAMW = ("KalmanAdam-innovation", "KalmanAdam-innovation-fast")
# Short CamelCase names of the optimizers for numbers() keys (letters only: they become LaTeX macros).
OPTIMIZER_KEYS = {
    "AdamW": "AdamW", "KalmanAdam-adam": "KalmanAdam", "KalmanAdam-constant": "Constant",
    "KalmanAdam-adaptive": "Adaptive", "KalmanAdam-VA": "VA", "LAMB": "LAMB", "KalmanLAMB-PW": "LAMBPW",
    "KalmanLAMB-adaptive-PW": "AdaptiveLAMBPW", "KalmanAdam-innovation": "Innovation",
    "KalmanAdam-innovation-VA": "InnovationVA", "KalmanAdam-transport": "Transport",
    "KalmanLAMB-innovation-PW": "InnovationLAMBPW",
}
# The Kalman variants that differ from their baseline (the sanity row is AdamW itself).
KALMAN_VARIANTS = ("KalmanAdam-constant", "KalmanAdam-adaptive", "KalmanAdam-VA", "KalmanAdam-innovation-VA",
                   "KalmanAdam-transport", "KalmanLAMB-PW", "KalmanLAMB-adaptive-PW", "KalmanLAMB-innovation-PW")

_COMMON: dict[str, Any] = dict(
    optimizers=[name for name in training.OPTIMIZERS if name not in SAME_STEPS_AS_ADAMW],
    lr_low=1e-4, lr_high=1e-1,
    weight_decay=0.0,
    tuning_seed=0,
    target_slack=0.05,
)

PROFILES: dict[str, dict[str, Any]] = {
    # 2 tasks x 11 optimizers x (5 lrs + widening + 2 seeds) ~ 155-165 runs of 100 steps; half the default
    # batches keep a run near 1 s on 2 free CPU cores (~2-2.5 minutes in all; much longer on shared cores).
    "smoke": dict(_COMMON,
                  tasks=dict(fashion_mnist=dict(train_size=10000, eval_size=500, batch_size=64),
                             shakespeare=dict(batch_size=16, context=64, width=64, layers=2, heads=4,
                                              eval_windows=64)),
                  steps=100, eval_every=20, lr_count=5, max_extra_lrs=2, seeds=[0, 1, 2]),
    # Paper scale on the 2-core CPU (issue 14): 2000 steps, a 7-point half-decade grid (1e-4 .. 1e-1, widened up to
    # 3 points), 5 seeds; the smoke models at the smoke batch sizes, the whole Fashion-MNIST training set.
    # KalmanAdam-adam is left out: it is AdamW step for step (the tests check 1000 steps; the smoke profile keeps
    # the sanity row). ~3 x 10 x (7 + 4 + widening) ~ 345 runs.
    # The ResNet (added later, last so the plan order of the other two is kept): a stride-2 stem (stages at 14, 7
    # and 4 pixels) and channels (12, 24, 48), 44k parameters, at the CNN's batch size. Measured with one thread
    # on the 2-core CPU while two other E4 processes ran (200 steps incl. evaluation, x10 for 2000): 52-58 s with
    # AdamW / KalmanLAMB-innovation-PW / KalmanAdam-transport, the SmallCNN 52-54 s at the same time (~45 s on
    # its own); (16, 32, 64) took 61-72 s, and without the stride-2 stem (8, 16, 32) already 102 s.
    "paper": dict(_COMMON,
                  optimizers=[name for name in _COMMON["optimizers"] if name != SANITY],
                  tasks=dict(fashion_mnist=dict(batch_size=64, eval_size=2000),
                             shakespeare=dict(batch_size=16, context=64, width=64, layers=2, heads=4,
                                              eval_windows=256),
                             fashion_mnist_resnet=dict(batch_size=64, eval_size=2000, channels=[12, 24, 48],
                                                       stem_stride=2)),
                  # The ResNet only with AdamW and the Adam-family variants that change its steps through the
                  # uncertainty (VA on the zero-memory and on D7's calibrated variance) or the transition (D8's
                  # transport): all ten did not fit the session's compute (the LAMB family runs on the other two).
                  task_optimizers=dict(fashion_mnist_resnet=["AdamW", "KalmanAdam-VA", "KalmanAdam-innovation-VA",
                                                             "KalmanAdam-transport"]),
                  steps=2000, eval_every=100, lr_count=7, max_extra_lrs=3, seeds=[0, 1, 2, 3, 4]),
    # Paper scale: ~2 x 8 x (7 + 4 + widening) ~ 185 runs of 2000 steps (~370k steps: ~8 minutes on one H100
    # if a step takes ~1.3 ms; not yet timed there); the whole data sets live on the device.
    # CNN: 2000 x 256 images ~ 9 epochs of the 55k training images; transformer: 2000 x 64 windows of 128
    # characters ~ 3.7 passes over the ~4.4M training characters.
    "full": dict(_COMMON,
                 tasks=dict(fashion_mnist=dict(batch_size=256),
                            shakespeare=dict(batch_size=64, context=128, width=128, layers=2, heads=4,
                                             eval_windows=512)),
                 steps=2000, eval_every=100, lr_count=7, max_extra_lrs=3, seeds=[0, 1, 2, 3, 4]),
}


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


# ------------------------------------------------------------------------------------------ plan / execute
def run_config(settings: dict, task: str, optimizer: str, lr: float, seed: int) -> dict[str, Any]:
    return dict(task=task, task_kwargs=dict(settings["tasks"][task]), optimizer=optimizer, lr=float(lr),
                weight_decay=float(settings["weight_decay"]), steps=int(settings["steps"]),
                eval_every=int(settings["eval_every"]), tuning=tuning_config(settings), seed=int(seed))


def task_optimizers(settings: dict, task: str) -> list[str]:
    """The optimizers run on `task`: the profile's `task_optimizers[task]` where given (a subset, in the order of
    `optimizers`), else all of `optimizers`."""
    subset = settings.get("task_optimizers", {}).get(task)
    if subset is None:
        return list(settings["optimizers"])
    unknown = [name for name in subset if name not in settings["optimizers"]]
    if unknown:
        raise ValueError(f"Invalid task_optimizers[{task!r}]: {unknown} not in the profile's optimizers")
    return [name for name in settings["optimizers"] if name in subset]


def evaluation_seeds(tuning_seed: int, seeds: Sequence[int]) -> list[int]:
    """Stage-2 seeds: the tuning seed (its run at the best lr is reused) followed by the profile's others."""
    return [tuning_seed] + [int(s) for s in seeds if int(s) != tuning_seed]


def plan(settings: dict, seeds: list[int], done: dict[str, dict]) -> list[RunSpec]:
    """Stage 1 (tuning seed x widened lr grid) per (task, optimizer); stage 2 (the evaluation seeds at the
    best lr) for a pair only once its stage 1 is complete. Run ids carry no stage, so the tuning run at the
    best lr is the stage-2 run of the tuning seed."""
    tuning = tuning_config(settings)
    specs: dict[str, RunSpec] = {}
    for task in settings["tasks"]:
        for optimizer in task_optimizers(settings, task):
            state = tuning_state(tuning, task, optimizer, done)
            lr_seeds = [(lr, tuning["seed"]) for lr in state.grid]
            if state.complete:
                lr_seeds += [(state.best_lr, s) for s in evaluation_seeds(tuning["seed"], seeds)]
            for lr, seed in lr_seeds:
                identifier = run_id(task, optimizer, lr, seed)
                specs.setdefault(identifier, RunSpec(identifier, run_config(settings, task, optimizer, lr, seed)))
    return list(specs.values())


def execute(config: dict, device: torch.device) -> dict:
    seed = int(config["seed"])
    torch.manual_seed(seed)  # the same initial model for every optimizer and lr with this seed (pairing)
    task = training.make_task(config["task"], device, **config["task_kwargs"])
    optimizer = training.make_optimizer(config["optimizer"], task.model.parameters(), lr=config["lr"],
                                        weight_decay=config["weight_decay"])
    result = training.train(task, optimizer, steps=config["steps"], seed=seed, eval_every=config["eval_every"],
                            progress=f"e4 {config['task']} {config['optimizer']} lr={config['lr']:g}")
    metrics = dict(val_loss=result.final_val["loss"], val_accuracy=result.final_val["accuracy"],
                   test_loss=result.final_test["loss"], test_accuracy=result.final_test["accuracy"],
                   diverged=result.diverged, steps_done=result.steps)
    curves = dict(eval_steps=result.eval_steps, val_loss=result.val_loss, val_accuracy=result.val_accuracy,
                  train_loss=result.train_loss)
    return dict(metrics=metrics, curves=curves)


# ------------------------------------------------------------------------------------------ summaries
@dataclass
class Row:
    """One (task, optimizer) at its best lr: estimates over the evaluation seeds, paired differences to AdamW."""

    task: str
    optimizer: str
    tuning: Tuning
    seeds: list[int]
    diverged: int
    test_loss: Estimate
    test_accuracy: Estimate
    val_loss: Estimate
    steps_to_target: Estimate  # over the seeds that reach the target
    reached: int  # seeds reaching the target validation loss
    target: float
    test_loss_vs_baseline: Estimate  # mean_i L_i(optimizer) - L_i(AdamW), paired by seed
    test_accuracy_vs_baseline: Estimate
    test_loss_p_value: float = math.nan  # paired t-test against AdamW (Holm-corrected in numbers())
    # steps to target / AdamW's steps to target, geometric mean over the seeds where both reach it (paired by seed)
    steps_ratio_to_baseline: Estimate = field(default_factory=lambda: Estimate(math.nan, math.nan, math.nan, 0))
    curves: dict[int, dict] = field(default_factory=dict, repr=False)  # seed -> curves
    test_losses: dict[int, float] = field(default_factory=dict)  # seed -> final test loss


def _runs_by_id(runs: Sequence[dict]) -> dict[str, dict]:
    return {r["run_id"]: r for r in runs}


def _tunings(runs: Sequence[dict]) -> dict[tuple[str, str], tuple[Tuning, dict]]:
    """(task, optimizer) -> (its stage-1 state, the tuning protocol) from the runs' configs."""
    done = _runs_by_id(runs)
    out = {}
    for r in runs:
        key = (r["config"]["task"], r["config"]["optimizer"])
        if key not in out:
            tuning = r["config"]["tuning"]
            out[key] = (tuning_state(tuning, *key, done), tuning)
    return out


def evaluation_runs(runs: Sequence[dict], task: str, optimizer: str, best_lr: float) -> dict[int, dict]:
    """seed -> result of every run of (task, optimizer) at the best lr (the tuning seed's and stage 2's)."""
    return {int(r["config"]["seed"]): r for r in runs if r["config"]["task"] == task
            and r["config"]["optimizer"] == optimizer and float(r["config"]["lr"]) == best_lr}


def _metric(by_seed: dict[int, dict], seeds: Sequence[int], name: str) -> list[float]:
    return [float(by_seed[s]["metrics"][name]) for s in seeds]


def target_loss(baseline: dict[int, dict], slack: float) -> float:
    """(1 + slack) x the mean over seeds of AdamW's final validation loss at its best lr (nan without it)."""
    values = [float(r["metrics"]["val_loss"]) for r in baseline.values()]
    finite = [v for v in values if math.isfinite(v)]
    return (1 + slack) * float(np.mean(finite)) if finite else math.nan


def summarize(runs: Sequence[dict]) -> list[Row]:
    """Per task and optimizer (registry order) with a complete stage 1: the rows of the results table."""
    tunings = _tunings(runs)
    rows = []
    for task in TASKS:
        pairs = {opt: value for (t, opt), value in tunings.items() if t == task and value[0].complete}
        if not pairs:
            continue
        baseline: dict[int, dict] = {}
        target = math.nan
        baseline_steps: dict[int, int | None] = {}
        if BASELINE in pairs:
            baseline = evaluation_runs(runs, task, BASELINE, pairs[BASELINE][0].best_lr)
            target = target_loss(baseline, pairs[BASELINE][1]["target_slack"])
            baseline_steps = {s: training.steps_to_target(r["curves"]["eval_steps"], r["curves"]["val_loss"], target)
                              for s, r in baseline.items()}
        for optimizer in [o for o in training.OPTIMIZERS if o in pairs]:
            state = pairs[optimizer][0]
            own = evaluation_runs(runs, task, optimizer, state.best_lr)
            seeds = sorted(own)
            common = [s for s in seeds if s in baseline]
            steps = [training.steps_to_target(own[s]["curves"]["eval_steps"], own[s]["curves"]["val_loss"], target)
                     for s in seeds] if math.isfinite(target) else [None] * len(seeds)
            both = [(n, baseline_steps[s]) for s, n in zip(seeds, steps)
                    if n is not None and baseline_steps.get(s) is not None]
            rows.append(Row(
                task=task, optimizer=optimizer, tuning=state, seeds=seeds,
                diverged=sum(bool(own[s]["metrics"]["diverged"]) for s in seeds),
                test_loss=mean_ci(_metric(own, seeds, "test_loss")),
                test_accuracy=mean_ci(_metric(own, seeds, "test_accuracy")),
                val_loss=mean_ci(_metric(own, seeds, "val_loss")),
                steps_to_target=mean_ci([s for s in steps if s is not None]),
                reached=sum(s is not None for s in steps), target=target,
                test_loss_vs_baseline=paired_difference(_metric(own, common, "test_loss"),
                                                        _metric(baseline, common, "test_loss")),
                test_accuracy_vs_baseline=paired_difference(_metric(own, common, "test_accuracy"),
                                                            _metric(baseline, common, "test_accuracy")),
                test_loss_p_value=paired_t_p_value(_metric(own, common, "test_loss"), _metric(baseline, common, "test_loss")),
                steps_ratio_to_baseline=paired_ratio([a for a, _ in both], [b for _, b in both]),
                curves={s: own[s]["curves"] for s in seeds},
                test_losses={s: float(own[s]["metrics"]["test_loss"]) for s in seeds},
            ))
    return rows


def sanity_difference(runs: Sequence[dict]) -> tuple[float, int]:
    """(max |difference|, number of run pairs) between KalmanAdam-adam and AdamW at equal (task, lr, seed),
    over the final validation and test losses and every point of the validation-loss curve."""
    adamw = {(r["config"]["task"], float(r["config"]["lr"]), int(r["config"]["seed"])): r
             for r in runs if r["config"]["optimizer"] == BASELINE}
    largest, pairs = 0.0, 0
    for r in runs:
        if r["config"]["optimizer"] != SANITY:
            continue
        other = adamw.get((r["config"]["task"], float(r["config"]["lr"]), int(r["config"]["seed"])))
        if other is None:
            continue
        pairs += 1
        a = [r["metrics"]["val_loss"], r["metrics"]["test_loss"], *r["curves"]["val_loss"]]
        b = [other["metrics"]["val_loss"], other["metrics"]["test_loss"], *other["curves"]["val_loss"]]
        if len(a) != len(b):
            return math.inf, pairs  # one diverged where the other did not
        for x, y in zip(a, b):
            if x != y:  # equal infinities (both diverged) are no difference
                largest = max(largest, abs(float(x) - float(y)))
    return largest, pairs


def significance(estimate: Estimate) -> int:
    """-1 when the 95% interval lies below 0 (better than AdamW: lower loss), +1 above, 0 otherwise."""
    if math.isfinite(estimate.high) and estimate.high < 0:
        return -1
    if math.isfinite(estimate.low) and estimate.low > 0:
        return 1
    return 0


# ------------------------------------------------------------------------------------------ figures
def _label(optimizer: str) -> str:
    return optimizer + (" (= AdamW)" if optimizer == SANITY else "")


def _optimizer_style(optimizer: str) -> dict[str, Any]:
    return style(list(training.OPTIMIZERS).index(optimizer))


def _profile_note(runs: Sequence[dict], out: FigureOutput) -> str:
    config = runs[0]["config"]
    return f"{config['steps']} steps, weight decay {config['weight_decay']:g} ({out.profile} profile)"


def figure_lr_sweep(rows: list[Row], runs: Sequence[dict], out: FigureOutput) -> None:
    """Final validation loss (tuning seed) vs lr per optimizer, one panel per task; the chosen lr circled."""
    tasks = [t for t in TASKS if any(r.task == t for r in rows)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks) + 0.4, 3.9), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        finite_all = []
        for row in (r for r in rows if r.task == task):
            grid = row.tuning.grid
            losses = [row.tuning.losses[lr] for lr in grid]
            finite_all += [v for v in losses if math.isfinite(v)]
            s = _optimizer_style(row.optimizer)
            ax.plot(grid, [v if math.isfinite(v) else np.nan for v in losses], label=_label(row.optimizer), **s)
            best = row.tuning.losses[row.tuning.best_lr]
            if math.isfinite(best):
                ax.plot([row.tuning.best_lr], [best], marker="o", markersize=11, markerfacecolor="none",
                        color=s["color"], linestyle="none")
            diverged = [lr for lr, v in zip(grid, losses) if not math.isfinite(v)]
            if diverged:  # drawn at the top edge: no loss to plot
                ax.plot(diverged, [0.98] * len(diverged), transform=ax.get_xaxis_transform(), marker="x",
                        color=s["color"], linestyle="none", markersize=6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        if finite_all:
            # Losses far above the best (blown-up large-lr runs) would flatten the minima: clip at 6x the best.
            low, high = min(finite_all), max(finite_all)
            ax.set_ylim(low / 1.1, min(high * 1.1, 6 * low))
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final validation loss (nats, log scale)")
        ax.set_title(TASK_TITLES[task])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4)
    fig.suptitle(f"E4 learning-rate sweep (tuning seed), {_profile_note(runs, out)}\n"
                 "circle = chosen lr; x at the top = diverged; losses above 6x the best are clipped")
    out.save(fig, "e4_lr_sweep")


def curve_estimates(curves: dict[int, dict], baseline: dict[int, dict] | None = None
                    ) -> tuple[list[int], list[Estimate]]:
    """Validation loss per evaluation step over the seeds that ran to the end: mean with 95% t-interval, or,
    with `baseline` (seed -> AdamW's curves), the paired difference loss - loss_AdamW over the common seeds."""
    def full(c: dict) -> bool:
        return all(math.isfinite(v) for v in c["val_loss"])

    seeds = [s for s, c in curves.items() if full(c) and (baseline is None or (s in baseline and full(baseline[s])))]
    if not seeds:
        return [], []
    length = min(len(curves[s]["eval_steps"]) for s in seeds)
    steps = list(curves[seeds[0]]["eval_steps"][:length])
    if baseline is None:
        return steps, [mean_ci([curves[s]["val_loss"][i] for s in seeds]) for i in range(length)]
    return steps, [paired_difference([curves[s]["val_loss"][i] for s in seeds],
                                     [baseline[s]["val_loss"][i] for s in seeds]) for i in range(length)]


def _band(ax, steps: list[int], estimates: list[Estimate], color: str) -> None:
    if all(e.n > 1 and math.isfinite(e.low) and math.isfinite(e.high) for e in estimates):
        ax.fill_between(steps, [e.low for e in estimates], [e.high for e in estimates], color=color, alpha=0.08,
                        linewidth=0)


def figure_curves(rows: list[Row], runs: Sequence[dict], out: FigureOutput) -> None:
    """Per task (column): validation loss vs step at the best lr, mean over seeds with 95% CI band (top), and
    the paired difference to AdamW by seed with its 95% CI band (bottom: seed-to-seed variation cancels)."""
    tasks = [t for t in TASKS if any(r.task == t for r in rows)]
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.7 * len(tasks) + 0.4, 6.4), squeeze=False, sharex="col")
    for column, task in enumerate(tasks):
        top, bottom = axes[0][column], axes[1][column]
        task_rows = [r for r in rows if r.task == task]
        baseline = next((r for r in task_rows if r.optimizer == BASELINE), None)
        finals, differences = [], []
        for row in task_rows:
            s = _optimizer_style(row.optimizer)
            steps, estimates = curve_estimates(row.curves)
            if not steps:
                continue
            means = [e.mean for e in estimates]
            finals.append(means[-1])
            top.plot(steps, means, label=f"{_label(row.optimizer)}", markevery=max(1, len(steps) // 6), **s)
            _band(top, steps, estimates, s["color"])
            if baseline is None or row.optimizer == BASELINE:
                continue
            steps, estimates = curve_estimates(row.curves, baseline.curves)
            if steps:
                differences += [e.mean for e in estimates[len(estimates) // 2:]]
                bottom.plot(steps, [e.mean for e in estimates], markevery=max(1, len(steps) // 6), **s)
                _band(bottom, steps, estimates, s["color"])
        target = task_rows[0].target
        if math.isfinite(target):
            top.axhline(target, color="#777777", linewidth=0.8, linestyle=(0, (1, 1)), label="target val. loss")
        if finals:
            # The early transient would squash the end of the curves: show from the final losses upward.
            low, high = min(finals), max(finals)
            span = max(high - low, 0.05 * abs(high))
            top.set_ylim(low - 0.3 * span, high + 2.0 * span)
        if differences:
            reach = max(abs(d) for d in differences)
            bottom.set_ylim(-2.5 * reach, 2.5 * reach)
        bottom.axhline(0.0, color="black", linewidth=0.8)
        top.set_title(f"{TASK_TITLES[task]}, {max(len(r.seeds) for r in task_rows)} seeds")
        top.set_ylabel("validation loss (nats)")
        bottom.set_ylabel("val. loss - AdamW's, paired (nats)")
        bottom.set_xlabel("step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3)
    fig.suptitle(f"E4 validation loss at each optimizer's tuned lr, {_profile_note(runs, out)}\n"
                 "top: mean and 95% CI over seeds; bottom: difference to AdamW paired by seed, 95% CI")
    out.save(fig, "e4_curves")


def _table_rows(rows: list[Row]) -> list[list[str]]:
    table = []
    for r in rows:
        accuracy = Estimate(100 * r.test_accuracy.mean, 100 * r.test_accuracy.low, 100 * r.test_accuracy.high,
                            r.test_accuracy.n)
        if not math.isfinite(r.target):
            steps = "-"
        elif r.reached:
            steps = f"{r.steps_to_target.format()} ({r.reached}/{len(r.seeds)})"
        else:
            steps = f"not reached (0/{len(r.seeds)})"
        diff = "baseline" if r.optimizer == BASELINE else r.test_loss_vs_baseline.format(2)
        ratio = r.steps_ratio_to_baseline
        if r.optimizer == BASELINE:
            ratio_text = "1"
        elif ratio.n >= 2:
            ratio_text = f"{ratio.mean:.2f} [{ratio.low:.2f}, {ratio.high:.2f}]"
        else:
            ratio_text = f"{ratio.mean:.2f}" if ratio.n == 1 else "-"
        edge = "yes" if r.tuning.on_edge else "no"
        seeds = f"{len(r.seeds)}" + (f" ({r.diverged} div.)" if r.diverged else "")
        table.append([TASK_TABLE_NAMES[r.task], r.optimizer, f"{r.tuning.best_lr:g}", r.test_loss.format(),
                      accuracy.format(), steps, ratio_text, diff, edge, seeds])
    return table


def figures(runs: list[dict], out: FigureOutput) -> None:
    """e4_lr_sweep, e4_curves and the table e4_results."""
    rows = summarize(runs)
    if not rows:
        return
    figure_lr_sweep(rows, runs, out)
    figure_curves(rows, runs, out)
    config = runs[0]["config"]
    tuning = config["tuning"]
    grid = training.lr_grid(tuning["lr_low"], tuning["lr_high"], tuning["lr_count"])
    out.table("e4_results", ["task", "optimizer", "best lr", "test loss", "test acc. (%)", "steps to target",
                             "steps / AdamW's", "test loss - AdamW (paired)", "lr on edge", "seeds"], _table_rows(rows),
              caption=f"E4 ({out.profile} profile): {config['steps']} steps, weight decay {config['weight_decay']:g}; "
                      f"every optimizer tuned on the same grid of {len(grid)} lrs {grid[0]:g}..{grid[-1]:g} "
                      f"(widened by up to {tuning['max_extra_lrs']} points when the best is on an edge) by the final "
                      f"validation loss of seed {tuning['seed']}; at the best lr mean ± 95% t-interval half-width over "
                      f"seeds (the tuning seed's run included). Steps to target: first evaluation step with "
                      f"validation loss ≤ {1 + tuning['target_slack']:g} × AdamW's mean final validation loss "
                      f"(mean over the seeds reaching it); steps / AdamW's: geometric mean of the per-seed ratio "
                      f"over the seeds where both reach the target, with its 95% interval. Δ: paired by seed, "
                      f"negative = lower loss than AdamW.",
              align="llrrrrrrlr")


# ------------------------------------------------------------------------------------------ numbers
def numbers(runs: list[dict]) -> dict[str, float | int | str]:
    """Per task: AdamW's test accuracy / loss / lr, every optimizer's paired test-loss difference to AdamW,
    the best Kalman variant, counts significantly better / worse than AdamW (paired t-tests, Holm-corrected over the
    task's comparisons; uncorrected: the 95% CI excludes 0), the target;
    overall: the KalmanAdam-adam vs AdamW sanity difference and the scale of the runs."""
    rows = summarize(runs)
    out: dict[str, float | int | str] = {}
    if not rows:
        return out
    config = runs[0]["config"]
    out.update(Steps=int(config["steps"]), LrCount=int(config["tuning"]["lr_count"]),
               Seeds=max(len(r.seeds) for r in rows))
    largest, pairs = sanity_difference(runs)
    if pairs:  # the paper profile leaves the sanity row out (the tests check it step for step)
        out.update(SanityMaxAbsDifference=largest, SanityComparedRuns=pairs)
    for task in TASKS:
        task_rows = {r.optimizer: r for r in rows if r.task == task}
        if not task_rows:
            continue
        prefix = TASK_KEYS[task]
        out[f"{prefix}OnEdgeCount"] = sum(r.tuning.on_edge for r in task_rows.values())
        baseline = task_rows.get(BASELINE)
        if baseline is None:
            continue
        out[f"{prefix}AdamWTestAccuracy"] = baseline.test_accuracy.mean
        out[f"{prefix}AdamWTestLoss"] = baseline.test_loss.mean
        out[f"{prefix}AdamWLr"] = baseline.tuning.best_lr
        out[f"{prefix}TargetValLoss"] = baseline.target
        if baseline.reached:
            out[f"{prefix}AdamWStepsToTarget"] = baseline.steps_to_target.mean
        compared = [r for name, r in task_rows.items() if name not in (BASELINE, SANITY)]
        for r in compared:
            out[f"{prefix}{OPTIMIZER_KEYS[r.optimizer]}LossDiff"] = r.test_loss_vs_baseline.mean
            if r.steps_ratio_to_baseline.n >= 2:
                key = f"{prefix}{OPTIMIZER_KEYS[r.optimizer]}StepsRatio"
                out[key] = r.steps_ratio_to_baseline.mean
                out[key + "Low"], out[key + "High"] = r.steps_ratio_to_baseline.low, r.steps_ratio_to_baseline.high
            out[f"{prefix}{OPTIMIZER_KEYS[r.optimizer]}AccuracyDiff"] = r.test_accuracy_vs_baseline.mean
        # "Significant" after Holm's correction over the task's comparisons with AdamW (paired t-tests by seed).
        rejected = holm_reject([r.test_loss_p_value for r in compared])
        out[f"{prefix}ComparisonCount"] = len(compared)
        out[f"{prefix}BetterCount"] = sum(rej and r.test_loss_vs_baseline.mean < 0 for rej, r in zip(rejected, compared))
        out[f"{prefix}WorseCount"] = sum(rej and r.test_loss_vs_baseline.mean > 0 for rej, r in zip(rejected, compared))
        out[f"{prefix}UncorrectedBetterCount"] = sum(significance(r.test_loss_vs_baseline) < 0 for r in compared)
        out[f"{prefix}UncorrectedWorseCount"] = sum(significance(r.test_loss_vs_baseline) > 0 for r in compared)
        kalman = [r for r in compared if r.optimizer in KALMAN_VARIANTS and math.isfinite(r.test_loss_vs_baseline.mean)]
        if kalman:
            best = min(kalman, key=lambda r: r.test_loss_vs_baseline.mean)
            out[f"{prefix}BestKalmanVariant"] = best.optimizer
            out[f"{prefix}BestKalmanLossDiff"] = best.test_loss_vs_baseline.mean
            out[f"{prefix}BestKalmanLossDiffLow"] = best.test_loss_vs_baseline.low
            out[f"{prefix}BestKalmanLossDiffHigh"] = best.test_loss_vs_baseline.high
        if "LAMB" in task_rows and "KalmanLAMB-PW" in task_rows:
            # Precision weighting's own effect: KalmanLAMB-PW against plain LAMB, paired by seed.
            lamb, weighted = task_rows["LAMB"], task_rows["KalmanLAMB-PW"]
            common = [s for s in weighted.seeds if s in lamb.test_losses]
            out[f"{prefix}PrecisionWeightingLossDiff"] = paired_difference(
                [weighted.test_losses[s] for s in common], [lamb.test_losses[s] for s in common]).mean
    # Macros need finite numbers: a diverged row (infinite loss) or a one-seed interval is left out.
    return {k: v for k, v in out.items() if isinstance(v, str) or math.isfinite(v)}
