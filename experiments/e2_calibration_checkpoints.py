"""Calibration checkpoints: at chosen steps of a training run, the full-batch gradient (the truth the optimizer's
state estimates) against KalmanAdam's intervals, the per-example noise truth, and the process noise measured
directly as the change of the full-batch gradient over a few steps."""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from experiments import noise_truth, training
from experiments.e2_design import QUANTILES, finite_or_none, layer_type


class CalibrationCheckpoints:
    """At each checkpoint c: the full-batch gradient G(theta_{c-1}) at the parameters where g_c was taken,
    against the optimizer's intervals after filtering g_c; optionally also G(theta_{c-1-l}) for `level_lags` l at
    the checkpoints in `level_checkpoints` (all by default), which measures the process noise directly (below)."""

    def __init__(self, task: training.Task, checkpoints: Sequence[int], levels: Sequence[float],
                 full_gradient_examples: int | None, level_lags: Sequence[int] = (), noise_truth_every: int = 0,
                 noise_truth_for: Collection[str] | None = None, level_checkpoints: Collection[int] | None = None):
        self.task, self.checkpoints, self.levels = task, sorted(checkpoints), list(levels)
        # Every n-th checkpoint also measures the per-example gradient variance (the true r, noise_truth.py), checked
        # against the optimizers named in `noise_truth_for` ("" = the training optimizer; None = all of them).
        self.noise_truth_every = int(noise_truth_every)
        self.noise_truth_for = None if noise_truth_for is None else set(noise_truth_for)
        self.examples = full_gradient_examples
        self.level_lags = [lag for lag in level_lags if lag >= 1]
        # Each level change costs a full gradient per lag: a subset of the checkpoints keeps the paper profile's budget.
        self.level_checkpoints = set(self.checkpoints if level_checkpoints is None else level_checkpoints)
        self.scratch = copy.deepcopy(task.model)  # parameters are loaded into it for each full gradient
        self.names = [n for n, p in task.model.named_parameters() if p.requires_grad]
        # Parameter snapshots theta_s for every step s = c - 1 - l needed (l = 0 and the level lags).
        self.last_use: dict[int, int] = {}  # snapshot step -> the last checkpoint that needs it
        for c in self.checkpoints:
            for lag in [0, *(self.level_lags if c in self.level_checkpoints else [])]:
                if c - 1 - lag >= 0:
                    self.last_use[c - 1 - lag] = max(c, self.last_use.get(c - 1 - lag, 0))
        self.snapshots: dict[int, list[torch.Tensor]] = {}
        self._maybe_remember(0)
        self.results: list[dict[str, Any]] = []
        self.shadow_results: dict[str, list[dict[str, Any]]] = {}  # shadow name -> its checkpoints

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

    def __call__(self, step: int, optimizer: torch.optim.Optimizer,
                 shadows: Mapping[str, torch.optim.Optimizer] | None = None) -> None:
        """Measure at a checkpoint: the training optimizer into `results`, each shadow filter (an optimizer with
        lr = 0 that has filtered the same gradients) into `shadow_results[name]`, all against one full gradient."""
        if step in self.checkpoints:
            measured = self.measure_all(step, {"": optimizer, **(shadows or {})})
            self.results.append(measured.pop(""))
            for name, checkpoint in measured.items():
                self.shadow_results.setdefault(name, []).append(checkpoint)
            self.snapshots = {s: v for s, v in self.snapshots.items() if self.last_use[s] > step}
        self._maybe_remember(step)

    def measure(self, step: int, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """measure_all for one optimizer."""
        return self.measure_all(step, {"": optimizer})[""]

    def measure_all(self, step: int, optimizers: Mapping[str, torch.optim.Optimizer]) -> dict[str, dict[str, Any]]:
        """Per optimizer (name -> optimizer; "" is the one that trains, the others shadow it): the truth, the level
        changes and the per-example noise truth are computed once and shared; the level changes are stored with ""
        only (the same numbers for every optimizer).

        Coverage counts per level and layer type, |z| quantiles, and level-change sums.

        Coverage is counted over "live" coordinates, those whose full-batch gradient is not exactly 0. Where it
        is exactly 0 no example reaches the coordinate (a dead ReLU unit): the truth is a known point, not random,
        and any interval about a filtered mean that has decayed towards 0 since the unit died covers it at every
        level. Such "dead" coordinates (mean not yet exactly 0) are counted apart with their own inside counts;
        "inactive" ones (mean exactly 0 too) only counted. Level change over l steps, per layer type:
        sum_i (G_i(theta_{c-1}) - G_i(theta_{c-1-l}))^2 and the noise sum_i (g_i,c - G_i(theta_{c-1}))^2 (one
        mini-batch's squared sampling error, E = r_i);
        under the local-level model their ratio is l * lambda (a random walk's increments add up)."""
        truth = self._full_gradient_at(step - 1)
        earlier = {lag: self._full_gradient_at(step - 1 - lag) for lag in self.level_lags
                   if step - 1 - lag >= 0 and step in self.level_checkpoints}
        params = self._parameters(self.task.model)
        moments = None
        index = self.checkpoints.index(step)
        wanted = [name for name in optimizers if self.noise_truth_for is None or name in self.noise_truth_for]
        if wanted and self.noise_truth_every and index % self.noise_truth_every == self.noise_truth_every - 1:
            self._load_snapshot(step - 1)
            with torch.enable_grad():
                means, variances = noise_truth.per_example_moments(self.task, self.scratch)
            batch = int(self.task.batch_size)
            moments = (means, [v / batch for v in variances])
        out = {}
        for name, optimizer in optimizers.items():
            noise = (noise_truth.innovation_noise_check(optimizer, params, *moments, self.levels)
                     if moments is not None and name in wanted else None)
            out[name] = self._coverage(step, optimizer, params, truth, earlier if name == "" else {}, noise)
        return out

    def _coverage(self, step: int, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                  truth: list[torch.Tensor], earlier: dict[int, list[torch.Tensor]],
                  noise: dict[str, Any] | None) -> dict[str, Any]:
        inside: dict[float, dict[str, int]] = {level: {} for level in self.levels}
        totals: dict[str, int] = {}
        noise_sq: dict[str, float] = {}
        change_sq: dict[int, dict[str, float]] = {lag: {} for lag in earlier}
        scores, zero_variance, inactive, dead = [], 0, 0, 0
        dead_inside = {level: 0 for level in self.levels}
        with torch.no_grad():
            for j, (name, p, true) in enumerate(zip(self.names, params, truth)):
                kind = layer_type(name)
                mean, variance = optimizer.gradient_posterior(p)
                active = true != 0  # live: some example's gradient reaches the coordinate
                decaying = (true == 0) & (mean != 0)
                inactive += int(((true == 0) & (mean == 0)).sum())
                dead += int(decaying.sum())
                totals[kind] = totals.get(kind, 0) + int(active.sum())
                for level in self.levels:
                    low, high = optimizer.confidence_interval(p, level)
                    covered = (true >= low) & (true <= high)
                    inside[level][kind] = inside[level].get(kind, 0) + int((covered & active).sum())
                    dead_inside[level] += int((covered & decaying).sum())
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

        def with_all(by_type: dict) -> dict:
            return dict(by_type, all=sum(by_type.values()))

        return dict(step=step, total=sum(totals.values()), totals=totals, inactive=inactive, zero_variance=zero_variance,
                    dead=dead, dead_inside={str(level): count for level, count in dead_inside.items()},
                    inside={str(level): with_all(by_type) for level, by_type in inside.items()},
                    abs_z_quantiles=[finite_or_none(v) for v in np.quantile(z_all, QUANTILES, method="inverted_cdf")],
                    noise_sq=with_all(noise_sq), level_change_sq={str(lag): with_all(v) for lag, v in change_sq.items()},
                    noise_truth=noise)
