r"""E2: what gradient noise looks like in real training, and whether the local-level model describes it.

The library models each gradient coordinate as a local level (D1): x_t = x_{t-1} + w_t, Var w = q;
g_t = x_t + v_t, Var v = r; lambda = q / r; the optimal EWMA coefficient is beta = noise_ratio_to_beta(lambda).
E2 measures, on the Fashion-MNIST CNN and the Shakespeare transformer:

1. Noise estimates. During training with KalmanAdam(noise="adam") -- AdamW step for step, weight decay 0 --
   the mini-batch gradient of a fixed random subset of coordinates (`coords_per_tensor` per parameter tensor,
   all of a smaller tensor) is recorded over windows of W consecutive steps (early / middle / late). Per
   coordinate, from the differences d_t = g_t - g_{t-1} (D4, the moments of the optimizer's adaptive mode,
   uncentred like its EWMAs, so a drift within the window counts as process change):
       c0 = mean(d_t^2) = q + 2r,  c1 = mean(d_t d_{t-1}) = -r,
       r_hat = max(-c1, 0),  q_hat = max(c0 + 2 c1, 0),  lambda_hat = q_hat / r_hat,  beta* = beta(lambda_hat)
   (r_hat = 0 < q_hat gives beta* = 0: pure drift; q_hat = 0 gives beta* = 1: no detectable drift). With
   n = W - 1 differences q_hat has standard error ~ sqrt(8 / n) r at small lambda (D4), so a single coordinate
   resolves lambda only above ~sqrt(8 / n) (0.2 for W = 200). Hence also the maximum-likelihood lambda (exact
   Gaussian likelihood of the filter's innovations, r profiled out, on a quarter-decade grid), the share of
   coordinates at beta = 1, and a pooled ratio per layer type, sum_i (q_raw_i / c0_i) / sum_i (r_raw_i / c0_i)
   (each coordinate weighted equally, unclipped, so the estimation noise averages out). Also the median
   autocorrelation of g_t and of d_t at lags 1..h: under the model d_t is MA(1), rho_1(d) = -1 / (lambda + 2).
2. Model fit. Under the local-level model the innovations of the optimal filter are white. Per coordinate
   the exact filter (diffuse prior, normalized posterior variance k_t = (k_{t-1} + lambda) / (k_{t-1} + lambda + 1),
   converging to the steady-state gain) is run over the window and its standardized innovations
   nu_t / sqrt(k_{t-1} + lambda + 1) get a Ljung-Box test, Q = n (n + 2) sum_{k=1}^{h} rho_k^2 / (n - k),
   h = `lags`. Models: the maximum-likelihood lambda (df = h - 1: one estimated parameter, as for the residuals
   of an ARIMA(0,1,1) fit), i.i.d. noise around a constant (lambda = 0, df = h) and Adam's beta1 = 0.9
   (df = h); the D4 moment lambda is also tested (stored, not plotted: its estimation noise alone makes the
   mismatched filter's innovations fail the test even on data from the model). If a model fits, about 5% of
   coordinates reject whiteness at the 5% level (on simulated local-level data the fitted test gives 5-8%).
3. Calibration of the optimizer's uncertainty. One training run per KalmanAdam mode ("adam", "constant",
   "adaptive"), same lr. At each checkpoint c the optimizer has just filtered g_c, the mini-batch gradient at
   the parameters theta_{c-1}; its state estimates the gradient level there, so the "true" gradient is the
   full-batch training gradient at theta_{c-1} (all training images of the task for Fashion-MNIST; for
   Shakespeare the mean over a fixed pool of windows that tile the training stream, from which the mini-batches
   are drawn, so that the expected mini-batch gradient IS the true gradient -- a mean over tiled windows is not
   the expectation over random offsets, and that mismatch alone made intervals look too narrow at lr = 0).
   Observed coverage of `confidence_interval(p, level)` is the fraction of active coordinates (not both true
   gradient and filtered mean exactly 0) whose true gradient lies inside. Coordinates are not independent
   (they share the mini-batches and the parameters), so the Wilson interval over coordinates is far too
   narrow as a statement about the optimizer; the range over checkpoints and seeds is shown beside it.
   In the AdamW run the process noise is also measured directly: the change of the full-batch gradient over
   l steps, sum_i (G_i(theta_{c-1}) - G_i(theta_{c-1-l}))^2, relative to one mini-batch's squared sampling
   error sum_i (g_i,c - G_i(theta_{c-1}))^2; for a random walk it is l * lambda, growing linearly in l.
4. Static control (lr = 0). The same runs with the parameters frozen: the gradient stream is then exactly
   i.i.d. mini-batch noise around a constant (q = 0), so the whiteness tests should reject ~5% (a check of
   the test on real, non-Gaussian noise) and coverage shows the bias of each mode's r_hat on its own,
   separated from any misfit of the random-walk model.

Runs: one per (task, mode, seed) in training and one per (task, static mode) for the first seed only; the
"adam"-mode runs (AdamW) also record the gradient windows.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Patch
from scipy import stats as scipy_stats
from torch import nn

from experiments import noise_truth, training
from experiments.plotting import FigureOutput, style
from experiments.runner import RunSpec
from experiments.stats import Estimate, binomial_ci
from kalman_optim import beta_to_noise_ratio, noise_ratio_to_beta

NAME = "e2_gradient_noise"
TITLE = "Gradient noise in real training: per-coordinate q, r, optimal beta, whiteness, and interval calibration"

MODES = ("adam", "constant", "adaptive", "innovation", "innovation-fast")
CALIBRATED_MODES = ("innovation", "innovation-fast")  # D7's read-out: the noise ground truth and long runs
LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
ADAM_BETA1 = 0.9
SIGNIFICANCE = 0.05
PHASES = ("early", "middle", "late")
TASK_LABELS = {"fashion_mnist": "Fashion-MNIST CNN", "shakespeare": "Shakespeare transformer"}
MODE_LABELS = {"adam": "adam (= AdamW)", "constant": "constant", "adaptive": "adaptive", "innovation": "innovation (D7)",
               "innovation-fast": "innovation, noise β 0.9"}
WHITENESS_MODELS = ("fitted", "iid", "adam")  # plotted; "moment" (the D4 lambda) is stored as well
WHITENESS_LABELS = {"fitted": "fitted λ (ML)", "iid": "i.i.d. (λ = 0)", "adam": "β = 0.9", "moment": "fitted λ (D4)"}

SMOKE_CONTEXT = 64
PROFILES: dict[str, dict[str, Any]] = {
    # Smoke: the full design at a small scale: a 2000-image / 512-window training set (the "true" gradient is
    # exact over the set the mini-batches are drawn from) and 300 steps with 19 checkpoints spread over the run (coverage at one checkpoint is
    # noisy: all coordinates share the same mini-batches).
    "smoke": dict(
        tasks={
            "fashion_mnist": dict(task_kwargs=dict(train_size=2000, eval_size=500, batch_size=128), lr=1e-3,
                                  full_gradient_examples=None),
            "shakespeare": dict(task_kwargs=dict(batch_size=32, context=SMOKE_CONTEXT, eval_windows=64,
                                                 train_chars=512 * (SMOKE_CONTEXT + 1), window_pool=512),
                                lr=3e-3, full_gradient_examples=None),
        },
        steps=300, eval_every=150, window_length=50, window_starts=[11, 61, 111], checkpoints=list(range(30, 301, 15)),
        coords_per_tensor=128, lags=10, level_lags=[1, 10], static_modes=["adam", "innovation", "innovation-fast"],
        noise_truth_every=3, long_modes=["innovation", "innovation-fast"], long_steps=900,
        long_checkpoints=list(range(60, 901, 40)), seeds=[0, 1, 2]),
    # Full: all 55,000 training images; Shakespeare: a pool of 4096 windows tiling the start of the stream.
    "full": dict(
        tasks={
            "fashion_mnist": dict(task_kwargs=dict(batch_size=128), lr=1e-3, full_gradient_examples=None),
            "shakespeare": dict(task_kwargs=dict(batch_size=32, window_pool=4096), lr=3e-3, full_gradient_examples=None),
        },
        steps=3000, eval_every=500, window_length=200, window_starts=[101, 1401, 2801],
        checkpoints=[250, 1000, 2000, 3000], coords_per_tensor=256, lags=10, level_lags=[1, 10],
        static_modes=["adam", "constant", "adaptive", "innovation"], seeds=[0, 1, 2]),
}


# ------------------------------------------------------------------------------------------ plan
def plan(settings: dict, seeds: list[int], done: dict[str, dict]) -> list[RunSpec]:
    """Training runs per (task, mode, seed); static (lr = 0) runs per (task, static mode) for the first seed.
    The "adam" runs (AdamW) also record the gradient windows; the training one also the level changes."""
    steps, length, starts = int(settings["steps"]), int(settings["window_length"]), list(settings["window_starts"])
    overlapping = any(b < a + length for a, b in zip(starts, starts[1:]))
    if len(starts) > len(PHASES) or overlapping or any(s < 2 or s + length - 1 > steps for s in starts):
        raise ValueError(f"Invalid window_starts {starts}: at most {len(PHASES)} increasing, non-overlapping windows "
                         f"of {length} steps within 2..{steps}")
    if any(not 1 <= c <= steps for c in settings["checkpoints"]):
        raise ValueError(f"Invalid checkpoints {settings['checkpoints']}: expected steps in 1..{steps}")
    specs = []
    for task, task_settings in settings["tasks"].items():
        runs = [(mode, False, seed) for mode in MODES for seed in seeds]
        runs += [(mode, True, seed) for mode in settings.get("static_modes", []) for seed in seeds[:1]]
        for mode, static, seed in runs:
            config = dict(task=task, task_kwargs=dict(task_settings["task_kwargs"]), mode=mode, static=static,
                          lr=0.0 if static else task_settings["lr"],
                          full_gradient_examples=task_settings["full_gradient_examples"],
                          steps=steps, eval_every=int(settings["eval_every"]),
                          checkpoints=list(settings["checkpoints"]), levels=list(LEVELS),
                          record_windows=mode == "adam", window_length=length, window_starts=starts,
                          coords_per_tensor=int(settings["coords_per_tensor"]), lags=int(settings["lags"]),
                          level_lags=[] if static else list(settings["level_lags"]), seed=int(seed))
            if mode in CALIBRATED_MODES and not static and settings.get("noise_truth_every"):
                config["noise_truth_every"] = int(settings["noise_truth_every"])
            if mode in settings.get("long_modes", []) and not static:
                # The calibrated modes also through a longer run (the first steps are all transient).
                config.update(steps=int(settings["long_steps"]), eval_every=int(settings["long_steps"]) // 2,
                              checkpoints=list(settings["long_checkpoints"]))
            specs.append(RunSpec(f"{task}_{mode}{'_static' if static else ''}_seed{seed}", config))
    return specs


# ------------------------------------------------------------------------------------------ layer types
def layer_type(name: str) -> str:
    """Coarse kind of a parameter tensor from its module path (SmallCNN / CharTransformer names)."""
    kind = "bias" if name.endswith("bias") else "weight"
    if "norm" in name:
        return "layernorm"
    if name.startswith("token"):
        return "embedding (tied)"
    if name.startswith("position"):
        return "position"
    if "attn" in name:
        return f"attention {kind}"
    if "linear1" in name or "linear2" in name:
        return f"MLP {kind}"
    if name.startswith("features"):
        return f"conv {kind}"
    if name.startswith("head.3"):
        return f"output {kind}"
    if name.startswith("head"):
        return f"hidden linear {kind}"
    return name


# ------------------------------------------------------------------------------------------ estimators (D4)
def difference_moments(gradients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(c0, c1) per column of `gradients` (time along dim 0): c0 = mean d_t^2, c1 = mean d_t d_{t-1},
    d_t = g_t - g_{t-1}. Under the local-level model E c0 = q + 2r and E c1 = -r (D4)."""
    d = torch.diff(gradients, dim=0)
    return d.square().mean(0), (d[1:] * d[:-1]).mean(0)


