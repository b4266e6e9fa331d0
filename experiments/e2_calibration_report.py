"""E2's figure and tables of the optimizer's uncertainty: observed against nominal coverage of KalmanAdam's
intervals per mode (overall, over training and per layer type), and the directly measured process noise."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt

from experiments.e2_design import ADAM_BETA1, CALIBRATED_MODES, LEVELS, MODE_LABELS, MODES, TASK_LABELS
from experiments.e2_results import (calibration_counts, coverage_by_seed, coverage_by_step, coverage_estimate,
                                    dead_counts, format_cell, is_static, level_change_ratios, select, tasks_of)
from experiments.plotting import FigureOutput, style
from experiments.stats import binomial_ci
from kalman_optim import beta_to_noise_ratio


def figure_calibration(runs: list[dict], out: FigureOutput) -> None:
    """Top: nominal vs observed coverage per mode (diagonal = calibrated); training runs solid with the range
    over checkpoints and seeds, the static control (lr 0) open markers. Bottom: 95% coverage over training."""
    tasks = tasks_of(runs)
    if not tasks:
        return
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.6 * len(tasks) + 2.0, 6.0), squeeze=False)
    for column, task in enumerate(tasks):
        top, bottom = axes[0, column], axes[1, column]
        top.plot([0, 1], [0, 1], color="#777777", linestyle="--", linewidth=0.8, label="calibrated")
        bottom.axhline(0.95, color="#777777", linestyle="--", linewidth=0.8, label="nominal 0.95")
        for static in (False, True):
            for i, mode in enumerate(MODES):
                s = style(i)
                estimates = [coverage_estimate(runs, task, mode, level, static) for level in LEVELS]
                if not all(e.n for e in estimates):
                    continue
                label = MODE_LABELS[mode] + (", static lr 0" if static else "")
                observed = [e.mean for e in estimates]
                line = dict(color=s["color"], linestyle=":" if static else s["linestyle"], marker=s["marker"],
                            markersize=5, markerfacecolor="white" if static else s["color"], label=label)
                if static:
                    top.plot(LEVELS, observed, **line)
                else:
                    # Error bars: the range over checkpoints and seeds (the Wilson interval is thinner than a marker).
                    spreads = [calibration_counts(runs, task, mode, level)[2] for level in LEVELS]
                    errors = [[o - min(c) for o, c in zip(observed, spreads)], [max(c) - o for o, c in zip(observed, spreads)]]
                    top.errorbar(LEVELS, observed, yerr=errors, capsize=3, **line)
                steps, values = coverage_by_step(runs, task, mode, 0.95, static)
                bottom.plot(steps, values, **line)
        top.set_xlim(0.4, 1.0)
        top.set_ylim(0, 1.02)
        top.set_xlabel("nominal level of the interval")
        top.set_title(TASK_LABELS[task])
        bottom.set_ylim(0, 1.02)
        bottom.set_xlabel("training step")
    axes[0, 0].set_ylabel("observed coverage of the\nfull-batch gradient")
    axes[1, 0].set_ylabel("coverage of the 95% interval")
    # Training entries first (matplotlib lists plain lines before error-bar containers).
    handles, labels = axes[0, -1].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: "static" in labels[i])
    axes[0, -1].legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
                       bbox_to_anchor=(1.02, 1.0), fontsize=7, title="KalmanAdam mode")
    seeds = len({r["config"]["seed"] for r in runs if not is_static(r)})
    fig.suptitle(f"E2: calibration of KalmanAdam's gradient intervals ({out.profile} profile)\n{seeds} training "
                 "seed(s); bars: range over checkpoints and seeds; open markers, dotted: parameters frozen (lr 0)")
    out.save(fig, "e2_calibration")


def table_calibration(runs: list[dict], out: FigureOutput) -> None:
    rows = []
    for task in tasks_of(runs):
        for static in (False, True):
            for mode in MODES:
                for level in LEVELS:
                    inside, total, coverages = calibration_counts(runs, task, mode, level, static)
                    if not total:
                        continue
                    e = binomial_ci(inside, total)
                    dead_inside, dead = dead_counts(runs, task, mode, level, static)
                    per_seed = list(coverage_by_seed(runs, task, mode, level, static).values())
                    rows.append([TASK_LABELS[task], "static (lr 0)" if static else "training", MODE_LABELS[mode],
                                 f"{level:.2f}", f"{e.mean:.3f}", f"[{e.low:.3f}, {e.high:.3f}]",
                                 f"{min(coverages):.3f} - {max(coverages):.3f}",
                                 f"{min(per_seed):.3f} - {max(per_seed):.3f}" if len(per_seed) > 1 else "-",
                                 f"{total // len(coverages):,}",
                                 f"{dead / (dead + total):.3f}", f"{(inside + dead_inside) / (total + dead):.3f}",
                                 f"{len(coverages)}"])
    if not rows:
        return
    out.table("e2_calibration", ["task", "parameters", "mode", "nominal", "observed", "Wilson 95% CI", "range",
                                 "seed range", "live coords", "dead share", "with dead", "checkpoints × seeds"], rows,
              caption=f"E2 calibration ({out.profile} profile): share of live coordinates (full-batch gradient not "
                      "exactly 0) whose full-batch training gradient (at the parameters of the last filtered "
                      "mini-batch) lies in KalmanAdam's confidence_interval, pooled over checkpoints and seeds. "
                      "Dead share: coordinates of dead units (full-batch gradient exactly 0, filtered mean still "
                      "decaying from earlier gradients); with dead: the coverage if they are counted too (an "
                      "interval about a mean near 0 covers an exact 0 at every level). The Wilson interval treats "
                      "coordinates as independent, which they are not (shared mini-batches and parameters), so it "
                      "understates the uncertainty; the range over checkpoints and seeds is the more honest spread, "
                      "and the seed range (each seed's pooled coverage, lowest to highest) the spread a rerun would "
                      "show. Static: the same "
                      "runs with lr = 0, where the gradient is i.i.d. noise around a constant.",
              align="lllrrrrrrrrr")


def table_calibration_by_layer(runs: list[dict], out: FigureOutput, levels: Sequence[float] = (0.5, 0.9, 0.95)) -> None:
    """Coverage of the calibrated modes per layer type (training runs, pooled over checkpoints and seeds)."""
    rows = []
    for task in tasks_of(runs):
        for mode in CALIBRATED_MODES:
            checkpoints = [c for run in select(runs, task, mode) for c in run["metrics"]["calibration"]]
            for kind in sorted({k for c in checkpoints for k in c["totals"]}):
                total = sum(c["totals"].get(kind, 0) for c in checkpoints)
                if total:
                    rows.append([TASK_LABELS[task], MODE_LABELS[mode], kind, f"{total // len(checkpoints):,}",
                                 *[f"{sum(c['inside'][str(level)].get(kind, 0) for c in checkpoints) / total:.3f}"
                                   for level in levels]])
    if rows:
        out.table("e2_calibration_layers", ["task", "mode", "layer type", "coords", *[f"{level:.2f}" for level in levels]],
                  rows, caption=f"E2 calibration per layer type ({out.profile} profile): coverage of the full-batch "
                                "gradient by the calibrated modes' intervals at each nominal level, training runs.",
                  align="lllrrrr")


def table_process_noise(runs: list[dict], out: FigureOutput) -> None:
    rows = []
    for task in tasks_of(runs):
        for step, by_lag in level_change_ratios(runs, task).items():
            lags = sorted(by_lag)
            growth = by_lag[lags[-1]] / (lags[-1] * by_lag[lags[0]] / lags[0]) if len(lags) > 1 and by_lag[lags[0]] > 0 else math.nan
            rows.append([TASK_LABELS[task], f"{step}"] + [format_cell(by_lag[lag], 3) for lag in lags] + [format_cell(growth, 2)])
    if not rows:
        return
    lags = sorted(next(iter(level_change_ratios(runs, tasks_of(runs)[0]).values()), {}))
    if not lags:
        return
    lam = beta_to_noise_ratio(ADAM_BETA1)
    out.table("e2_process_noise", ["task", "step"] + [f"Δ over {lag} step{'s' if lag > 1 else ''}" for lag in lags]
              + ["growth vs random walk"], rows,
              caption=f"E2 process noise measured directly ({out.profile} profile), AdamW runs, mean over seeds: "
                      "Δ over l steps = sum_i (G_i(θ_c-1) - G_i(θ_c-1-l))^2 / sum_i (g_i,c - G_i(θ_c-1))^2, the change "
                      "of the full-batch gradient over l steps relative to one mini-batch's squared sampling error "
                      f"(all coordinates pooled). A random walk gives l λ; Adam's β1 = 0.9 assumes λ = {lam:.4f}. "
                      "Growth: Δ(l_max) / (l_max/l_min Δ(l_min)), 1 for a random walk, below 1 for a mean-reverting "
                      "or oscillating level.")
