r"""E1: the derivations against data, on simulated local-level series with a known noise ratio.

Model (D1): x_t = x_{t-1} + w_t, w ~ N(0, q); g_t = x_t + v_t, v ~ N(0, r); r = 1, q = lambda, x_0 = 0.
Many independent series per noise ratio, simulated at once (time along dim 0, series along dim 1); the
only Python loop is over time steps. Each run is one (lambda, seed); every lambda of a seed reuses the
same standard-normal draws (common random numbers), so differences between lambdas are not noise.

Measured, all after a burn-in of `burn_in` steps (so every filter is at its steady state):

1. the best EWMA coefficient: the MSE against the true x_t of Adam-style (debiased) EWMAs on a fine
   log-spaced grid of gains K = 1 - beta, refined by a parabola through the three grid points around the
   minimum (in log K), against the derived beta(lambda) = `noise_ratio_to_beta(lambda)`;
2. MSE of the best EWMA, of the Kalman filter with the true ratio (gain `constant_noise_gain(beta(lambda), t)`
   from a diffuse prior, steady-state MSE (1 - beta) r), of the adaptive filter (D4: q and r estimated
   online from the differences d_t = g_t - g_{t-1}; the library's `adaptive_noise_estimates`, one noise
   window per entry of `adaptive_noise_betas`) and of Adam's debiased EWMA at beta = 0.9;
3. calibration: coverage of the central intervals m_t +- z sqrt(P_t) of x_t, P_t = k_t r for the true-ratio
   filter (r known) and P_t = k_t r_hat_t for the adaptive filter (both estimated). At the last step the
   series are independent, so the coverage there gets a Wilson interval; the coverage pooled over all
   steps after the burn-in is also reported (more samples, but serially correlated, so no binomial CI).

Also the transient from the diffuse prior: MSE_t for the constant-noise gain (the optimal filter here),
for Adam's gain (1 - beta)/(1 - beta^t) at the same beta (D2: the Kalman gain of a time-varying q_t), and
the filter's own prediction k_t r.
"""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from experiments.local_level import (adam_gains, adaptive_filter, constant_gains, coverage_counts, ewma_grid_mse,
                                     gain_filter, gain_grid, refine_minimum, simulate_local_level,
                                     single_threaded_on_cpu, steady_mse, transient_indices)
from experiments.plotting import FigureOutput, style
from experiments.runner import RunSpec
from experiments.stats import Estimate, binomial_ci, mean_ci
from kalman_optim import noise_ratio_to_beta
from kalman_optim.functional import AdaptiveNoiseConfig

# Re-exported though unused here: every helper that moved to local_level stays part of E1's interface.
from experiments.local_level import step_numbers  # noqa: F401

NAME = "e1_synthetic"
TITLE = "Simulated local-level series: best EWMA beta vs the derived beta(lambda), MSE of the filters, coverage"

FULL_NOISE_RATIOS = [float(f"{10 ** (k / 2):.6g}") for k in range(-8, 1)]  # logspace(-4, 0, 9)
SMOKE_NOISE_RATIOS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]

COMMON: dict[str, Any] = dict(
    observation_noise=1.0,
    gain_grid=dict(low=1e-3, high=0.99),  # K = 1 - beta, log-spaced; K* ranges over [0.00995, 0.618]
    adaptive_noise_betas=[0.99, 0.999],  # the library default window (100 steps) and a 10x longer one
    beta_range=[0.5, 0.999],  # the optimizers' default clipping range of the adaptive beta
    prior_beta=0.9,  # the adaptive filter's beta before its statistics carry information (= Adam's beta1)
    adam_beta=0.9,
    levels=[0.5, 0.9, 0.95],
    transient_points=80,
)

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(COMMON, noise_ratios=SMOKE_NOISE_RATIOS, series=1000, steps=2000, burn_in=500, grid_size=241,
                  seeds=[0]),
    "full": dict(COMMON, noise_ratios=FULL_NOISE_RATIOS, series=2000, steps=2000, burn_in=500, grid_size=401,
                 seeds=[0, 1, 2]),
}

