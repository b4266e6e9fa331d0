"""Ground truth for the observation noise r: the per-example gradient variance over the set the mini-batches are
drawn from, and what it says about mode "innovation"'s read-out (E2).

A mini-batch of B examples drawn with replacement from a set of N has gradient noise variance r_i = s_i^2 / B per
coordinate, with s_i^2 the variance of the per-example gradients over the set. With r known, D7's identity gives
the filter's error without estimating r: E = (1 - k_t)^2 S_t - (1 - 2 k_t) r = (1 - k_t) R_hat - (1 - 2 k_t) r.
That difference is as sensitive to the sampling noise of R_hat as to r, so the check keeps the mode's structure
and replaces only its estimated ratio phi = r / R by the true one, averaged over the tensor like the mode's
(each coordinate weighted alike): phi* = mean_i(r_i / R_hat_i). Comparing phi with phi*, and the coverage of
intervals built on phi* with the mode's own, separates errors in the lag-1 estimate of r from errors in the
innovation statistic R (e.g. its lag behind a noise level that changes during training).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from kalman_optim.noise_models import innovation
from kalman_optim.schedules import adam_coefficients


def training_examples(task) -> tuple[torch.Tensor, torch.Tensor]:
    """The (inputs, targets) the task's mini-batches are drawn from (uniformly, with replacement)."""
    pool = getattr(task, "pool", None)
    if pool is not None:
        return pool
    if hasattr(task, "train_x"):
        return task.train_x, task.train_y
    raise ValueError(f"task {task.name!r} does not draw its mini-batches from a finite set: no per-example truth")


def per_example_moments(task, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean and variance over the training set of the per-example gradients, per parameter (float64)."""
    inputs, targets = training_examples(task)
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    total_sq = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    count = inputs.shape[0]
    for i in range(count):
        loss, _ = task.loss(model, inputs[i:i + 1], targets[i:i + 1])
        for t, t2, g in zip(total, total_sq, torch.autograd.grad(loss, params)):
            g = g.double()
            t.add_(g)
            t2.addcmul_(g, g)
    means = [t / count for t in total]
    return means, [(t2 / count - m.square()).clamp_min_(0) for t2, m in zip(total_sq, means)]


def innovation_noise_check(optimizer, params: list[nn.Parameter], truth: list[torch.Tensor],
                           noise: list[torch.Tensor], levels: list[float]) -> dict[str, Any]:
    """Coverage of intervals with the true phi, and quantiles over tensors of phi / phi*, for mode "innovation".

    `truth`: the full-batch gradient; `noise`: the true r per coordinate (per-example variance / B)."""
    inside = {str(level): 0 for level in levels}
    total, ratios = 0, []
    for p, true, r in zip(params, truth, noise):
        state, group = optimizer.state[p], optimizer._group_of(p)
        step, beta1, noise_beta = int(state["step"]), float(group["betas"][0]), float(group["noise_beta"])
        k = adam_coefficients(beta1, step).gain
        statistic = state["innovation_sq_avg"].double() / -math.expm1((step - 1) * math.log(noise_beta))
        usable = (r > 0) & (statistic > 0)
        true_phi = float((r[usable] / statistic[usable]).mean()) if usable.any() else 1.0
        true_phi = min(max(true_phi, 0.0), 1 / (1 - k))
        error = statistic * ((1 - k) * (1 - true_phi) + k * true_phi)  # D7's read-out with the true phi
        mean, _ = optimizer.gradient_posterior(p)
        mean = mean.double()
        active = true != 0  # live coordinates, as in CalibrationCheckpoints.measure
        total += int(active.sum())
        for level in levels:
            half = optimizer.interval_quantile(p, level) * error.sqrt()
            inside[str(level)] += int((((true - mean).abs() <= half) & active).sum())
        phi = float(innovation.noise_fraction(state, step, beta1, noise_beta))
        ratios.append(np.array([phi / true_phi]))
    ratio = np.concatenate(ratios) if ratios else np.array([])
    quantiles = np.quantile(ratio, [0.1, 0.5, 0.9]).tolist() if ratio.size else [None] * 3
    return dict(total=total, inside=inside, phi_over_true_phi_quantiles=quantiles)
