r"""E0: the seed's notebook redone -- fast.ai's EWMA demo (course-v3 `09_optimizers`) beside the Kalman filter.

The notebook's series: x = linspace(-4, 4, 200), y = 1 - (x/3)^2 + 0.1 * randn(200), with its first point
replaced by an outlier y_0 = 0.5 (the true value is -7/9), smoothed by debiased EWMAs ("mom3":
avg_i / (1 - beta^(i+1)), i.e. Adam's gain (1 - beta)/(1 - beta^t)) at beta = 0.5, 0.7, 0.9, 0.99.

Beside each EWMA: the Kalman filter of the local-level model whose steady state is that EWMA (D1), noise ratio
lambda = (1 - beta)^2 / beta, run with the known observation noise r = 0.1^2 and q = lambda r from a diffuse
prior: gain k_t = `constant_noise_gain(beta, t)`, posterior variance P_t = k_t r, and the band m_t +- 2 sqrt(P_t).
The band is what the EWMA cannot give: where the true curve leaves it, the model's assumption (a random walk
with that small q) does not fit the trend, which is exactly the EWMA's lag. Also the adaptive filter (D4):
q and r estimated online from the differences y_t - y_{t-1} by the library's `adaptive_noise_estimates`
(optimizer defaults: noise_beta 0.99, beta range [0.5, 0.999], prior beta 0.9), band +- 2 sqrt(k_t r_hat_t).

Metrics (per seed; the noise is redrawn per seed): MSE against the true curve, in units of r, over t = 1..199
(at t = 0 every method returns y_0, from its diffuse prior), and the fraction of t = 1..199 at which the true
curve is inside the +-2 sigma band.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from experiments.local_level import adam_gains, adaptive_filter, constant_gains, gain_filter, single_threaded_on_cpu
from experiments.plotting import COLORS, FigureOutput
from experiments.runner import RunSpec
from experiments.stats import mean_ci
from kalman_optim import beta_to_noise_ratio
from kalman_optim.functional import AdaptiveNoiseConfig

NAME = "e0_ewma_demo"
TITLE = "fast.ai's EWMA demo redone: EWMAs at beta 0.5/0.7/0.9/0.99 beside the Kalman filter and its ±2σ band"

COMMON: dict[str, Any] = dict(
    points=200, x_range=[-4.0, 4.0], noise=0.1, first_value=0.5,  # the notebook's series and its outlier
    betas=[0.5, 0.7, 0.9, 0.99], band_sigmas=2.0,
    adaptive=dict(noise_beta=0.99, beta_range=[0.5, 0.999], prior_beta=0.9),
)
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(COMMON, seeds=[0, 1, 2]),
    "full": dict(COMMON, seeds=list(range(20))),
}

# Number keys spell beta out (macro names are letters only).
BETA_WORDS = {0.5: "PointFive", 0.7: "PointSeven", 0.9: "PointNine", 0.99: "PointNineNine"}


def true_curve(x: torch.Tensor) -> torch.Tensor:
    """The notebook's trend: f(x) = 1 - (x/3)^2."""
    return 1 - (x / 3) ** 2


