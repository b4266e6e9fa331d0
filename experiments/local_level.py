"""Simulated local-level series and the reference filters E0, E1 and E7 share.

Model (D1): x_t = x_{t-1} + w_t, w ~ N(0, q); g_t = x_t + v_t, v ~ N(0, r), x_0 = 0; many series at once (time
along dim 0, series along dim 1), the only Python loop being over time steps. The filters: a given gain sequence
(Adam's bias-corrected gain, D2, or the constant-noise Kalman gain from a diffuse prior, D1), the adaptive filter
(D4, the library's per-coordinate update) and a grid of Adam-style EWMAs run together; with them the refinement of
the best gain on that grid, interval coverage counts and the steady-state MSE. E1 (experiments/e1_synthetic.py,
which re-exports these) measures them, E0 draws them, and E0, E1 and E7 run their loops single-threaded on CPU.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from kalman_optim import adam_gain, constant_noise_gain
from kalman_optim.functional import AdaptiveNoiseConfig, adaptive_noise_estimates
from kalman_optim.schedules import normal_quantile


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


# ------------------------------------------------------------------------------------------ threads
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