RUN_KEYS = ("observation_noise", "gain_grid", "adaptive_noise_betas", "beta_range", "prior_beta", "adam_beta",
            "levels", "transient_points", "series", "steps", "burn_in", "grid_size")


# ------------------------------------------------------------------------------------------ plan / execute
def plan(settings: dict, seeds: list[int], done: dict[str, dict]) -> list[RunSpec]:
    """One run per (noise ratio, seed)."""
    base = {k: settings[k] for k in RUN_KEYS}
    return [RunSpec(f"lambda={lam:g}_seed{seed}", dict(base, noise_ratio=float(lam), seed=int(seed)))
            for lam in settings["noise_ratios"] for seed in seeds]


def adaptive_key(noise_beta: float) -> str:
    return f"adaptive_{noise_beta:g}"


def execute(config: dict, device: torch.device) -> dict:
    with single_threaded_on_cpu(device):
        return _execute(config, device)


def _execute(config: dict, device: torch.device) -> dict:
    r, lam = float(config["observation_noise"]), float(config["noise_ratio"])
    steps, series, burn_in = int(config["steps"]), int(config["series"]), int(config["burn_in"])
    generator = torch.Generator(device=device).manual_seed(int(config["seed"]))
    x, g = simulate_local_level(steps, series, lam * r, r, generator, device)

    # (1) the best EWMA on a fine grid of K = 1 - beta, refined between grid points.
    grid = gain_grid(config["gain_grid"]["low"], config["gain_grid"]["high"], int(config["grid_size"]))
    grid_mse = ewma_grid_mse(x, g, 1 - grid, burn_in).cpu().numpy()
    log_best, at_edge = refine_minimum(np.log(grid.numpy()), grid_mse)
    best_beta = 1 - math.exp(log_best)
    derived_beta = float(noise_ratio_to_beta(lam))

    # (2) the filters, each from a diffuse prior (k_1 = 1).
    true_gains = constant_gains(derived_beta, steps)
    filters: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}  # name -> (means, posterior variances)
    filters["true"] = (gain_filter(g, true_gains), (true_gains * r).to(device).unsqueeze(1).expand(steps, series))
    filters["adam_beta_star"] = (gain_filter(g, adam_gains(derived_beta, steps).reshape(-1)), None)
    filters["adam"] = (gain_filter(g, adam_gains(float(config["adam_beta"]), steps).reshape(-1)), None)
    adaptive_betas: dict[str, float] = {}
    for noise_beta in config["adaptive_noise_betas"]:
        adaptive = AdaptiveNoiseConfig(noise_beta=float(noise_beta), beta_min=float(config["beta_range"][0]),
                                       beta_max=float(config["beta_range"][1]), prior_beta=float(config["prior_beta"]))
        means, gains, r_hats = adaptive_filter(g, adaptive)
        filters[adaptive_key(noise_beta)] = (means, gains * r_hats)
        # The median effective beta 1 - k_t after the burn-in: what lambda the estimator settled on.
        adaptive_betas[adaptive_key(noise_beta)] = float((1 - gains[burn_in:]).median())

    mse = {name: steady_mse(x, means, burn_in) for name, (means, _) in filters.items()}
    mse["ewma_best"] = float(grid_mse.min())
    mse["theory"] = (1 - derived_beta) * r  # steady-state posterior variance P = K r (D1)
    coverage = {name: {f"{level:g}": coverage_counts(x, means, variances, level, burn_in)
                       for level in config["levels"]}
                for name, (means, variances) in filters.items() if variances is not None}

    index = transient_indices(steps, int(config["transient_points"]))
    transient = {name: (filters[name][0] - x).square().mean(dim=1)[index].cpu().tolist()
                 for name in ("true", "adam_beta_star", adaptive_key(config["adaptive_noise_betas"][0]))}
    metrics = dict(
        noise_ratio=lam, derived_beta=derived_beta, best_beta=best_beta, best_beta_error=best_beta - derived_beta,
        best_gain_relative_error=(1 - best_beta) / (1 - derived_beta) - 1, best_at_grid_edge=at_edge,
        mse=mse, mse_ratio={name: value / mse["true"] for name, value in mse.items()},
        coverage=coverage, adaptive_median_beta=adaptive_betas,
    )
    curves = dict(grid_gain=grid.tolist(), grid_mse=grid_mse.tolist(), transient_step=[i + 1 for i in index],
                  transient_theory=(true_gains[index] * r).tolist(),
                  **{f"transient_mse_{name}": values for name, values in transient.items()})
    return dict(metrics=metrics, curves=curves)