def noise_estimates(c0: torch.Tensor, c1: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-coordinate estimates from the difference moments (D4, as in adaptive_noise_estimates):

    q_raw = c0 + 2 c1, r_raw = -c1 (unbiased, can be negative); q_hat = max(q_raw, 0), r_hat = max(r_raw, 0);
    lambda = q_hat / r_hat (inf when r_hat = 0 < q_hat); beta = noise_ratio_to_beta(lambda), 0 for lambda = inf.
    `constant` marks coordinates whose gradient did not change over the window (c0 = 0: dead units), for
    which nothing is identified (lambda, beta are NaN)."""
    q_raw, r_raw = c0 + 2 * c1, -c1
    q_hat, r_hat = q_raw.clamp_min(0), r_raw.clamp_min(0)
    constant = c0 <= 0
    drift_only = (r_hat <= 0) & (q_hat > 0)
    # A ratio beyond 1e12 is drift-dominated either way (beta < 1e-6); the cap keeps it finite for the closed form.
    finite = torch.where(r_hat > 0, q_hat / r_hat.clamp_min(torch.finfo(r_hat.dtype).tiny), torch.zeros_like(q_hat))
    finite = finite.clamp_max(1e12)
    beta = torch.where(drift_only, torch.zeros_like(finite), noise_ratio_to_beta(finite))
    noise_ratio = torch.where(drift_only, torch.full_like(finite, math.inf), finite)
    nan = torch.full_like(finite, math.nan)
    return dict(q_raw=q_raw, r_raw=r_raw, q_hat=q_hat, r_hat=r_hat, noise_ratio=torch.where(constant, nan, noise_ratio),
                beta=torch.where(constant | ((r_hat <= 0) & (q_hat <= 0)), nan, beta), constant=constant)


def standardized_innovations(gradients: torch.Tensor, noise_ratio: torch.Tensor) -> torch.Tensor:
    """Standardized innovations of the local-level Kalman filter with per-column ratio lambda, diffuse prior.

    After g_1 the mean is g_1 and k_1 = P_1 / r = 1; for t >= 2 the innovation nu_t = g_t - m_{t-1} has
    variance S_t r with S_t = k_{t-1} + lambda + 1, the gain is k_t = (k_{t-1} + lambda) / S_t and
    m_t = m_{t-1} + k_t nu_t. Returns nu_t / sqrt(S_t), t = 2..T: white with variance r under the model (the
    unknown r does not matter for autocorrelations). lambda = inf is capped at 1e12 (a noise-free random walk)."""
    lam = noise_ratio.clamp(0, 1e12)
    mean, k = gradients[0].clone(), torch.ones_like(lam)
    out = torch.empty_like(gradients[1:])
    for t in range(1, gradients.shape[0]):
        prior = k + lam
        innovation = gradients[t] - mean
        out[t - 1] = innovation / (prior + 1).sqrt()
        k = prior / (prior + 1)
        mean = mean + k * innovation
    return out


# Candidate ratios of the maximum-likelihood fit: 0 (i.i.d. around a constant) and 10^-4 .. 10^2 in quarter decades.
NOISE_RATIO_GRID = tuple([0.0] + [float(f"{10 ** (k / 4 - 4):.6g}") for k in range(25)])


def profile_log_likelihood(gradients: torch.Tensor, grid: Sequence[float] = NOISE_RATIO_GRID) -> torch.Tensor:
    """Gaussian log-likelihood of each column at each grid ratio, r maximized out: (len(grid), columns).

    The filter of `standardized_innovations` gives the exact (diffuse-prior) likelihood through its
    innovations, nu_t ~ N(0, S_t r), t = 2..T (n = T - 1 terms). Maximizing over r gives
    r_hat = (1/n) sum nu_t^2 / S_t and the profile  l(lambda) = -(n/2) log r_hat - (1/2) sum log S_t  (+ const);
    S_t depends on lambda and t only. All ratios are filtered at once (broadcast over a leading grid axis)."""
    lam = torch.tensor(grid, dtype=gradients.dtype, device=gradients.device)[:, None]
    mean = gradients[0].expand(lam.shape[0], -1).clone()
    k = torch.ones_like(lam)
    weighted_sq = torch.zeros_like(mean)
    log_variance = torch.zeros_like(lam)
    for t in range(1, gradients.shape[0]):
        prior = k + lam
        variance = prior + 1
        innovation = gradients[t] - mean
        weighted_sq += innovation.square() / variance
        log_variance += variance.log()
        k = prior / variance
        mean += k * innovation
    n = gradients.shape[0] - 1
    return -0.5 * n * (weighted_sq / n).clamp_min(torch.finfo(mean.dtype).tiny).log() - 0.5 * log_variance


def maximum_likelihood_ratio(gradients: torch.Tensor, grid: Sequence[float] = NOISE_RATIO_GRID) -> torch.Tensor:
    """Per column, the grid ratio with the largest profile likelihood (far less noisy than the moment
    estimate at small lambda; like any MA(1) fit it piles up at the boundary lambda = 0 when lambda is tiny)."""
    best = profile_log_likelihood(gradients, grid).argmax(0)
    return torch.tensor(grid, dtype=gradients.dtype)[best.cpu()]


def autocorrelation(series: torch.Tensor, lags: int) -> torch.Tensor:
    """Sample autocorrelation rho_k = sum_t c_t c_{t-k} / sum_t c_t^2 (c: the column minus its mean),
    k = 1..lags, per column: (lags, columns). NaN for a constant column."""
    centred = series - series.mean(0)
    denominator = centred.square().sum(0)
    return torch.stack([(centred[k:] * centred[:-k]).sum(0) / denominator for k in range(1, lags + 1)])


def ljung_box(series: torch.Tensor, lags: int) -> torch.Tensor:
    """Ljung-Box Q = n (n + 2) sum_{k=1}^{lags} rho_k^2 / (n - k) per column (time along dim 0), rho_k the
    sample autocorrelation at lag k. NaN for a constant column."""
    n = series.shape[0]
    rho = autocorrelation(series, lags)
    weights = 1.0 / (n - torch.arange(1, lags + 1, dtype=series.dtype, device=series.device))
    return n * (n + 2) * (rho.square() * weights[:, None]).sum(0)


def whiteness_rejected(gradients: torch.Tensor, noise_ratio: torch.Tensor, lags: int, fitted_parameters: int,
                       significance: float = SIGNIFICANCE) -> torch.Tensor:
    """Per column: does the Ljung-Box test reject whiteness of the filter's innovations at `significance`?
    p = chi2.sf(Q, lags - fitted_parameters) (1 fitted parameter for an estimated lambda, as for the residuals of
    an ARIMA(0,1,1) fit). Callers exclude constant columns (Q is NaN there, which counts as not rejected)."""
    q = ljung_box(standardized_innovations(gradients, noise_ratio), lags)
    p = scipy_stats.chi2.sf(q.cpu().numpy(), lags - fitted_parameters)
    return torch.from_numpy(p < significance)


# ------------------------------------------------------------------------------------------ window summaries
def finite_or_none(value: float) -> float | None:
    """JSON-safe number: inf / NaN become None (printed as ∞ / n/a)."""
    return float(value) if math.isfinite(value) else None


def quantiles(values: np.ndarray) -> list[float | None]:
    """QUANTILES of `values` without interpolation (inverted CDF), so infinite values stay exact."""
    if values.size == 0:
        return [None] * len(QUANTILES)
    return [finite_or_none(v) for v in np.quantile(values, QUANTILES, method="inverted_cdf")]


def coordinate_estimates(gradients: torch.Tensor, lags: int) -> dict[str, torch.Tensor]:
    """Per column of one window (float64, time x coordinates): D4 moment estimates, the maximum-likelihood
    ratio, and whiteness verdicts of four models (fitted ML lambda, fitted D4 lambda, lambda = 0, beta = 0.9).
    Constant columns (c0 = 0) get NaN estimates and are never counted as rejecting."""
    c0, c1 = difference_moments(gradients)
    est = noise_estimates(c0, c1)
    usable = ~est["constant"]
    columns = gradients[:, usable]
    mle = torch.full_like(c0, math.nan)
    mle[usable] = maximum_likelihood_ratio(columns)
    est.update(acf=autocorrelation(gradients, lags), acf_difference=autocorrelation(torch.diff(gradients, dim=0), lags),
               c0=c0, noise_ratio_mle=mle, beta_mle=noise_ratio_to_beta(mle.nan_to_num(0.0)).masked_fill(~usable, math.nan),
               level_sq=gradients.mean(0).square())
    zero = torch.zeros(columns.shape[1], dtype=columns.dtype)
    models = dict(fitted=(mle[usable], 1), moment=(est["noise_ratio"][usable], 1), iid=(zero, 0),
                  adam=(zero + (1 - ADAM_BETA1) ** 2 / ADAM_BETA1, 0))
    for model, (ratio, fitted) in models.items():
        rejected = torch.zeros_like(usable)
        rejected[usable] = whiteness_rejected(columns, ratio, lags, fitted)
        est[f"rejected_{model}"] = rejected
    return est


def summarize_coordinates(est: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, Any]:
    """Quantiles and fractions over the coordinates in `mask` (constant ones excluded)."""
    usable = mask & ~est["constant"]
    n = int(usable.sum())

    def fraction(flags: torch.Tensor) -> float | None:
        return float(flags[usable].double().mean()) if n else None

    beta = est["beta"][usable].numpy()
    noise_ratio = est["noise_ratio"][usable].numpy()
    scale = est["c0"][usable]
    pooled = float((est["q_raw"][usable] / scale).sum() / (est["r_raw"][usable] / scale).sum()) if n else math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        level_to_noise = (est["level_sq"][usable] / est["r_hat"][usable]).numpy()
    return dict(
        n=n, constant=int((mask & est["constant"]).sum()),
        beta_quantiles=quantiles(beta[np.isfinite(beta)]),
        noise_ratio_quantiles=quantiles(noise_ratio[~np.isnan(noise_ratio)]),
        q_clipped=fraction(est["q_raw"] <= 0), r_clipped=fraction(est["r_raw"] <= 0),
        # Each coordinate normalized by its own scale c0 = q + 2r, so the pooled ratio weights them equally.
        pooled_noise_ratio=finite_or_none(pooled),
        beta_mle_quantiles=quantiles(est["beta_mle"][usable].numpy()),
        noise_ratio_mle_quantiles=quantiles(est["noise_ratio_mle"][usable].numpy()),
        mle_at_zero=fraction(est["noise_ratio_mle"] == 0),
        # Squared window-mean gradient over r_hat: how far the level stands out of the noise.
        level_to_noise_median=finite_or_none(float(np.nanmedian(level_to_noise))) if n else None,
        whiteness_rejected={model: fraction(est[f"rejected_{model}"]) for model in WHITENESS_MODELS + ("moment",)},
        # Median over coordinates of the autocorrelation at lags 1..h, of g_t (window mean removed) and of d_t.
        # Local-level model: d_t is MA(1), rho_1(d) = -1 / (lambda + 2), rho_k(d) = 0 for k >= 2.
        acf_median=[finite_or_none(float(v)) for v in est["acf"][:, usable].nanmedian(1).values] if n else None,
        acf_difference_median=[finite_or_none(float(v)) for v in est["acf_difference"][:, usable].nanmedian(1).values]
        if n else None,
    )


def summarize_window(gradients: torch.Tensor, types: Sequence[str], lags: int) -> dict[str, dict[str, Any]]:
    """Summaries of all columns ("all") and per layer type (`types[i]` of column i)."""
    est = coordinate_estimates(gradients, lags)
    types_array = np.asarray(types)
    out = {"all": summarize_coordinates(est, torch.ones(len(types), dtype=torch.bool))}
    for kind in dict.fromkeys(types):
        out[kind] = summarize_coordinates(est, torch.from_numpy(types_array == kind))
    return out


# ------------------------------------------------------------------------------------------ recording
class GradientWindows:
    """Records p.grad at a fixed random subset of coordinates per tensor over windows of consecutive steps."""

    def __init__(self, named_parameters: Sequence[tuple[str, nn.Parameter]], coords_per_tensor: int,
                 starts: Sequence[int], length: int, seed: int):
        generator = torch.Generator().manual_seed(seed + 7919)  # independent of the mini-batch stream
        self.params, self.indices, self.types = [], [], []
        for name, p in named_parameters:
            if not p.requires_grad:
                continue
            count = min(coords_per_tensor, p.numel())
            index = torch.randperm(p.numel(), generator=generator)[:count].sort().values
            self.params.append(p)
            self.indices.append(index.to(p.device))
            self.types += [layer_type(name)] * count
        self.starts, self.length = list(starts), length
        self.buffer: torch.Tensor | None = None
        self.windows: list[torch.Tensor] = []  # (length, coordinates) float64 on the CPU, one per start

    @torch.no_grad()
    def __call__(self, step: int) -> None:
        start = next((s for s in self.starts if s <= step < s + self.length), None)
        if start is None:
            return
        if step == start:
            self.buffer = torch.empty(self.length, len(self.types), dtype=torch.float64, device=self.params[0].device)
        row = [p.grad.reshape(-1)[index] for p, index in zip(self.params, self.indices)]
        self.buffer[step - start] = torch.cat(row).double()
        if step == start + self.length - 1:
            self.windows.append(self.buffer.cpu())
            self.buffer = None


# ------------------------------------------------------------------------------------------ calibration
class CalibrationCheckpoints:
    """At each checkpoint c: the full-batch gradient G(theta_{c-1}) at the parameters where g_c was taken,
    against the optimizer's intervals after filtering g_c; optionally also G(theta_{c-1-l}) for `level_lags` l,
    which measures the process noise directly (below)."""

    def __init__(self, task: training.Task, checkpoints: Sequence[int], levels: Sequence[float],
                 full_gradient_examples: int | None, level_lags: Sequence[int] = (), noise_truth_every: int = 0):
        self.task, self.checkpoints, self.levels = task, sorted(checkpoints), list(levels)
        # Every n-th checkpoint also measures the per-example gradient variance (the true r, noise_truth.py).
        self.noise_truth_every = int(noise_truth_every)
        self.examples = full_gradient_examples
        self.level_lags = [lag for lag in level_lags if lag >= 1]
        self.scratch = copy.deepcopy(task.model)  # parameters are loaded into it for each full gradient
        self.names = [n for n, p in task.model.named_parameters() if p.requires_grad]
        # Parameter snapshots theta_s for every step s = c - 1 - l needed (l = 0 and the level lags).
        self.last_use: dict[int, int] = {}  # snapshot step -> the last checkpoint that needs it
        for c in self.checkpoints:
            for lag in [0, *self.level_lags]:
                if c - 1 - lag >= 0:
                    self.last_use[c - 1 - lag] = max(c, self.last_use.get(c - 1 - lag, 0))
        self.snapshots: dict[int, list[torch.Tensor]] = {}
        self._maybe_remember(0)
        self.results: list[dict[str, Any]] = []

    def _parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    @torch.no_grad()
    def _maybe_remember(self, step: int) -> None:
        if step in self.last_use:
            self.snapshots[step] = [p.detach().clone() for p in self._parameters(self.task.model)]

    def _load_snapshot(self, step: int) -> None:
        with torch.no_grad():
            for target, source in zip(self._parameters(self.scratch), self.snapshots[step]):
                target.copy_(source)

    def _full_gradient_at(self, step: int) -> list[torch.Tensor]:
        self._load_snapshot(step)
        with torch.enable_grad():
            return self.task.full_gradient(self.scratch, self.examples)

    def __call__(self, step: int, optimizer: torch.optim.Optimizer) -> None:
        if step in self.checkpoints:
            self.results.append(self.measure(step, optimizer))
            self.snapshots = {s: v for s, v in self.snapshots.items() if self.last_use[s] > step}
        self._maybe_remember(step)

    def measure(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Coverage counts per level and layer type, |z| quantiles, and level-change sums.

        A coordinate whose true gradient and filtered mean are both exactly 0 (a dead unit that never got a
        gradient) is "inactive": its zero-width interval is trivially right, so it is counted apart, not as
        covered. Level change over l steps, per layer type: sum_i (G_i(theta_{c-1}) - G_i(theta_{c-1-l}))^2
        and the noise sum_i (g_i,c - G_i(theta_{c-1}))^2 (one mini-batch's squared sampling error, E = r_i);
        under the local-level model their ratio is l * lambda (a random walk's increments add up)."""
        truth = self._full_gradient_at(step - 1)
        earlier = {lag: self._full_gradient_at(step - 1 - lag) for lag in self.level_lags if step - 1 - lag >= 0}
        params = self._parameters(self.task.model)
        inside: dict[float, dict[str, int]] = {level: {} for level in self.levels}
        totals: dict[str, int] = {}
        noise_sq: dict[str, float] = {}
        change_sq: dict[int, dict[str, float]] = {lag: {} for lag in earlier}
        scores, zero_variance, inactive = [], 0, 0
        with torch.no_grad():
            for j, (name, p, true) in enumerate(zip(self.names, params, truth)):
                kind = layer_type(name)
                mean, variance = optimizer.gradient_posterior(p)
                active = (true != 0) | (mean != 0)
                inactive += int((~active).sum())
                totals[kind] = totals.get(kind, 0) + int(active.sum())
                for level in self.levels:
                    low, high = optimizer.confidence_interval(p, level)
                    count = int(((true >= low) & (true <= high) & active).sum())
                    inside[level][kind] = inside[level].get(kind, 0) + count
                error = (true - mean).abs().double()[active]
                sd = variance.double().sqrt()[active]
                zero_variance += int((sd <= 0).sum())
                # |z| = |true - mean| / sd; a zero-width interval gives inf unless it is exactly right.
                degenerate = torch.where(error > 0, torch.full_like(error, math.inf), torch.zeros_like(error))
                scores.append(torch.where(sd > 0, error / sd.clamp_min(1e-300), degenerate).cpu())
                noise_sq[kind] = noise_sq.get(kind, 0.0) + float((p.grad.double() - true.double()).square().sum())
                for lag, gradients in earlier.items():
                    change = float((true.double() - gradients[j].double()).square().sum())
                    change_sq[lag][kind] = change_sq[lag].get(kind, 0.0) + change
        z_all = torch.cat(scores).numpy()
        noise = None
        index = self.checkpoints.index(step)
        if self.noise_truth_every and index % self.noise_truth_every == self.noise_truth_every - 1:
            self._load_snapshot(step - 1)
            with torch.enable_grad():
                means, variances = noise_truth.per_example_moments(self.task, self.scratch)
            batch = int(self.task.batch_size)
            noise = noise_truth.innovation_noise_check(optimizer, params, means, [v / batch for v in variances],
                                                       self.levels)

        def with_all(by_type: dict) -> dict:
            return dict(by_type, all=sum(by_type.values()))

        return dict(step=step, total=sum(totals.values()), totals=totals, inactive=inactive, zero_variance=zero_variance,
                    inside={str(level): with_all(by_type) for level, by_type in inside.items()},
                    abs_z_quantiles=[finite_or_none(v) for v in np.quantile(z_all, QUANTILES, method="inverted_cdf")],
                    noise_sq=with_all(noise_sq), level_change_sq={str(lag): with_all(v) for lag, v in change_sq.items()},
                    noise_truth=noise)


# ------------------------------------------------------------------------------------------ execute
def execute(config: dict, device: torch.device) -> dict:
    seed = int(config["seed"])
    torch.manual_seed(seed)  # the same initial model for every mode of this (task, seed)
    task = training.make_task(config["task"], device, **config["task_kwargs"])
    optimizer = training.make_optimizer(f"KalmanAdam-{config['mode']}", task.model.parameters(), lr=config["lr"],
                                        weight_decay=0.0)
    windows = None
    if config["record_windows"]:
        windows = GradientWindows(list(task.model.named_parameters()), config["coords_per_tensor"],
                                  config["window_starts"], config["window_length"], seed)
    calibration = CalibrationCheckpoints(task, config["checkpoints"], config["levels"], config["full_gradient_examples"],
                                         config["level_lags"] if config["record_windows"] else (),
                                         noise_truth_every=config.get("noise_truth_every", 0))

    def on_step(step: int, _task: training.Task, opt: torch.optim.Optimizer) -> None:
        if windows is not None:
            windows(step)
        calibration(step, opt)

    label = f"e2 {config['task']} {config['mode']}{' static' if config['static'] else ''}"
    result = training.train(task, optimizer, steps=config["steps"], seed=seed, eval_every=config["eval_every"],
                            on_step=on_step, evaluate_test=False, progress=label)
    metrics: dict[str, Any] = dict(diverged=result.diverged, steps_done=result.steps,
                                   val_loss=result.final_val["loss"], val_accuracy=result.final_val["accuracy"],
                                   calibration=calibration.results)
    if windows is not None:
        metrics["coordinates"] = len(windows.types)
        metrics["windows"] = [
            dict(phase=PHASES[i], start=start, end=start + config["window_length"] - 1,
                 summary=summarize_window(g, windows.types, config["lags"]))
            for i, (start, g) in enumerate(zip(windows.starts, windows.windows))]
    curves = dict(eval_steps=result.eval_steps, val_loss=result.val_loss, train_loss=result.train_loss)
    return dict(metrics=metrics, curves=curves)


# ------------------------------------------------------------------------------------------ aggregation
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


# ------------------------------------------------------------------------------------------ figures
def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}"


