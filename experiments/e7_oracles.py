r"""E7's bounds on the issue series: what a read-out can achieve on ONE coordinate with and without knowing its noise ratio.

The issue series is a local-level series at the filter's own noise ratio lambda_f = (1 - beta1)^2 / beta1, one
coordinate, r = 0.25, 300 steps; the target is P_t within a factor of the exact filter's P*_t from step 50 on.
- `likelihood_oracle`: the noise ratio KNOWN (the filter's own), r estimated by maximum likelihood. No read-out that
  must estimate r can do better.
- `ratio_unknown_oracle`: the noise ratio and r BOTH estimated from the series itself, by maximum likelihood and by
  their posterior mean (log-uniform prior on the ratio over `decades` decades either side of lambda_f, Jeffreys' prior
  on r), reading out the mean-squared error of Adam's m_hat under the estimate. This is what a read-out that learns
  the ratio per tensor can reach on one coordinate: the gap to the first oracle is the price of not assuming the
  filter's model.
"""

from __future__ import annotations

import numpy as np
import torch

from kalman_optim import constant_noise_gain
from kalman_optim.schedules import adam_coefficients

#: The ratio-unknown oracle's grid: RATIO_POINTS_PER_DECADE log-spaced ratios per decade over lambda_f 10^-/+RATIO_DECADES.
RATIO_DECADES = 3.0
RATIO_POINTS_PER_DECADE = 20


def likelihood_oracle(g: np.ndarray, config: dict, simulated_seeds: int = 100_000) -> dict:
    """The best a read-out can do on the issue series without knowing r: the exact filter (its noise ratio known;
    Adam's diffuse gain is its gain) with r estimated by maximum likelihood, the running mean of the standardized
    squared innovations (1 - k_t) nu_t^2, which are r chi^2_1 and independent under the model (D7). Its
    P_t / P*_t is r_hat_t / r. On the run's series (`g`: steps x seeds), and its probability of staying within the
    factor from from_step on for one series and for all seeds, from `simulated_seeds` simulated chi^2_1 paths (fixed
    seed)."""
    beta1, r, within = float(config["beta1"]), float(config["observation_noise"]), float(config["within"])
    start, steps = int(config["from_step"]) - 1, g.shape[0]
    mean, standardized = g[0].copy(), np.empty((steps - 1, g.shape[1]))
    for t in range(2, steps + 1):
        gain = adam_coefficients(beta1, t).gain
        innovation = g[t - 1] - mean
        standardized[t - 2] = (1 - gain) * innovation**2
        mean = mean + gain * innovation
    ratio = np.cumsum(standardized, axis=0) / np.arange(1, steps)[:, None] / r  # row t - 2: step t
    worst = np.maximum(ratio[start - 1:], 1 / ratio[start - 1:]).max(axis=0)
    rng, passed = np.random.default_rng(0), 0
    for chunk in np.array_split(np.arange(simulated_seeds), 10):
        paths = np.cumsum(rng.chisquare(1, (steps - 1, chunk.size)), axis=0) / np.arange(1, steps)[:, None]
        passed += int((np.maximum(paths[start - 1:], 1 / paths[start - 1:]).max(axis=0) <= within).sum())
    probability = passed / simulated_seeds
    return dict(worst_ratio=worst.tolist(), within=(worst <= within).tolist(),
                fraction_within=float((worst <= within).mean()), pass_probability=probability,
                all_seeds_probability=probability ** g.shape[1])


def ratio_unknown_oracle(g: np.ndarray, config: dict) -> dict:
    """The issue series read out with the noise ratio lambda = q / r estimated too (module docstring).

    For each lambda of a grid (0 and RATIO_POINTS_PER_DECADE log-spaced points per decade over lambda_f
    10^-/+RATIO_DECADES), the exact Kalman filter with the diffuse start, in units of r (P_1 = 1; A = P + lambda,
    F = A + 1, P = A / F), gives the prediction-error decomposition of the likelihood: with S = sum nu^2 / F and
    n = t - 1 innovations, r_hat(lambda) = S / n and the profile log-likelihood -n/2 log r_hat - 1/2 sum log F.
    Adam's m_hat has the MSE E_t(lambda) r, E_1 = 1, E_t = (1 - k_t)^2 (E_{t-1} + lambda) + k_t^2 (D7's recursion;
    E_t(lambda_f) r is the exact filter's P*_t to 1e-4 from step 50 on: Adam's gains are the diffuse filter's for a
    slightly time-varying q, D2). Read-outs per step, against P*_t = constant_noise_gain(beta1, t) r as in the issue
    run: maximum likelihood E_t(lambda_hat) r_hat(lambda_hat); the posterior mean of E_t(lambda) r (r | lambda
    inverse-gamma, mean S / (n - 2), from step 4 on), whose weights over the grid are the profile likelihoods (the
    marginal likelihood of lambda under Jeffreys' prior on r differs from it by a constant).
    Returns, per read-out, each seed's worst max(P / P*, P* / P) from from_step on and the share within the factor."""
    beta1, r, within = float(config["beta1"]), float(config["observation_noise"]), float(config["within"])
    start, steps, seeds = int(config["from_step"]), g.shape[0], g.shape[1]
    lam_f = (1 - beta1) ** 2 / beta1
    points = int(2 * RATIO_DECADES * RATIO_POINTS_PER_DECADE) + 1
    grid = np.concatenate([[0.0], lam_f * np.logspace(-RATIO_DECADES, RATIO_DECADES, points)])
    t_all = torch.arange(1, steps + 1, dtype=torch.float64)
    exact = (constant_noise_gain(torch.tensor(beta1, dtype=torch.float64), t_all) * r).numpy()  # P*_t, as issue_series
    mean = np.repeat(g[:1], grid.size, axis=0)  # lambda x seeds: every filter starts at g_1 (diffuse prior)
    variance = np.ones((grid.size, 1))
    squares, log_f = np.zeros((grid.size, seeds)), np.zeros((grid.size, 1))
    error = np.ones(grid.size)
    worst = {"maximum likelihood": np.ones(seeds), "posterior mean": np.ones(seeds)}
    columns = np.arange(seeds)
    for t in range(2, steps + 1):
        prior = variance + grid[:, None]
        f = prior + 1
        innovation = g[t - 1][None, :] - mean
        squares += innovation**2 / f
        log_f += np.log(f)
        mean = mean + prior / f * innovation
        variance = prior / f
        k = adam_coefficients(beta1, t).gain
        error = (1 - k) ** 2 * (error + grid) + k**2
        if t < max(start, 4):
            continue
        n = t - 1
        r_hat = squares / n
        loglik = -0.5 * n * np.log(r_hat) - 0.5 * log_f
        best = loglik.argmax(axis=0)
        ratios = {"maximum likelihood": error[best] * r_hat[best, columns] / exact[t - 1]}
        weights = np.exp(loglik[1:] - loglik[1:].max(axis=0))  # lambda = 0 carries no mass under a log-uniform prior
        weights /= weights.sum(axis=0)
        ratios["posterior mean"] = (weights * error[1:, None] * squares[1:] / (n - 2)).sum(axis=0) / exact[t - 1]
        for name, ratio in ratios.items():
            worst[name] = np.maximum(worst[name], np.maximum(ratio, 1 / ratio))
    return {name: dict(worst_ratio=values.tolist(), fraction_within=float((values <= within).mean()))
            for name, values in worst.items()}