# ------------------------------------------------------------------------------------------ summaries
def by_noise_ratio(runs: list[dict]) -> dict[float, list[dict]]:
    groups: dict[float, list[dict]] = {}
    for run in sorted(runs, key=lambda r: (r["metrics"]["noise_ratio"], r["config"]["seed"])):
        groups.setdefault(float(run["metrics"]["noise_ratio"]), []).append(run)
    return groups


def coverage_estimate(runs: list[dict], name: str, level: float, kind: str = "final") -> Estimate:
    """Pooled coverage of filter `name` at `level` over `runs` with a Wilson interval (kind "final": the
    independent last-step samples; kind "pooled": all steps after the burn-in, whose CI is too narrow)."""
    counts = [r["metrics"]["coverage"][name][f"{level:g}"] for r in runs if name in r["metrics"]["coverage"]]
    return binomial_ci(sum(c[kind] for c in counts), sum(c[f"{kind}_trials"] for c in counts))


def filter_names(runs: list[dict]) -> tuple[list[str], list[str]]:
    """(adaptive filter names, filters with a posterior variance) in the runs."""
    config = runs[0]["config"]
    adaptive = [adaptive_key(b) for b in config["adaptive_noise_betas"]]
    return adaptive, ["true", *adaptive]


FILTER_LABELS = {"true": "Kalman, true λ", "ewma_best": "best EWMA", "adam": "Adam EWMA, β = 0.9"}


def filter_label(name: str, config: dict | None = None) -> str:
    if name.startswith("adaptive_"):
        noise_beta = float(name.split("_", 1)[1])
        return f"adaptive (window {1 / (1 - noise_beta):.0f})"
    if name == "adam" and config is not None:
        return f"Adam EWMA, β = {config['adam_beta']:g}"
    return FILTER_LABELS.get(name, name)


