"""E2's figures and table of the gradient noise itself: the per-coordinate optimal beta by layer type and
training phase, the whiteness of the filter innovations per model, and the table of noise estimates."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from experiments.e2_design import PHASES, TASK_LABELS, TYPE_ORDER, WHITENESS_LABELS, WHITENESS_MODELS
from experiments.e2_noise_statistics import SIGNIFICANCE
from experiments.e2_results import (format_cell, is_static, mean_of, pooled_quantiles, tasks_of, window_runs,
                                    window_summaries)
from experiments.plotting import FigureOutput, style
from kalman_optim import noise_ratio_to_beta


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.0f}"


def _phases(summaries: dict[tuple[str, str], list[dict]]) -> list[str]:
    return [p for p in PHASES if any(phase == p for phase, _ in summaries)]


def _types(summaries: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Layer types present, "all" first, then the model's order (result files store them sorted by name)."""
    kinds = set(kind for _, kind in summaries)
    return [k for k in TYPE_ORDER if k in kinds] + sorted(kinds - set(TYPE_ORDER))


# (quantile key, boundary-share key, column title, what the boundary share means)
ESTIMATORS = (("beta_quantiles", "q_clipped", "D4 moments (as the adaptive optimizer)", "% with q̂ = 0 (β = 1)"),
              ("beta_mle_quantiles", "mle_at_zero", "maximum likelihood", "% with λ̂ = 0 (β = 1)"))


def figure_beta_distribution(runs: list[dict], out: FigureOutput) -> None:
    """Box plots of the per-coordinate optimal beta by layer type (x) and training phase (box shade), one
    column per estimator; the small numbers are the share of coordinates at beta = 1."""
    tasks = [t for t in tasks_of(runs) if window_runs(runs, t)]
    if not tasks:
        return
    fig, axes = plt.subplots(len(tasks), len(ESTIMATORS), figsize=(11, 3.3 * len(tasks)), squeeze=False)
    shades = ("white", "#bbbbbb", "#555555")
    for row, task in enumerate(tasks):
        summaries = window_summaries(runs, task)
        phases, types = _phases(summaries), _types(summaries)
        width = 0.8 / len(phases)
        window = window_runs(runs, task)[0]["config"]["window_length"]
        for ax, (key, boundary_key, title, boundary) in zip(axes[row], ESTIMATORS):
            for j, phase in enumerate(phases):
                stats, positions = [], []
                for i, kind in enumerate(types):
                    group = summaries.get((phase, kind))
                    if not group or all(s[key][2] is None for s in group):
                        continue
                    q05, q25, q50, q75, q95 = pooled_quantiles(group, key)
                    stats.append(dict(whislo=q05, q1=q25, med=q50, q3=q75, whishi=q95, label=kind))
                    positions.append(i - 0.4 + width * (j + 0.5))
                    share = mean_of([s[boundary_key] for s in group], math.nan)
                    ax.annotate(_percent(share), (positions[-1], -0.05), ha="center", va="bottom", fontsize=5.5)
                if stats:
                    ax.bxp(stats, positions=positions, widths=width * 0.85, showfliers=False, patch_artist=True,
                           boxprops=dict(facecolor=shades[j % len(shades)]), medianprops=dict(color="#D55E00"))
            ax.set_xticks(range(len(types)), types, rotation=25, ha="right", fontsize=7)
            ax.set_xlim(-0.5, len(types) - 0.5)
            ax.set_ylim(-0.06, 1.02)
            ax.set_ylabel("optimal EWMA β (per coordinate)")
            ax.set_title(f"{TASK_LABELS[task]}, {title}\n{window}-step windows; small numbers: {boundary}", fontsize=8)
    handles = [Patch(facecolor=shades[j], edgecolor="black", label=p) for j, p in enumerate(PHASES)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(PHASES), title="training phase (window)")
    seeds = len({r["config"]["seed"] for r in runs if not is_static(r)})
    fig.suptitle(f"E2: per-coordinate optimal β = β(λ̂) during AdamW training, {seeds} seed(s); box 25-75%, "
                 f"whiskers 5-95%, orange line median ({out.profile} profile)")
    out.save(fig, "e2_beta_distribution")


def _whiteness_groups(runs: list[dict], task: str) -> list[tuple[str, list[dict]]]:
    """(label, summaries of "all" coordinates): each training phase, then the static control (all windows)."""
    training_summaries = window_summaries(runs, task)
    groups = [(phase, training_summaries[(phase, "all")]) for phase in _phases(training_summaries)]
    static = [s for (_, kind), group in window_summaries(runs, task, static=True).items() if kind == "all" for s in group]
    if static:
        groups.append(("static (lr 0)", static))
    return groups


