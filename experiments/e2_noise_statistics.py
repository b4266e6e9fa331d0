"""Statistics of one gradient window under the local-level model, per coordinate (column; time along dim 0):
the D4 difference moments and the q, r, lambda, beta estimates from them, the exact filter's standardized
innovations, the maximum-likelihood noise ratio, autocorrelations and the Ljung-Box whiteness test."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from scipy import stats as scipy_stats

from kalman_optim import noise_ratio_to_beta

SIGNIFICANCE = 0.05  # level of the whiteness test: if a model fits, about this share of coordinates rejects


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
