"""E3: steps to a target loss versus batch size on the noisy quadratic model (NQM, Zhang et al. 2019).

Problem (experiments/nqm.py): L(theta) = 1/2 sum_i h_i theta_i^2 with h_i = 1/i, i = 1..d, and mini-batch
gradients g = h * theta + sqrt(h / B) * eps (gradient-noise covariance H / B). The loss of the current
iterate is computed exactly at every step, so "steps to target" has no evaluation noise.

Initial point. theta_0 ~ N(0, I), drawn once from a fixed generator (`init_seed`) and shared by every run
and every seed, so the seeds differ only in their gradient noise. We do not use theta_0 = 1: with all
coordinates at the same distance from the optimum, Adam's large-batch limit (sign descent, steps of size
lr in every coordinate) lands every coordinate on 0 at once after 1 / lr steps and reaches any target in
one or two steps at lr ~ 1 -- an artefact of the initial point, not a property of the optimizer.

Target. tau = target_fraction * L(theta_0) with target_fraction = 0.1 (a 10x loss reduction). Why 0.1: the
loss is spread evenly over log-curvature scales, so reaching fraction f needs every coordinate with
h_i >~ d^(-(1-f)) to converge, while at batch size B the noise floor of SGD with step size alpha is about
alpha / (2 B) * L(theta_0), forcing alpha <~ 2 B f: a tighter target moves the small-batch end out of any
budget. Adam's large-batch limit is sign descent, which needs only ~max|theta_0| / lr steps whatever the
curvature, so a looser target (0.2) is reached by the Adam family in 3 steps at every B >= 512 -- too
coarse to resolve where scaling stops. At 0.1 the large-batch step counts are about 7 (Adam family) and 16
(SGD) with d = 10^3, about 9 and 50 with d = 10^4 (exploratory runs, best lr of a factor-2 grid). At B = 1
AdamW reaches it within the smoke budget (about 600 of 2,000 steps, d = 10^3) and SGD with momentum in
about 1,400; with d = 10^4 (full, 10^4 steps) AdamW needs about 4,600 steps at B = 1 while SGD with momentum
does not get there (drawn as "not reached").

Protocol. One run = (optimizer, batch size B, seed). Inside a run, every learning rate of the optimizer's
log grid (factor 2 apart; sqrt(2) in the paper profile) is a separate param group of ONE optimizer, each with
its own replica of theta and its own independent noise draws; all replicas share the seed's noise stream with the other optimizers
(row r of each draw goes to the r-th learning rate), so optimizers with the same grid see identical noise.
steps-to-target of a learning rate = the first step t with L(theta_t) <= tau. A run stops at max_steps,
or once every learning rate has reached the target or diverged (L > 10^3 L(theta_0) or not finite), or at
`stop_factor` times the step at which the first learning rate reached the target: a learning rate still
above tau then is at least stop_factor times slower than the run's best and is recorded as "not reached"
(censored at the stop step) -- it cannot be the tuned choice.

Tuning (figures and numbers). Per (optimizer, B) the learning rate with the smallest mean steps over seeds
(inf when any seed did not reach the target) wins; ties, and the case where no learning rate reaches the
target, go to the smallest mean loss at the runs' stop steps. `on_edge` flags a winner at either end of the
grid (the grids are chosen wide enough that no winner should be). Steps at the winner are reported as
mean +- 95% t-interval over seeds; picking the best of the grid on the same seeds is slightly optimistic
for every optimizer alike.

Critical batch size. With S(B) the tuned steps, the local scaling efficiency between consecutive batch
sizes is e = log(S(B_j) / S(B_{j+1})) / log(B_{j+1} / B_j) (1 = perfect scaling: doubling B halves the
steps, 0 = no gain). The critical batch size is the smallest B_j with e < log2(1 / 0.8) = 0.32, i.e. from
which doubling the batch size saves less than 20% of the steps. Measured steps move in integer steps and the
tuned lr in factor-2 jumps, so this first crossing is jumpy; the fitted critical batch size smooths it:
least squares of S(B) = S_min (1 + B_noise / B) (McCandlish et al. 2018) over the reached batch sizes, under
which doubling saves less than 20% beyond B = 1.5 B_noise. Both grow when small-batch steps get worse, so a
larger critical batch size is not by itself better: read it with the steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm import tqdm

from experiments import training
from experiments.e3_analysis import (Tuned, critical_batch_size, fitted_critical_batch_size, format_steps,
                                    max_relative_step_difference, tune)
from experiments.nqm import NoisyQuadratic, exact_loss
from experiments.plotting import FigureOutput, style
from experiments.runner import RunSpec
from experiments.stats import paired_difference

# Re-exported though unused here: the scaling-law analysis is part of E3's interface (its tests use it here).
from experiments.e3_analysis import SCALING_EFFICIENCY_THRESHOLD, fit_scaling_law, scaling_efficiencies  # noqa: F401

NAME = "e3_noisy_quadratic"
TITLE = "Noisy quadratic model: steps to a target loss vs batch size, tuned lr per optimizer and batch size"

# name -> (class, keyword arguments); no weight decay anywhere (the NQM optimum is 0, decay would help unfairly).
# SGD with momentum, then the Adam family as E4 builds it (experiments.training.OPTIMIZERS), all without weight
# decay so that only the optimizers' handling of the gradient noise differs.
ADAM_FAMILY = ("AdamW", "KalmanAdam-adam", "KalmanAdam-constant", "KalmanAdam-adaptive", "KalmanAdam-VA",
               "KalmanAdam-transport", "KalmanAdam-extrapolated")
OPTIMIZERS: dict[str, tuple[type, dict[str, Any]]] = {
    "SGD-momentum": (torch.optim.SGD, dict(momentum=0.9)),
    **{name: (training.OPTIMIZERS[name][0], dict(training.OPTIMIZERS[name][1], weight_decay=0.0)) for name in ADAM_FAMILY},
}
# CamelCase names for number keys (LaTeX macros take letters only).
MACRO_NAMES = {"SGD-momentum": "SGDMomentum", "AdamW": "AdamW", "KalmanAdam-adam": "KalmanAdamAdam",
               "KalmanAdam-constant": "KalmanAdamConstant", "KalmanAdam-adaptive": "KalmanAdamAdaptive",
               "KalmanAdam-VA": "KalmanAdamVA", "KalmanAdam-transport": "KalmanAdamTransport",
               "KalmanAdam-extrapolated": "KalmanAdamExtrapolated"}


def power_of_two_grid(low: int, high: int, per_octave: int = 1) -> list[float]:
    """Learning rates 2^low ... 2^high with `per_octave` points per factor 2 (1: factor-2 steps, exact in binary;
    2: factor sqrt(2))."""
    return [2.0 ** (k / per_octave) for k in range(low * per_octave, high * per_octave + 1)]


# SGD with momentum 0.9 is stable for lr * h_max < 2 (1 + 0.9) = 3.8 (h_max = 1), so 4 = 2^2 diverges and
# bounds the grid from above; the Adam family's steps are bounded (~lr per coordinate) and its best lr at
# large B is ~2^-2, but mode "extrapolated" (whose momentum carries no lag on a quadratic) takes 2^1 there, so the
# grid reaches 2^3. All Adam-type optimizers share one grid, so KalmanAdam-adam and AdamW see identical noise and
# must agree step for step. The lower ends sit 3+ octaves below the best lr at B = 1.
SGD_RANGE, ADAM_RANGE = (-9, 2), (-10, 3)


def lr_grids(per_octave: int) -> dict[str, list[float]]:
    """Every optimizer's grid over its range (SGD_RANGE or ADAM_RANGE) with `per_octave` points per factor 2."""
    return {name: power_of_two_grid(*(SGD_RANGE if name == "SGD-momentum" else ADAM_RANGE), per_octave)
            for name in OPTIMIZERS}


