"""E6's summaries: per setting, estimates over seeds and the paired difference to its group's reference (the
experiment, its plan and its figure are experiments/e6_ablations.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from experiments.stats import Estimate, mean_ci, paired_difference, paired_t_p_value


@dataclass
class SettingSummary:
    """One setting within its group: estimates over seeds and the paired difference to the reference."""

    group: str
    lr: float
    setting: Any  # e6_ablations.Setting
    is_reference: bool
    seeds: list[int]
    diverged: int
    test_loss: Estimate
    test_accuracy: Estimate
    val_loss: Estimate
    test_loss_vs_reference: Estimate  # mean over common seeds of loss(setting) - loss(reference)
    test_loss_p_value: float  # paired t-test of the same differences (Holm-corrected in numbers())
    effective_beta: Estimate | None
    clipped_low: Estimate | None  # fraction of coordinates with beta clipped to beta_min (adaptive only)
    clipped_high: Estimate | None


def by_seed(runs: list[dict], key: str) -> dict[int, dict]:
    """The metrics of setting `key`'s runs, by seed."""
    return {int(r["config"]["seed"]): r["metrics"] for r in runs if r["config"]["setting"] == key}


def lr_of(runs: list[dict], key: str) -> float:
    """The one learning rate of setting `key`'s runs (two would make its paired differences meaningless)."""
    lrs = {float(r["config"]["lr"]) for r in runs if r["config"]["setting"] == key}
    if len(lrs) != 1:
        raise ValueError(f"E6 runs of setting {key} have learning rates {sorted(lrs)}; expected one")
    return lrs.pop()


def values(runs_by_seed: dict[int, dict], seeds: Sequence[int], metric: str) -> list[float]:
    return [float(runs_by_seed[s][metric]) for s in seeds]


def summarize(runs: list[dict], groups: Sequence) -> list[SettingSummary]:
    """Per group and setting (in the group's order): mean +- 95% CI over seeds and the paired difference.

    Paired difference: mean_i (L_i(setting) - L_i(reference)) over the seeds both have, with its t-interval;
    pairing by seed removes the shared variation of initialisation and mini-batch order."""
    rows = []
    for group in groups:
        reference = by_seed(runs, group.reference.key)
        if not reference:  # a group the profile does not run (paper: only the confidence group)
            continue
        for setting in group.settings:
            own = by_seed(runs, setting.key)
            if not own:
                continue
            seeds = sorted(own)
            common = [s for s in seeds if s in reference]
            betas = [own[s]["effective_beta_mean"] for s in seeds if "effective_beta_mean" in own[s]]
            low = [own[s]["clipped_low_fraction"] for s in seeds if "clipped_low_fraction" in own[s]]
            high = [own[s]["clipped_high_fraction"] for s in seeds if "clipped_high_fraction" in own[s]]
            rows.append(SettingSummary(
                group=group.name, lr=lr_of(runs, setting.key), setting=setting,
                is_reference=setting.key == group.reference.key, seeds=seeds,
                diverged=sum(bool(own[s].get("diverged")) for s in seeds),
                test_loss=mean_ci(values(own, seeds, "test_loss")),
                test_accuracy=mean_ci(values(own, seeds, "test_accuracy")),
                val_loss=mean_ci(values(own, seeds, "val_loss")),
                test_loss_vs_reference=paired_difference(values(own, common, "test_loss"),
                                                         values(reference, common, "test_loss")),
                test_loss_p_value=paired_t_p_value(values(own, common, "test_loss"),
                                                   values(reference, common, "test_loss")),
                effective_beta=mean_ci(betas) if betas else None,
                clipped_low=mean_ci(low) if low else None, clipped_high=mean_ci(high) if high else None,
            ))
    return rows


def error_bars(estimate: Estimate) -> tuple[float, float]:
    """(below, above) error-bar lengths; 0 when the interval is not finite (one seed)."""
    if not (math.isfinite(estimate.low) and math.isfinite(estimate.high)):
        return 0.0, 0.0
    return estimate.mean - estimate.low, estimate.high - estimate.mean
