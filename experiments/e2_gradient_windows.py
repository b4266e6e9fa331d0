"""Gradient windows: the mini-batch gradient of a fixed random subset of coordinates recorded over windows of
consecutive training steps, and each window's summary per layer type (quantiles of the noise estimates, shares
rejecting whiteness, autocorrelations), which is what the result files store."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from experiments.e2_design import ADAM_BETA1, WHITENESS_MODELS, finite_or_none, layer_type, quantiles
from experiments.e2_noise_statistics import (autocorrelation, difference_moments, maximum_likelihood_ratio,
                                             noise_estimates, whiteness_rejected)
from kalman_optim import noise_ratio_to_beta


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


# ------------------------------------------------------------------------------------------ summaries
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