LR_GRIDS = lr_grids(1)
# The paper profile tunes on twice as fine a grid: at the factor-2 grid the tuned lr of two optimizers can fall on
# different sides of their optima, and a 1-2% difference in steps (the D8 target's scale) was then the grid's, not
# the optimizer's (exploratory runs: AdamW at B = 1 took ~11% fewer steps on the finer grid).
FINE_LR_GRIDS = lr_grids(2)

_COMMON = dict(target_fraction=0.1, init="normal", init_seed=12345, stop_factor=1.5, divergence_factor=1e3,
               curve_points=40, optimizers=list(OPTIMIZERS), lr_grids=LR_GRIDS)
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(_COMMON, dim=1000, batch_sizes=[2**k for k in range(13)], max_steps=2000, seeds=[0]),
    # Paper scale on the 2-core CPU (issue 14): every batch size 1..4096 as in smoke, 5 seeds for intervals on the
    # steps-to-target ratios, twice the step cap (smoke: 32 s for 91 runs with one seed; this: ~5 minutes).
    "paper": dict(_COMMON, dim=1000, batch_sizes=[2**k for k in range(13)], max_steps=4000, seeds=[0, 1, 2, 3, 4],
                  lr_grids=FINE_LR_GRIDS),
    "full": dict(_COMMON, dim=10000, batch_sizes=[2**k for k in range(0, 13, 2)], max_steps=10000, seeds=[0, 1, 2]),
}


