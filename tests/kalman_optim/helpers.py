"""Shared fixtures for the optimizer tests: a small real network, a fixed data stream, a training loop, and a
parameter at lr = 0 through which an optimizer filters a given series."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from kalman_optim import KalmanAdam


def small_network(dtype=torch.float32, seed=0) -> torch.nn.Module:
    """A small MLP classifier (with a bias-free layer and a LayerNorm: varied tensor shapes)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(12, 32),
        torch.nn.Tanh(),
        torch.nn.LayerNorm(32),
        torch.nn.Linear(32, 16, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(16, 4),
    ).to(dtype)


def batches(steps: int, dtype=torch.float32, seed=1, batch=32):
    """A fixed stream of (x, y) from a noisy teacher task, identical for every call with the same seed."""
    teacher = torch.randn(12, 4, generator=torch.Generator().manual_seed(12345))  # one task for every seed
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(batch, 12, generator=generator)
        y = (x @ teacher + 0.5 * torch.randn(batch, 4, generator=generator)).argmax(dim=1)
        yield x.to(dtype), y


def loss_fn(model, x, y):
    return F.cross_entropy(model(x), y)


def train(model, optimizer, steps: int, dtype=torch.float32, seed=1, scheduler=None):
    """Train and return the list of losses."""
    losses = []
    for x, y in batches(steps, dtype, seed):
        optimizer.zero_grad()
        loss = loss_fn(model, x, y)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def full_loss(model, dtype=torch.float32) -> float:
    with torch.no_grad():
        x, y = next(batches(1, dtype, seed=99, batch=2048))
        return loss_fn(model, x, y).item()


def twin(model):
    return copy.deepcopy(model)


def max_relative_difference(params_a, params_b) -> float:
    return max(((a - b).abs() / b.abs().clamp_min(1e-12)).max().item() for a, b in zip(params_a, params_b))


def filtered_posterior(observations, **options):
    """Feed float64 observations (steps x coordinates) as the gradients of one parameter at lr = 0 (it stays still,
    so the optimizer is a pure filter): returns (optimizer, parameter, posterior means, posterior variances,
    second moments), one row per step."""
    p = torch.nn.Parameter(torch.zeros(observations.shape[1], dtype=torch.float64))
    optimizer = KalmanAdam([p], **{"lr": 0.0, "weight_decay": 0.0, **options})
    means, variances, second = [], [], []
    for g in observations:
        p.grad = torch.from_numpy(g.copy())
        optimizer.step()
        mean, variance = optimizer.gradient_posterior(p)
        means.append(mean.numpy().copy())
        variances.append(variance.numpy().copy())
        second.append(optimizer.state[p]["exp_avg_sq"].numpy().copy())
    return optimizer, p, np.array(means), np.array(variances), np.array(second)