def figure_whiteness(runs: list[dict], out: FigureOutput) -> None:
    """Top: share of coordinates whose filter innovations fail the Ljung-Box test, per model and phase.
    Bottom: median autocorrelation of the gradient sequence g_t (window mean removed) by lag."""
    tasks = [t for t in tasks_of(runs) if window_runs(runs, t) or window_runs(runs, t, static=True)]
    if not tasks:
        return
    fig, axes = plt.subplots(2, len(tasks), figsize=(3.6 * len(tasks) + 1.6, 5.6), squeeze=False)
    for column, task in enumerate(tasks):
        top, bottom = axes[0, column], axes[1, column]
        groups = _whiteness_groups(runs, task)
        width = 0.8 / len(WHITENESS_MODELS)
        for j, model in enumerate(WHITENESS_MODELS):
            values = [mean_of([s["whiteness_rejected"][model] for s in group], math.nan) for _, group in groups]
            top.bar(np.arange(len(groups)) - 0.4 + width * (j + 0.5), values, width * 0.9, color=style(j)["color"],
                    hatch=("", "//", "..")[j % 3], edgecolor="black", label=WHITENESS_LABELS[model])
        top.axhline(SIGNIFICANCE, color="black", linestyle="--", linewidth=0.8, label="5% (model fits)")
        top.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=7)
        top.set_ylim(0, 1)
        top.set_xlabel("window (training phase)")
        top.set_title(TASK_LABELS[task])
        for i, (label, group) in enumerate(groups):
            acf = np.mean([[np.nan if v is None else v for v in s["acf_median"]] for s in group if s.get("acf_median")],
                          axis=0)
            lags = np.arange(1, len(acf) + 1)
            bottom.plot(lags, acf, **style(i), label=label)
        bottom.axhline(0, color="#777777", linewidth=0.8)
        bottom.set_xlabel("lag (steps)")
        bottom.set_ylim(-0.6, 0.6)
    axes[0, 0].set_ylabel("share of coordinates rejecting\nwhiteness (Ljung-Box, 5%)")
    axes[1, 0].set_ylabel("median autocorrelation of g_t")
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, title="filter model")
    axes[1, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, title="window")
    lags = next(r for r in runs if r["metrics"].get("windows"))["config"]["lags"]
    fig.suptitle(f"E2: are the filter innovations white? Ljung-Box, lags 1..{lags} ({out.profile} profile)")
    out.save(fig, "e2_whiteness")


def _median_iqr(quantile_values: list[float], digits: int = 3) -> str:
    """'median [q25, q75]' from pooled QUANTILES (0.05, 0.25, 0.5, 0.75, 0.95)."""
    return f"{format_cell(quantile_values[2], digits)} [{format_cell(quantile_values[1], digits)}, {format_cell(quantile_values[3], digits)}]"


def table_noise(runs: list[dict], out: FigureOutput) -> None:
    rows = []
    for task in tasks_of(runs):
        summaries = window_summaries(runs, task)
        for kind in _types(summaries):
            for phase in _phases(summaries):
                group = summaries.get((phase, kind))
                if not group:
                    continue
                pooled = mean_of([s["pooled_noise_ratio"] for s in group], math.nan)
                pooled_beta = noise_ratio_to_beta(pooled) if math.isfinite(pooled) and pooled >= 0 else math.nan
                rows.append([TASK_LABELS[task], kind, phase, f"{sum(s['n'] for s in group) // len(group)}",
                             _median_iqr(pooled_quantiles(group, "beta_quantiles")),
                             _median_iqr(pooled_quantiles(group, "noise_ratio_quantiles"), 2),
                             _percent(mean_of([s["q_clipped"] for s in group], math.nan)),
                             _median_iqr(pooled_quantiles(group, "beta_mle_quantiles")),
                             _median_iqr(pooled_quantiles(group, "noise_ratio_mle_quantiles"), 2),
                             _percent(mean_of([s["mle_at_zero"] for s in group], math.nan)),
                             f"{format_cell(pooled, 2)} ({format_cell(pooled_beta)})",
                             " / ".join(_percent(mean_of([s["whiteness_rejected"][m] for s in group], math.nan))
                                        for m in ("fitted", "moment", "iid", "adam"))])
    if not rows:
        return
    window = next(r for r in runs if r["metrics"].get("windows"))["config"]["window_length"]
    out.table("e2_noise", ["task", "layer type", "phase", "coords", "β D4 median [IQR]", "λ D4 median [IQR]",
                           "q̂ = 0 (%)", "β ML median [IQR]", "λ ML median [IQR]", "λ ML = 0 (%)", "pooled λ (β)",
                           "LB reject ML / D4 / iid / 0.9 (%)"], rows,
              caption=f"E2 gradient noise ({out.profile} profile): per-coordinate estimates from {window}-step windows "
                      "of AdamW training, quantiles averaged over seeds. D4: moments of d_t = g_t - g_{t-1} (as in the "
                      "adaptive optimizer), β = noise_ratio_to_beta(λ̂); q̂ = 0: share clipped to β = 1. The D4 λ̂ has "
                      f"standard error ≈ sqrt(8/{window - 1}) = {math.sqrt(8 / (window - 1)):.2f} near λ = 0, so much of "
                      "its spread is estimation noise. ML: maximum-likelihood λ on a quarter-decade grid (0 and "
                      "1e-4..1e2). Pooled λ: sum of q_raw / c0 over sum of r_raw / c0 (unclipped D4, coordinates "
                      "weighted equally) and its β. LB: % of coordinates whose filter innovations reject whiteness "
                      "(Ljung-Box, 5%) with the ML λ̂, the D4 λ̂, λ = 0 (i.i.d. around a constant) and β = 0.9.",
              align="lllrrrrrrrrr")
