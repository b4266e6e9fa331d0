"""E4's report: per (task, optimizer) estimates over seeds at the tuned learning rate, paired differences and
steps-to-target ratios against AdamW (summarize), the figures and results table (figures), and the numbers the
paper quotes (numbers). experiments/e4_training.py is the experiment (plan, execute) and re-exports these."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from experiments import training
from experiments.e4_design import (BASELINE, KALMAN_VARIANTS, OPTIMIZER_KEYS, SANITY, TASK_KEYS, TASK_TABLE_NAMES,
                                   TASK_TITLES, TASKS, Tuning, tuning_state)
from experiments.plotting import FigureOutput, style
from experiments.stats import (Estimate, holm_reject, mean_ci, paired_difference, paired_ratio, paired_t_p_value,
                               significance)


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
def _names(rows) -> str:
    """Optimizer names for the text: comma-separated, or "none"."""
    names = [r.optimizer for r in rows]
    return ", ".join(names) if names else "none"


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
        # A training step's wall time (forward, backward, optimizer step and evaluation) on AdamW's finished runs: the
        # scale against which the optimizer step's own cost (make bench, bench_models) is read.
        per_step = [1e3 * float(r["wall_time_s"]) / int(r["metrics"]["steps_done"]) for r in runs
                    if r["config"]["task"] == task and r["config"]["optimizer"] == BASELINE and "wall_time_s" in r
                    and not r["metrics"].get("diverged") and int(r["metrics"].get("steps_done", 0)) > 0]
        if per_step:
            out[f"{prefix}AdamWMillisecondsPerStep"] = round(float(np.median(per_step)), 1)
        baseline = task_rows.get(BASELINE)
        if baseline is None:
            continue
        out[f"{prefix}AdamWTestAccuracy"] = baseline.test_accuracy.mean
        out[f"{prefix}AdamWTestLoss"] = baseline.test_loss.mean
        out[f"{prefix}AdamWLr"] = baseline.tuning.best_lr
        out[f"{prefix}TargetValLoss"] = baseline.target
        if baseline.reached:
            out[f"{prefix}AdamWStepsToTarget"] = round(baseline.steps_to_target.mean)  # evaluations every 100 steps
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
        better = [r for rej, r in zip(rejected, compared) if rej and r.test_loss_vs_baseline.mean < 0]
        worse = [r for rej, r in zip(rejected, compared) if rej and r.test_loss_vs_baseline.mean > 0]
        out[f"{prefix}BetterCount"], out[f"{prefix}WorseCount"] = len(better), len(worse)
        # The same verdicts by name, for the text: "none" or the optimizers, comma-separated.
        out[f"{prefix}BetterVariants"], out[f"{prefix}WorseVariants"] = _names(better), _names(worse)
        # Steps to target: the optimizers whose paired ratio's 95% interval lies entirely below / above 1 (uncorrected).
        ratios = [r for r in compared if r.steps_ratio_to_baseline.n >= 2]
        out[f"{prefix}FewerStepsVariants"] = _names(r for r in ratios if r.steps_ratio_to_baseline.high < 1)
        out[f"{prefix}MoreStepsVariants"] = _names(r for r in ratios if r.steps_ratio_to_baseline.low > 1)
        out[f"{prefix}UncorrectedBetterCount"] = sum(significance(r.test_loss_vs_baseline) < 0 for r in compared)
        out[f"{prefix}UncorrectedWorseCount"] = sum(significance(r.test_loss_vs_baseline) > 0 for r in compared)
        kalman = [r for r in compared if r.optimizer in KALMAN_VARIANTS and math.isfinite(r.test_loss_vs_baseline.mean)]
        if kalman:
            best = min(kalman, key=lambda r: r.test_loss_vs_baseline.mean)
            out[f"{prefix}BestKalmanVariant"] = best.optimizer
            out[f"{prefix}BestKalmanLossDiff"] = best.test_loss_vs_baseline.mean
            out[f"{prefix}BestKalmanLossDiffLow"] = best.test_loss_vs_baseline.low
            out[f"{prefix}BestKalmanLossDiffHigh"] = best.test_loss_vs_baseline.high
        for name, key in (("KalmanLAMB-PW", ""), ("KalmanLAMB-innovation-PW", "Innovation")):
            if "LAMB" in task_rows and name in task_rows:
                # Precision weighting's own effect: KalmanLAMB with it against plain LAMB, paired by seed.
                lamb, weighted = task_rows["LAMB"], task_rows[name]
                common = [s for s in weighted.seeds if s in lamb.test_losses]
                out[f"{prefix}{key}PrecisionWeightingLossDiff"] = paired_difference(
                    [weighted.test_losses[s] for s in common], [lamb.test_losses[s] for s in common]).mean
    # Macros need finite numbers: a diverged row (infinite loss) or a one-seed interval is left out.
    return {k: v for k, v in out.items() if isinstance(v, str) or math.isfinite(v)}