# ------------------------------------------------------------------------------------------ plan / execute
def plan(settings: dict, seeds: list[int], done: dict[str, dict]) -> list[RunSpec]:
    """One run per (optimizer, batch size, seed); each run sweeps the optimizer's whole lr grid at once."""
    base = {k: settings[k] for k in ("dim", "max_steps", "target_fraction", "init", "init_seed", "stop_factor",
                                     "divergence_factor", "curve_points")}
    specs = []
    for optimizer in settings["optimizers"]:
        for batch_size in settings["batch_sizes"]:
            for seed in seeds:
                config = dict(base, optimizer=optimizer, batch_size=int(batch_size),
                              lrs=[float(lr) for lr in settings["lr_grids"][optimizer]], seed=int(seed))
                specs.append(RunSpec(f"{optimizer}_B={batch_size}_seed{seed}", config))
    return specs


def initial_point(dim: int, init: str, init_seed: int) -> torch.Tensor:
    """theta_0: N(0, I) from a generator seeded with init_seed (the same for every run), or all ones."""
    if init == "normal":
        return torch.randn(dim, generator=torch.Generator().manual_seed(int(init_seed)))
    if init == "ones":
        return torch.ones(dim)
    raise ValueError(f"Invalid init: expected 'normal' or 'ones', got {init!r}")