def _percent(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{100 * value:.0f}"


def _phases(summaries: dict[tuple[str, str], list[dict]]) -> list[str]:
    return [p for p in PHASES if any(phase == p for phase, _ in summaries)]


TYPE_ORDER = ("all", "conv weight", "conv bias", "hidden linear weight", "hidden linear bias", "output weight",
              "output bias", "embedding (tied)", "position", "attention weight", "attention bias", "MLP weight",
              "MLP bias", "layernorm")


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


def _median_iqr(quantile_values: list[float], digits: int = 3) -> str:
    """'median [q25, q75]' from pooled QUANTILES (0.05, 0.25, 0.5, 0.75, 0.95)."""
    return f"{_fmt(quantile_values[2], digits)} [{_fmt(quantile_values[1], digits)}, {_fmt(quantile_values[3], digits)}]"


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
                             f"{_fmt(pooled, 2)} ({_fmt(pooled_beta)})",
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
                    rows.append([TASK_LABELS[task], "static (lr 0)" if static else "training", MODE_LABELS[mode],
                                 f"{level:.2f}", f"{e.mean:.3f}", f"[{e.low:.3f}, {e.high:.3f}]",
                                 f"{min(coverages):.3f} - {max(coverages):.3f}", f"{total // len(coverages):,}",
                                 f"{len(coverages)}"])
    if not rows:
        return
    out.table("e2_calibration", ["task", "parameters", "mode", "nominal", "observed", "Wilson 95% CI", "range",
                                 "coords", "checkpoints × seeds"], rows,
              caption=f"E2 calibration ({out.profile} profile): share of active coordinates whose full-batch training "
                      "gradient (at the parameters of the last filtered mini-batch) lies in KalmanAdam's "
                      "confidence_interval, pooled over checkpoints and seeds. The Wilson interval treats coordinates "
                      "as independent, which they are not (shared mini-batches and parameters), so it understates the "
                      "uncertainty; the range over checkpoints and seeds is the more honest spread. Static: the same "
                      "runs with lr = 0, where the gradient is i.i.d. noise around a constant.",
              align="lllrrrrrr")


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
            rows.append([TASK_LABELS[task], f"{step}"] + [_fmt(by_lag[lag], 3) for lag in lags] + [_fmt(growth, 2)])
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


def figures(runs: list[dict], out: FigureOutput) -> None:
    if not runs:
        return
    figure_beta_distribution(runs, out)
    figure_whiteness(runs, out)
    figure_calibration(runs, out)
    table_noise(runs, out)
    table_calibration(runs, out)
    table_calibration_by_layer(runs, out)
    table_process_noise(runs, out)


# ------------------------------------------------------------------------------------------ numbers
def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace("-", "_").split("_"))