def notebook_series(config: dict, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(f, y), float64 (points,): y = f(x) + noise * randn, x = linspace(x_range), y_0 = first_value if set."""
    x = torch.linspace(*config["x_range"], int(config["points"]), dtype=torch.float64)
    f = true_curve(x)
    y = f + float(config["noise"]) * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    if config.get("first_value") is not None:
        y[0] = float(config["first_value"])
    return f, y


def band_coverage(truth: torch.Tensor, means: torch.Tensor, variances: torch.Tensor, sigmas: float) -> float:
    """Fraction of t >= 1 with |f_t - m_t| <= sigmas * sqrt(P_t)."""
    inside = (truth - means).abs()[1:] <= sigmas * variances.clamp_min(0).sqrt()[1:]
    return float(inside.double().mean())


def mse_in_r(truth: torch.Tensor, means: torch.Tensor, r: float) -> float:
    """mean over t >= 1 of (m_t - f_t)^2 / r."""
    return float((means - truth)[1:].square().mean()) / r


def plan(settings: dict, seeds: list[int], done: dict[str, dict]) -> list[RunSpec]:
    """One run per seed (a fresh draw of the notebook's noise)."""
    base = {k: v for k, v in settings.items() if k != "seeds"}
    return [RunSpec(f"seed{seed}", dict(base, seed=int(seed))) for seed in seeds]


def execute(config: dict, device: torch.device) -> dict:
    # 200 points: the CPU is faster than any accelerator for this, whatever `device` is.
    with single_threaded_on_cpu(torch.device("cpu")):
        return _execute(config)


def _execute(config: dict) -> dict:
    generator = torch.Generator().manual_seed(int(config["seed"]))
    f, y = notebook_series(config, generator)
    r = float(config["noise"]) ** 2
    steps, sigmas = y.numel(), float(config["band_sigmas"])
    g = y.unsqueeze(1)
    per_beta: dict[str, dict[str, float]] = {}
    curves: dict[str, list[float]] = dict(y=y.tolist(), truth=f.tolist())
    for beta in config["betas"]:
        ewma = gain_filter(g, adam_gains(float(beta), steps).reshape(-1))[:, 0]
        gains = constant_gains(float(beta), steps)
        kalman, variance = gain_filter(g, gains)[:, 0], gains * r
        per_beta[f"{beta:g}"] = dict(
            noise_ratio=float(beta_to_noise_ratio(float(beta))), ewma_mse=mse_in_r(f, ewma, r),
            kalman_mse=mse_in_r(f, kalman, r), kalman_coverage=band_coverage(f, kalman, variance, sigmas),
        )
        curves[f"ewma_{beta:g}"] = ewma.tolist()
        curves[f"kalman_{beta:g}"] = kalman.tolist()
        curves[f"kalman_sd_{beta:g}"] = variance.sqrt().tolist()
    settings = config["adaptive"]
    adaptive_config = AdaptiveNoiseConfig(noise_beta=float(settings["noise_beta"]),
                                          beta_min=float(settings["beta_range"][0]),
                                          beta_max=float(settings["beta_range"][1]),
                                          prior_beta=float(settings["prior_beta"]))
    means, gains, r_hats = (a[:, 0] for a in adaptive_filter(g, adaptive_config))
    variance = gains * r_hats
    curves.update(adaptive=means.tolist(), adaptive_sd=variance.clamp_min(0).sqrt().tolist())
    metrics = dict(
        per_beta=per_beta, adaptive_mse=mse_in_r(f, means, r),
        adaptive_coverage=band_coverage(f, means, variance, sigmas),
        # The adaptive filter's own view of the noise at the end: r_hat / r and its effective beta.
        adaptive_final_r_ratio=float(r_hats[-1]) / r, adaptive_final_beta=float(1 - gains[-1]),
        adaptive_median_beta=float((1 - gains[2:]).median()),
    )
    return dict(metrics=metrics, curves=curves)


# ------------------------------------------------------------------------------------------ summaries
def summary(runs: list[dict]) -> dict[str, Any]:
    """Mean +- t-interval over seeds: per beta (EWMA MSE, Kalman MSE, Kalman coverage) and the adaptive filter."""
    betas = [f"{b:g}" for b in runs[0]["config"]["betas"]]
    out: dict[str, Any] = {}
    for b in betas:
        out[b] = {k: mean_ci([r["metrics"]["per_beta"][b][k] for r in runs])
                  for k in ("ewma_mse", "kalman_mse", "kalman_coverage")}
    out["adaptive"] = {k: mean_ci([r["metrics"][f"adaptive_{k}"] for r in runs])
                       for k in ("mse", "coverage", "median_beta")}
    return out


def figures(runs: list[dict], out: FigureOutput) -> None:
    if not runs:
        return
    runs = sorted(runs, key=lambda r: r["config"]["seed"])
    shown = runs[0]
    config, curves = shown["config"], shown["curves"]
    t = np.arange(len(curves["y"]))
    sigmas = float(config["band_sigmas"])
    fig, axes = plt.subplots(2, 2, figsize=(7.6, 5.8), sharex=True, sharey=True)
    for ax, beta in zip(axes.flat, config["betas"]):
        key = f"{beta:g}"
        mean, sd = np.array(curves[f"kalman_{key}"]), np.array(curves[f"kalman_sd_{key}"])
        ax.fill_between(t, mean - sigmas * sd, mean + sigmas * sd, color="#d9d9d9", linewidth=0,
                        label=f"Kalman ±{sigmas:g}σ band")
        ax.plot(t, curves["y"], linestyle="none", marker=".", markersize=2.5, color="#888888", label="noisy y")
        ax.plot(t, curves["truth"], color="black", linewidth=1.0, linestyle="-", label="true curve")
        ax.plot(t, curves[f"ewma_{key}"], color=COLORS[2], linewidth=1.3, linestyle="--", label="debiased EWMA")
        ax.plot(t, mean, color=COLORS[1], linewidth=1.0, linestyle="-.", label="Kalman, λ(β)")
        ax.plot(t, curves["adaptive"], color=COLORS[3], linewidth=1.4, linestyle=":", label="adaptive Kalman (D4)")
        lam = beta_to_noise_ratio(float(beta))
        m = shown["metrics"]["per_beta"][key]
        ax.set_title(f"β = {beta:g} (λ = {lam:.3g}): band covers f at {100 * m['kalman_coverage']:.0f}% of steps")
        ax.set_ylim(-1.2, 1.4)
    for ax in axes[1]:
        ax.set_xlabel("step t (index of x)")
    for ax in axes[:, 0]:
        ax.set_ylabel("y (units of the series)")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=6)
    fig.suptitle(f"E0: fast.ai's EWMA demo, f = 1 − (x/3)², y = f + {config['noise']:g}ε, y₀ = {config['first_value']} "
                 f"(outlier)\nKalman filter at λ = (1−β)²/β, r = {config['noise']:g}² known; noise draw {config['seed']} of {len(runs)} ({out.profile} profile)")
    out.save(fig, "e0_ewma_demo")

    stats = summary(runs)
    rows = []
    for beta in config["betas"]:
        key = f"{beta:g}"
        s = stats[key]
        rows.append([f"{beta:g}", f"{beta_to_noise_ratio(float(beta)):.3g}", s["ewma_mse"].format(3),
                     s["kalman_mse"].format(3), f"{100 * s['kalman_coverage'].mean:.0f}"])
    a = stats["adaptive"]
    rows.append([f"adaptive (median {a['median_beta'].mean:.2f})", "estimated", "-", a["mse"].format(3),
                 f"{100 * a['coverage'].mean:.0f}"])
    out.table("e0_ewma_demo", ["β", "λ", "EWMA MSE (r)", "Kalman MSE (r)", f"±{sigmas:g}σ coverage (%)"], rows,
              caption=f"E0 ({out.profile} profile): fast.ai's EWMA demo over {len(runs)} noise draws; MSE against "
                      f"the true curve in units of r = {config['noise']:g}², over t = 1..{len(t) - 1}, mean ± 95% "
                      "t-interval half-width; coverage: share of steps where the true curve is inside the filter's "
                      "band (mean over draws). Adaptive: q, r estimated online (D4); its median effective β.")


def numbers(runs: list[dict]) -> dict[str, float | int | str]:
    """Per beta: EWMA and Kalman MSE (units of r) and band coverage; the adaptive filter's MSE and coverage;
    the beta whose EWMA is best on this trend, and the noise ratio at which beta would be optimal."""
    if not runs:
        return {}
    stats = summary(runs)
    config = runs[0]["config"]
    out: dict[str, float | int | str] = dict(Seeds=len(runs), Points=int(config["points"]))
    for beta in config["betas"]:
        word, s = BETA_WORDS.get(float(beta), f"{beta:g}"), stats[f"{beta:g}"]
        out[f"EwmaMse{word}"] = s["ewma_mse"].mean
        out[f"KalmanMse{word}"] = s["kalman_mse"].mean
        out[f"Coverage{word}"] = s["kalman_coverage"].mean
    out["AdaptiveMse"] = stats["adaptive"]["mse"].mean
    out["AdaptiveCoverage"] = stats["adaptive"]["coverage"].mean
    out["AdaptiveMedianBeta"] = stats["adaptive"]["median_beta"].mean
    best = min(config["betas"], key=lambda b: stats[f"{b:g}"]["ewma_mse"].mean)
    out["BestBeta"] = float(best)
    out["BestBetaNoiseRatio"] = float(beta_to_noise_ratio(float(best)))
    return out
