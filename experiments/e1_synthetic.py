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

import contextlib
import math
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from experiments.plotting import FigureOutput, style
from experiments.runner import RunSpec
from experiments.stats import Estimate, binomial_ci, mean_ci
from kalman_optim import adam_gain, constant_noise_gain, noise_ratio_to_beta
from kalman_optim.functional import AdaptiveNoiseConfig, adaptive_noise_estimates
from kalman_optim.schedules import normal_quantile

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


# ------------------------------------------------------------------------------------------ filters
def simulate_local_level(steps: int, series: int, process_noise: float, observation_noise: float,
                         generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, g), each (steps, series) float64: x_t = x_{t-1} + sqrt(q) w_t from x_0 = 0, g_t = x_t + sqrt(r) v_t."""
    shape = (steps, series)
    w = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    v = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    x = torch.cumsum(w, dim=0).mul_(math.sqrt(process_noise))
    return x, x + math.sqrt(observation_noise) * v


def step_numbers(steps: int) -> torch.Tensor:
    """t = 1..steps as a float64 column (steps, 1), for the closed forms' broadcasting."""
    return torch.arange(1, steps + 1, dtype=torch.float64).unsqueeze(1)


def adam_gains(betas: torch.Tensor | float, steps: int) -> torch.Tensor:
    """(steps, n) table of Adam's bias-corrected gain k_t = (1 - beta) / (1 - beta^t) (D2), t = 1..steps."""
    b = torch.as_tensor(betas, dtype=torch.float64).reshape(1, -1)
    return adam_gain(b, step_numbers(steps))


def constant_gains(beta: float, steps: int) -> torch.Tensor:
    """(steps,) gains of the constant-noise Kalman filter from a diffuse prior (D1):
    k_t = (1 - beta)(1 + beta^(2t-1)) / (1 - beta^(2t)); k_1 = 1, k_t -> 1 - beta."""
    return constant_noise_gain(torch.tensor([beta], dtype=torch.float64), step_numbers(steps)).reshape(-1)


def gain_filter(g: torch.Tensor, gains: torch.Tensor) -> torch.Tensor:
    """Means m_t = m_{t-1} + k_t (g_t - m_{t-1}), m_0 = 0, for g (steps, series) and gains (steps,) or
    (steps, series). With k_1 = 1 the start value is irrelevant (m_1 = g_1): a diffuse prior."""
    gains = gains.to(g.device)
    if gains.dim() == 1:
        gains = gains.unsqueeze(1)
    means = torch.empty_like(g)
    m = torch.zeros_like(g[0])
    for t in range(g.shape[0]):
        m = m.lerp(g[t], gains[t])
        means[t] = m
    return means