def figures(runs: list[dict], out: FigureOutput) -> None:
    if not runs:
        return
    config = runs[0]["config"]
    groups = by_noise_ratio(runs)
    lams = np.array(sorted(groups))
    seeds = sorted({int(r["config"]["seed"]) for r in runs})
    adaptive, with_variance = filter_names(runs)
    fig, axes = plt.subplots(2, 2, figsize=(7.8, 6.4))

    # (a) best beta vs lambda, with the derived curve; plotted as 1 - beta on a log axis so small K are visible.
    ax = axes[0, 0]
    fine = np.logspace(math.log10(lams.min()) - 0.2, math.log10(lams.max()) + 0.2, 200)
    ax.plot(fine, [1 - noise_ratio_to_beta(float(v)) for v in fine], color="#777777", linestyle="-",
            label="derived $1-\\beta(\\lambda)$")
    best = [mean_ci([1 - r["metrics"]["best_beta"] for r in groups[v]]) for v in lams]
    ax.errorbar(lams, [e.mean for e in best], yerr=_errors(best), capsize=2,
                label="empirical best $1-\\beta$", **{**style(0), "linestyle": "none"})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise ratio $\\lambda = q/r$ (dimensionless)")
    ax.set_ylabel("EWMA gain $1-\\beta$ (dimensionless)")
    ax.set_title("(a) best EWMA vs derived $\\beta(\\lambda)$")
    twin = ax.twinx()
    errors = [np.mean([r["metrics"]["best_beta_error"] for r in groups[v]]) for v in lams]
    twin.plot(lams, errors, **{**style(2), "markersize": 3, "linewidth": 0.8}, label="best − derived β (right)")
    twin.axhline(0, color="#777777", linewidth=0.5)
    twin.set_ylabel("best β − derived β")
    twin.grid(False)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="upper left")

    # (b) MSE ratio to the true-ratio filter.
    ax = axes[0, 1]
    for i, name in enumerate(["ewma_best", *adaptive, "adam"]):
        ratios = [mean_ci([r["metrics"]["mse_ratio"][name] for r in groups[v]]) for v in lams]
        ax.errorbar(lams, [e.mean for e in ratios], yerr=_errors(ratios), capsize=2, label=filter_label(name, config),
                    **style(i + 1))
    ax.axhline(1.0, color="#777777", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("noise ratio $\\lambda = q/r$ (dimensionless)")
    ax.set_ylabel("MSE / MSE of Kalman filter with true λ")
    ax.set_title("(b) steady-state MSE vs the optimal filter")
    ax.legend()

    # (c) calibration: observed vs nominal coverage (last step, all lambdas pooled; Wilson 95% CI).
    ax = axes[1, 0]
    levels = [float(v) for v in config["levels"]]
    ax.plot([0.4, 1.0], [0.4, 1.0], color="#777777", linewidth=0.8, linestyle="--", label="nominal")
    for i, name in enumerate(with_variance):
        est = [coverage_estimate(runs, name, level) for level in levels]
        offset = (i - (len(with_variance) - 1) / 2) * 0.006  # side by side, so the error bars do not overlap
        ax.errorbar(np.array(levels) + offset, [e.mean for e in est], yerr=_errors(est), capsize=2,
                    label=filter_label(name, config), **style(i))
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("observed coverage of $x_t$ (last step)")
    ax.set_title(f"(c) calibration, {len(lams)} λ pooled, Wilson 95% CI")
    ax.legend(loc="upper left")

    # (d) the transient from a diffuse prior at a middle lambda.
    ax = axes[1, 1]
    mid = float(lams[len(lams) // 2])
    mid_runs = groups[mid]
    steps = mid_runs[0]["curves"]["transient_step"]
    ax.plot(steps, mid_runs[0]["curves"]["transient_theory"], color="#777777", linestyle="-",
            label="filter's own $P_t = k_t r$")
    names = ["true", "adam_beta_star", adaptive[0]]
    labels = ["Kalman, constant $q$", "Adam gain at $\\beta(\\lambda)$", filter_label(adaptive[0], config)]
    for i, (name, label) in enumerate(zip(names, labels)):
        curve = np.mean([r["curves"][f"transient_mse_{name}"] for r in mid_runs], axis=0)
        ax.plot(steps, curve, label=label, **{**style(i + 1), "markersize": 2})
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step t")
    ax.set_ylabel("MSE of the estimate of $x_t$ (units of r)")
    ax.set_title(f"(d) transient from a diffuse prior, λ = {mid:.3g}")
    ax.legend()
    fig.suptitle(f"E1, local-level series with known λ: {config['series']} series × {config['steps']} steps, "
                 f"burn-in {config['burn_in']}, {len(seeds)} seed(s) ({out.profile} profile)")
    out.save(fig, "e1_synthetic")

    _tables(runs, out)


def _errors(estimates: list[Estimate]) -> np.ndarray:
    """(2, n) error-bar lengths; 0 where an interval is not finite (a single seed)."""
    rows = []
    for e in estimates:
        finite = math.isfinite(e.low) and math.isfinite(e.high)
        rows.append((e.mean - e.low, e.high - e.mean) if finite else (0.0, 0.0))
    return np.array(rows).T.reshape(2, -1)


def _tables(runs: list[dict], out: FigureOutput) -> None:
    config = runs[0]["config"]
    groups = by_noise_ratio(runs)
    adaptive, with_variance = filter_names(runs)
    levels = [float(v) for v in config["levels"]]
    rows = []
    for name in with_variance:
        for level in levels:
            final = coverage_estimate(runs, name, level, "final")
            pooled = coverage_estimate(runs, name, level, "pooled")
            worst = min((coverage_estimate(groups[v], name, level, "final") for v in groups), key=lambda e: e.mean)
            rows.append([filter_label(name, config), f"{level:.2f}", f"{final.mean:.3f}",
                         f"[{final.low:.3f}, {final.high:.3f}]", f"{pooled.mean:.3f}", f"{worst.mean:.3f}"])
    out.table("e1_calibration", ["filter", "nominal", "observed (last step)", "Wilson 95% CI",
                                 "observed (all steps)", "lowest over λ"], rows,
              caption=f"E1 calibration ({out.profile} profile): coverage of x_t by the central interval "
                      "m_t ± z sqrt(P_t); P_t = k_t r (true λ, r known) or k_t r_hat_t (adaptive, D4). "
                      "Last step: independent series, all λ pooled, Wilson interval; all steps: every step after "
                      "the burn-in (serially correlated, no CI); lowest over λ: the last-step coverage at the "
                      "worst noise ratio.", align="lrrrrr")

    rows = []
    for lam, group in groups.items():
        m = [r["metrics"] for r in group]
        best = mean_ci([x["best_beta"] for x in m])
        cells = [f"{lam:.3g}", f"{m[0]['derived_beta']:.4f}", best.format(4),
                 f"{np.mean([x['best_beta_error'] for x in m]):+.4f}"]
        for name in ("ewma_best", *adaptive, "adam"):
            cells.append(mean_ci([x["mse_ratio"][name] for x in m]).format(3))
        cells.append(f"{coverage_estimate(group, adaptive[0], 0.95).mean:.3f}")
        rows.append(cells)
    header = ["λ", "derived β", "best β", "error", "best EWMA", *[filter_label(a, config) for a in adaptive],
              filter_label("adam", config), f"{filter_label(adaptive[0], config)} cov. 95%"]
    out.table("e1_summary", header, rows,
              caption=f"E1 ({out.profile} profile): best EWMA β (mean ± 95% t-interval over seeds) against the "
                      "derived β(λ), and steady-state MSE as a ratio to the Kalman filter with the true λ.")


def numbers(runs: list[dict]) -> dict[str, float | int | str]:
    """Headline numbers: how close the empirical best beta is to the derived one, the worst MSE ratios to the
    true-ratio filter, and the 95% coverage of both filters (last step, all lambdas pooled)."""
    if not runs:
        return {}
    groups = by_noise_ratio(runs)
    adaptive, _ = filter_names(runs)
    config = runs[0]["config"]
    mean_error = {v: float(np.mean([r["metrics"]["best_beta_error"] for r in g])) for v, g in groups.items()}
    mean_gain_error = {v: float(np.mean([r["metrics"]["best_gain_relative_error"] for r in g])) for v, g in groups.items()}

    def worst_ratio(name: str) -> float:
        return max(float(np.mean([r["metrics"]["mse_ratio"][name] for r in g])) for g in groups.values())

    out: dict[str, float | int | str] = dict(
        NoiseRatios=len(groups), Series=int(config["series"]), Steps=int(config["steps"]),
        BurnIn=int(config["burn_in"]), Seeds=len({int(r["config"]["seed"]) for r in runs}),
        BestBetaMaxAbsError=max(abs(e) for e in mean_error.values()),
        BestGainMaxRelError=max(abs(e) for e in mean_gain_error.values()),
        BestEwmaWorstMseRatio=worst_ratio("ewma_best"),
        AdaptiveWorstMseRatio=worst_ratio(adaptive[0]),
        AdaptiveLongWorstMseRatio=worst_ratio(adaptive[-1]),
        AdamWorstMseRatio=worst_ratio("adam"),
        TrueFilterMseTheoryMaxRelError=max(abs(float(np.mean([r["metrics"]["mse"]["true"] / r["metrics"]["mse"]["theory"]
                                                              for r in g])) - 1) for g in groups.values()),
        TrueCoverageNinetyFive=coverage_estimate(runs, "true", 0.95).mean,
        AdaptiveCoverageNinetyFive=coverage_estimate(runs, adaptive[0], 0.95).mean,
        AdaptiveLongCoverageNinetyFive=coverage_estimate(runs, adaptive[-1], 0.95).mean,
        AdaptiveWorstCoverageNinetyFive=min(coverage_estimate(g, adaptive[0], 0.95).mean for g in groups.values()),
    )
    return out