def numbers(runs: list[dict]) -> dict[str, float | int | str]:
    """Per task: median optimal beta (D4 and ML) and the share at beta = 1 (all coordinates, mean over windows
    and seeds), pooled lambda, whiteness rejection per model in training and with frozen parameters, the directly
    measured one-step level change; per task and mode: coverage of the 95% and 50% intervals (training, static)."""
    out: dict[str, float | int | str] = {}
    training_runs = [r for r in runs if not is_static(r)]
    if not training_runs:
        return out
    out["Steps"] = int(training_runs[0]["config"]["steps"])
    out["Seeds"] = len({int(r["config"]["seed"]) for r in training_runs})
    for task in tasks_of(runs):
        name = _camel(task)
        for static, prefix in ((False, ""), (True, "Static")):
            everything = [s for (_, kind), group in window_summaries(runs, task, static).items() if kind == "all"
                          for s in group]
            if not everything:
                continue
            if not static:
                out[f"{name}WindowLength"] = int(window_runs(runs, task)[0]["config"]["window_length"])
                out[f"{name}MedianOptimalBeta"] = mean_of([s["beta_quantiles"][2] for s in everything], math.nan)
                out[f"{name}MedianOptimalBetaMl"] = mean_of([s["beta_mle_quantiles"][2] for s in everything], math.nan)
                out[f"{name}ClippedQFraction"] = mean_of([s["q_clipped"] for s in everything], math.nan)
                out[f"{name}MlZeroFraction"] = mean_of([s["mle_at_zero"] for s in everything], math.nan)
                out[f"{name}PooledNoiseRatio"] = mean_of([s["pooled_noise_ratio"] for s in everything], math.nan)
                out[f"{name}LagOneAutocorrelation"] = mean_of([s["acf_median"][0] for s in everything], math.nan)
            for model in WHITENESS_MODELS + ("moment",):
                out[f"{name}{prefix}WhitenessRejected{_camel(model)}"] = mean_of(
                    [s["whiteness_rejected"][model] for s in everything], math.nan)
        ratios = level_change_ratios(runs, task)
        if ratios:
            out[f"{name}LevelChangeOneStep"] = float(np.mean([by_lag.get(1, math.nan) for by_lag in ratios.values()]))
            out[f"{name}LevelChangeTenSteps"] = float(np.mean([by_lag.get(10, math.nan) for by_lag in ratios.values()]))
        for mode in CALIBRATED_MODES:
            late = [c for run in select(runs, task, mode) for c in run["metrics"]["calibration"]
                    if c["step"] > run["config"]["steps"] // 2 and c["total"]]  # the second half of each run
            for level, word in ((0.95, "NinetyFive"), (0.9, "Ninety"), (0.5, "Fifty")):
                if late:
                    out[f"{name}{_camel(mode)}LateCoverage{word}"] = (
                        sum(c["inside"][str(level)]["all"] for c in late) / sum(c["total"] for c in late))
            out[f"{name}{_camel(mode)}Steps"] = max((r["config"]["steps"] for r in select(runs, task, mode)), default=0)
            checks = [c["noise_truth"] for run in select(runs, task, mode) for c in run["metrics"]["calibration"]
                      if c.get("noise_truth")]
            if checks:
                total = sum(c["total"] for c in checks)
                for level, word in ((0.95, "NinetyFive"), (0.5, "Fifty")):
                    out[f"{name}{_camel(mode)}TruePhiCoverage{word}"] = sum(c["inside"][str(level)] for c in checks) / total
                quartiles = [c["abs_z_quantiles"][1] for run in select(runs, task, mode)
                             for c in run["metrics"]["calibration"] if c["abs_z_quantiles"][1] is not None]
                out[f"{name}{_camel(mode)}AbsZLowerQuartile"] = float(np.median(quartiles))  # normal: 0.319
                out[f"{name}{_camel(mode)}PhiOverTruePhiMedian"] = float(np.median(
                    [c["phi_over_true_phi_quantiles"][1] for c in checks if c["phi_over_true_phi_quantiles"][1] is not None]))
        for mode in MODES:
            for static, prefix in ((False, ""), (True, "Static")):
                for level, word in ((0.99, "NinetyNine"), (0.95, "NinetyFive"), (0.9, "Ninety"), (0.8, "Eighty"),
                                    (0.5, "Fifty")):
                    e = coverage_estimate(runs, task, mode, level, static)
                    if e.n:
                        out[f"{name}{prefix}{_camel(mode)}Coverage{word}"] = e.mean
    return out