def adaptive_filter(g: torch.Tensor, config: AdaptiveNoiseConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The D4 filter on each series (column): (means, gains k_t, r_hat_t), each (steps, series).

    Exactly the library's per-coordinate update (`_single_tensor_adaptive_update`): at step t, d_t = g_t - g_{t-1}
    updates EWMA(d^2) (t >= 2) and EWMA(d_t d_{t-1}) (t >= 3) with coefficient noise_beta, then
    `adaptive_noise_estimates` gives k_t and r_hat_t, and m_t = m_{t-1} + k_t (g_t - m_{t-1}). The posterior
    variance the filter reports is P_t = k_t r_hat_t."""
    steps = g.shape[0]
    diff_sq_avg, diff_lag_avg = torch.zeros_like(g[0]), torch.zeros_like(g[0])
    prev_diff = torch.zeros_like(g[0])
    m = torch.zeros_like(g[0])
    means, gains, r_hats = torch.empty_like(g), torch.empty_like(g), torch.empty_like(g)
    nb = config.noise_beta
    for t in range(steps):
        step = t + 1
        if step >= 2:
            diff = g[t] - g[t - 1]
            diff_sq_avg.mul_(nb).addcmul_(diff, diff, value=1 - nb)
            if step >= 3:
                diff_lag_avg.mul_(nb).addcmul_(diff, prev_diff, value=1 - nb)
            prev_diff = diff
        gain, r_hat = adaptive_noise_estimates(diff_sq_avg, diff_lag_avg, step, config)
        m = m.lerp(g[t], gain)
        means[t], gains[t], r_hats[t] = m, gain, r_hat
    return means, gains, r_hats


def ewma_grid_mse(x: torch.Tensor, g: torch.Tensor, betas: torch.Tensor, burn_in: int) -> torch.Tensor:
    """MSE over series and steps t > burn_in of Adam's debiased EWMA of g against x, for every beta (n,).

    All EWMAs run at once as an (n, series) state; only the squared-error sums are kept."""
    gains = adam_gains(betas, x.shape[0]).to(x.device).unsqueeze(2)  # (steps, n, 1)
    m = torch.zeros((betas.numel(), x.shape[1]), dtype=x.dtype, device=x.device)
    sse = torch.zeros(betas.numel(), dtype=x.dtype, device=x.device)
    for t in range(x.shape[0]):
        m.lerp_(g[t], gains[t])
        if t >= burn_in:
            sse += (m - x[t]).square_().sum(dim=1)
    return sse / ((x.shape[0] - burn_in) * x.shape[1])


def gain_grid(low: float, high: float, size: int) -> torch.Tensor:
    """Gains K = 1 - beta log-spaced on [low, high] (relative spacing (high/low)^(1/(size-1)))."""
    return torch.logspace(math.log10(low), math.log10(high), size, dtype=torch.float64)


def refine_minimum(log_gains: np.ndarray, mse: np.ndarray) -> tuple[float, bool]:
    """(log K at the minimum of the MSE, whether the grid minimum is at an edge).

    The vertex of the parabola through the grid minimum and its two neighbours (equal spacing h):
    u* = u_i + h (f_{i-1} - f_{i+1}) / (2 (f_{i-1} - 2 f_i + f_{i+1})). At an edge the grid point itself."""
    i = int(np.argmin(mse))
    if i == 0 or i == len(mse) - 1:
        return float(log_gains[i]), True
    h = log_gains[i + 1] - log_gains[i]
    curvature = mse[i - 1] - 2 * mse[i] + mse[i + 1]
    if curvature <= 0:
        return float(log_gains[i]), False
    return float(log_gains[i] + h * (mse[i - 1] - mse[i + 1]) / (2 * curvature)), False


def coverage_counts(x: torch.Tensor, means: torch.Tensor, variances: torch.Tensor, level: float,
                    burn_in: int) -> dict[str, int]:
    """Counts of |x_t - m_t| <= z sqrt(P_t) (z: two-sided normal quantile of `level`): at the last step
    (independent series) and over all steps t > burn_in (pooled)."""
    z = normal_quantile(level)
    inside = (x - means).abs() <= z * variances.clamp_min(0).sqrt()
    return dict(final=int(inside[-1].sum()), final_trials=int(inside.shape[1]),
                pooled=int(inside[burn_in:].sum()), pooled_trials=int(inside[burn_in:].numel()))


def steady_mse(x: torch.Tensor, means: torch.Tensor, burn_in: int) -> float:
    """Mean of (m_t - x_t)^2 over series and steps t > burn_in."""
    return float((means[burn_in:] - x[burn_in:]).square().mean())


def transient_indices(steps: int, points: int) -> list[int]:
    """About `points` log-spaced step indices 0..steps-1 (t = 1..steps), every one of the first few."""
    return sorted({int(i) for i in np.unique(np.round(np.geomspace(1, steps, points))).astype(int) - 1})


# ------------------------------------------------------------------------------------------ plan / execute
def plan(settings: dict, seeds: list[int], done: dict[str, dict]) -> list[RunSpec]:
    """One run per (noise ratio, seed)."""
    base = {k: settings[k] for k in RUN_KEYS}
    return [RunSpec(f"lambda={lam:g}_seed{seed}", dict(base, noise_ratio=float(lam), seed=int(seed)))
            for lam in settings["noise_ratios"] for seed in seeds]


def adaptive_key(noise_beta: float) -> str:
    return f"adaptive_{noise_beta:g}"


@contextlib.contextmanager
def single_threaded_on_cpu(device: torch.device):
    """One intra-op thread on CPU for the block, then the previous setting.

    The filters are loops of small elementwise ops (~10^5 elements): a thread pool's barrier per op gains
    little, and when other processes share the cores it slows the loop down by an order of magnitude."""
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