def make_optimizer(name: str, params: Sequence[torch.nn.Parameter], lrs: Sequence[float]) -> torch.optim.Optimizer:
    """Optimizer `name` with one param group per (parameter, learning rate) pair."""
    if name not in OPTIMIZERS:
        raise ValueError(f"Invalid optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
    cls, kwargs = OPTIMIZERS[name]
    return cls([{"params": [p], "lr": float(lr)} for p, lr in zip(params, lrs, strict=True)], **kwargs)


def curve_steps(max_steps: int, points: int) -> list[int]:
    """About `points` log-spaced steps in [0, max_steps] (0 = the initial point) for the loss curves."""
    return sorted({0} | {int(round(s)) for s in np.geomspace(1, max_steps, points)})


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _iterate_loss(problem: NoisyQuadratic, optimizer: torch.optim.Optimizer) -> np.ndarray:
    """L at the iterate (training.at_iterate: mode "extrapolated" holds the extrapolated point in its parameters)."""
    with training.at_iterate(optimizer):
        return problem.loss().cpu().numpy()


def execute(config: dict, device: torch.device) -> dict:
    """Every lr of the grid on its own replica, stepped together until the stop rule (module docstring).

    Metrics per lr (lists in grid order): steps_to_target (None = not reached by the stop step),
    final_loss_fraction (L / L(theta_0) at the stop step), diverged. Curves: L / L(theta_0) per lr at ~40
    log-spaced steps."""
    lrs = [float(lr) for lr in config["lrs"]]
    generator = torch.Generator(device=device).manual_seed(int(config["seed"]))
    problem = NoisyQuadratic(int(config["dim"]), int(config["batch_size"]), len(lrs), device=device,
                             generator=generator)
    problem.theta.copy_(initial_point(int(config["dim"]), config["init"], config["init_seed"]).to(device))
    optimizer = make_optimizer(config["optimizer"], problem.params, lrs)

    initial = float(exact_loss(problem.theta[0].cpu(), problem.curvature.cpu()))
    target = config["target_fraction"] * initial
    max_steps, stop_factor = int(config["max_steps"]), float(config["stop_factor"])
    reached = np.full(len(lrs), -1, dtype=np.int64)  # first step with L <= target, -1 while not yet
    diverged = np.zeros(len(lrs), dtype=bool)
    record = set(curve_steps(max_steps, int(config["curve_points"])))
    steps_recorded, losses_recorded = [0], [np.full(len(lrs), 1.0)]
    first_hit, step, loss = None, 0, np.full(len(lrs), initial)
    bar = tqdm(range(1, max_steps + 1), desc=f"e3 {config['optimizer']} B={config['batch_size']}", leave=False,
               mininterval=1.0)
    for step in bar:
        problem.set_noisy_gradients()
        optimizer.step()
        loss = _iterate_loss(problem, optimizer)
        diverged |= ~np.isfinite(loss) | (loss > config["divergence_factor"] * initial)
        newly = (loss <= target) & (reached < 0) & ~diverged
        reached[newly] = step
        if first_hit is None and newly.any():
            first_hit = step
        if step in record:
            steps_recorded.append(step)
            losses_recorded.append(loss / initial)
        if ((reached > 0) | diverged).all() or (first_hit is not None and step >= stop_factor * first_hit):
            break
    bar.close()
    if steps_recorded[-1] != step:  # always end the curves at the stop step
        steps_recorded.append(step)
        losses_recorded.append(loss / initial)
    final = loss / initial
    metrics = dict(
        lrs=lrs,
        steps_to_target=[int(s) if s > 0 else None for s in reached],
        final_loss_fraction=[_finite_or_none(v) for v in final],
        diverged=[bool(d) for d in diverged],
        stop_step=int(step),
        first_hit=first_hit,
        initial_loss=initial,
        target_loss=target,
    )
    curves = dict(step=steps_recorded,
                  loss_fraction=[[_finite_or_none(v) for v in column] for column in np.stack(losses_recorded).T])
    return dict(metrics=metrics, curves=curves)


# ------------------------------------------------------------------------------------------ figures / numbers
def _curve(tuned: dict[tuple[str, int], Tuned], name: str) -> tuple[list[int], list[float]]:
    sizes = sorted(b for (n, b) in tuned if n == name)
    return sizes, [tuned[(name, b)].steps.mean for b in sizes]


def _present(runs: list[dict]) -> list[str]:
    names = {r["config"]["optimizer"] for r in runs}
    return [n for n in OPTIMIZERS if n in names]


def _describe(runs: list[dict]) -> str:
    config = runs[0]["config"]
    seeds = sorted({int(r["config"]["seed"]) for r in runs})
    return (f"d = {config['dim']:,}, target {config['target_fraction']:g} × L(θ0), budget {config['max_steps']:,} "
            f"steps, {len(seeds)} seed{'s' if len(seeds) > 1 else ''}")


def figures(runs: list[dict], out: FigureOutput) -> None:
    if not runs:
        return
    tuned = tune(runs)
    names = _present(runs)
    max_steps = int(runs[0]["config"]["max_steps"])
    fig, (ax_steps, ax_lr) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    anchor = None  # perfect scaling through the fewest steps at the smallest batch size reached by anyone
    for i, name in enumerate(names):
        sizes, steps = _curve(tuned, name)
        st = style(i)
        reached = [j for j, s in enumerate(steps) if math.isfinite(s)]
        estimates = [tuned[(name, sizes[j])].steps for j in reached]
        errors = np.array([[e.mean - e.low, e.high - e.mean] if math.isfinite(e.half_width) else [0.0, 0.0]
                           for e in estimates]).T.reshape(2, -1)
        ax_steps.errorbar([sizes[j] for j in reached], [steps[j] for j in reached], yerr=errors, label=name,
                          capsize=2, **st)
        missed = [sizes[j] for j in range(len(sizes)) if j not in reached]
        if missed:  # drawn at the budget as open markers: "not reached within max_steps"
            ax_steps.plot(missed, [max_steps] * len(missed), linestyle="none", marker=st["marker"],
                          markerfacecolor="none", color=st["color"], markersize=7)
        if reached:
            b0, s0 = sizes[reached[0]], steps[reached[0]]
            if anchor is None or b0 < anchor[0] or (b0 == anchor[0] and s0 < anchor[1]):
                anchor = (b0, s0)
        lrs = [tuned[(name, b)].lr for b in sizes]
        ax_lr.plot(sizes, lrs, label=name, **st)
        if missed:  # no lr reached the target: the lr with the lowest final loss, drawn open
            ax_lr.plot(missed, [tuned[(name, b)].lr for b in missed], linestyle="none", marker=st["marker"],
                       markerfacecolor="white", color=st["color"], markersize=7)
        edge = [(b, tuned[(name, b)].lr) for b in sizes if tuned[(name, b)].on_edge]
        if edge:
            ax_lr.plot(*zip(*edge), linestyle="none", marker="o", markersize=11, markerfacecolor="none",
                       color="#D55E00")
    all_sizes = sorted({b for (_, b) in tuned})
    if anchor is not None:
        ax_steps.plot(all_sizes, [anchor[1] * anchor[0] / b for b in all_sizes], color="#777777", linestyle="--",
                      linewidth=1, label="perfect scaling (∝ 1/B)")
    ax_steps.axhline(max_steps, color="#777777", linestyle=":", linewidth=0.8)
    for ax in (ax_steps, ax_lr):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B (examples per step)")
    ax_steps.set_ylim(bottom=max(0.5, 0.5 * min((s for n in names for s in _curve(tuned, n)[1] if s > 0),
                                                default=1)), top=2 * max_steps)
    ax_steps.set_ylabel("steps to target loss (steps)")
    ax_steps.set_title(f"tuned steps to target; open markers: not reached in {max_steps:,} steps")
    ax_lr.set_ylabel("tuned learning rate (lr units)")
    ax_lr.set_title("tuned lr; open: target not reached; red circle: grid edge")
    ax_steps.legend(loc="upper right")
    fig.suptitle(f"E3 noisy quadratic model, h_i = 1/i, steps to target vs batch size ({out.profile} profile)\n"
                 f"{_describe(runs)}; lr tuned per optimizer and B; mean ± 95% CI over seeds")
    out.save(fig, "e3_steps_vs_batch")

    _loss_curve_figure(runs, tuned, names, out)

    header = ["B"] + names
    rows = []
    for b in all_sizes:
        row = [f"{b:,}"]
        for name in names:
            t = tuned.get((name, b))
            if t is None:
                row.append("-")
                continue
            steps = format_steps(t.steps) if t.reached else "not reached"
            row.append(f"{steps} ({t.lr:.2g}{'*' if t.on_edge else ''})")
        rows.append(row)
    critical = ["critical B"]
    for name in names:
        sizes, steps = _curve(tuned, name)
        value = critical_batch_size(sizes, steps)
        critical.append(f"{value:,}" if value is not None else f"{sizes[-1]:,} or more")
    rows.append(critical)
    fitted = ["critical B (fit)"]
    for name in names:
        value = fitted_critical_batch_size(*_curve(tuned, name))
        fitted.append(f"{value:,.0f}" if math.isfinite(value) else "-")
    rows.append(fitted)
    out.table("e3_steps_vs_batch", header, rows, align="r" + "r" * len(names),
              caption=f"E3 ({out.profile} profile): noisy quadratic model, {_describe(runs)}. Cells: steps to reach "
                      "the target at the tuned learning rate (mean ± 95% t-interval half-width over seeds) and, in "
                      "parentheses, that learning rate (* = on the edge of the grid). Critical B: the smallest batch "
                      "size from which doubling B (to the next size) saves less than 20% of the steps; (fit): the "
                      "same from a least-squares fit of S(B) = S_min (1 + B_noise / B), i.e. 1.5 B_noise.")


def _loss_curve_figure(runs: list[dict], tuned: dict[tuple[str, int], Tuned], names: list[str],
                       out: FigureOutput) -> None:
    """Loss / L(theta_0) against step at the tuned lr (first seed), at the smallest and largest batch size."""
    sizes = sorted({b for (_, b) in tuned})
    panels = [sizes[0], sizes[-1]] if len(sizes) > 1 else sizes
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
    target = float(runs[0]["config"]["target_fraction"])
    for ax, batch_size in zip(axes[0], panels):
        for i, name in enumerate(names):
            t = tuned.get((name, batch_size))
            if t is None:
                continue
            run = next(r for r in runs if r["config"]["optimizer"] == name and
                       int(r["config"]["batch_size"]) == batch_size and int(r["config"]["seed"]) == t.seeds[0])
            steps = run["curves"]["step"]
            losses = run["curves"]["loss_fraction"][t.lr_index]
            points = [(max(s, 0.8), v) for s, v in zip(steps, losses) if v is not None]  # step 0 shown at 0.8
            if points:
                ax.plot(*zip(*points), label=f"{name} (lr {t.lr:.2g})", **dict(style(i), markersize=2.5))
        ax.axhline(target, color="#777777", linestyle="--", linewidth=1, label="target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.2 * target)  # room for the legend below the curves
        ax.set_xlabel("step (steps; step 0 drawn at 0.8)")
        ax.set_ylabel("loss L(θ) / L(θ0) (fraction of initial)")
        ax.set_title(f"B = {batch_size:,}, tuned lr, seed {t.seeds[0] if t else '-'}")
        ax.legend(loc="lower left", fontsize=6, framealpha=0.6)
    fig.suptitle(f"E3 loss curves at the tuned learning rate ({out.profile} profile)\n{_describe(runs)}; "
                 f"a run stops at {runs[0]['config']['stop_factor']:g} × the step its best lr reached the target")
    out.save(fig, "e3_loss_curves")


def numbers(runs: list[dict]) -> dict[str, float | int | str]:
    """Headline numbers: critical batch size per optimizer (module docstring), KalmanAdam-adaptive / AdamW
    tuned-steps ratios at the smallest and largest batch size, how exactly KalmanAdam-adam reproduces AdamW,
    and how many tuned learning rates sit on a grid edge."""
    if not runs:
        return {}
    tuned = tune(runs)
    names = _present(runs)
    config = runs[0]["config"]
    out: dict[str, float | int | str] = dict(
        Dim=int(config["dim"]), TargetFraction=float(config["target_fraction"]), MaxSteps=int(config["max_steps"]),
        Seeds=len({int(r["config"]["seed"]) for r in runs}),
        LrPointsPerOctave=round(1 / math.log2(runs[0]["config"]["lrs"][1] / runs[0]["config"]["lrs"][0])),
        OnEdgeCount=sum(t.on_edge for t in tuned.values()), TunedCount=len(tuned),
        NotReachedCount=sum(not t.reached for t in tuned.values()))
    for name in names:
        sizes, steps = _curve(tuned, name)
        value = critical_batch_size(sizes, steps)
        out[f"CriticalBatch{MACRO_NAMES[name]}"] = value if value is not None else f"{sizes[-1]:,} or more"
        out[f"FittedCriticalBatch{MACRO_NAMES[name]}"] = fitted_critical_batch_size(sizes, steps)
        for label, value in (("SmallestBatch", steps[0]), ("LargestBatch", steps[-1])):
            out[f"Steps{label}{MACRO_NAMES[name]}"] = value if math.isfinite(value) else "not reached"
    if "KalmanAdam-adaptive" in names and "AdamW" in names:
        sizes, adaptive = _curve(tuned, "KalmanAdam-adaptive")
        _, adamw = _curve(tuned, "AdamW")
        max_steps = int(config["max_steps"])
        for label, index in (("SmallestBatch", 0), ("LargestBatch", -1)):
            key = f"AdaptiveOverAdamWSteps{label}"
            if math.isfinite(adaptive[index]) and math.isfinite(adamw[index]):
                out[key] = adaptive[index] / adamw[index]
            elif math.isfinite(adamw[index]):  # adaptive missed the target: the ratio is at least budget / AdamW
                out[key] = f"more than {max_steps / adamw[index]:.2g}"
            else:
                out[key] = "n/a (AdamW did not reach the target)"
    for name, prefix in (("KalmanAdam-transport", "Transport"), ("KalmanAdam-extrapolated", "Extrapolated")):
        if name not in names or "AdamW" not in names:
            continue
        # D8's target: no more steps than AdamW at any batch size (each at its own tuned lr).
        sizes, steps = _curve(tuned, name)
        _, adamw = _curve(tuned, "AdamW")
        ratios = [a / b for a, b in zip(steps, adamw) if math.isfinite(a) and math.isfinite(b)]
        small = [a / b for size, a, b in zip(sizes, steps, adamw) if size <= 16 and math.isfinite(a * b)]
        # Three decimals: a ratio of 1.005 printed with three significant digits would read "1", a pass.
        out.update({f"{prefix}OverAdamWWorst": f"{max(ratios):.3f}", f"{prefix}OverAdamWBest": f"{min(ratios):.3f}",
                    f"{prefix}OverAdamWWorstSmallBatch": f"{max(small):.3f}",
                    f"{prefix}OverAdamWBestSmallBatch": f"{min(small):.3f}",
                    f"{prefix}NotMoreStepsCount": sum(r <= 1 for r in ratios), f"{prefix}ComparedCount": len(ratios)})
        # Where the ratio is worst: the paired (by seed: the same noise at the same lr row) step difference.
        worst = max((b for b, a, w in zip(sizes, steps, adamw) if math.isfinite(a * w)),
                    key=lambda b: tuned[(name, b)].steps.mean / tuned[("AdamW", b)].steps.mean)
        difference = paired_difference(tuned[(name, worst)].steps_per_seed, tuned[("AdamW", worst)].steps_per_seed)
        out.update({f"{prefix}WorstBatch": worst, f"{prefix}WorstStepDifference": difference.mean,
                    f"{prefix}WorstStepDifferenceLow": difference.low,
                    f"{prefix}WorstStepDifferenceHigh": difference.high})
    if "KalmanAdam-adam" in names and "AdamW" in names:
        worst, mismatched, compared = max_relative_step_difference(runs, "KalmanAdam-adam", "AdamW")
        out.update(AdamVsAdamWMaxRelativeStepDifference=worst, AdamVsAdamWReachedMismatches=mismatched,
                   AdamVsAdamWPointsCompared=compared)
    return out
