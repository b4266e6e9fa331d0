"""E4 at a tiny size: the two-stage plan with grid widening, the AdamW sanity row, and the outputs (three tasks,
and the two of the smoke profile without the ResNet)."""

import math

import numpy as np
import pytest
import torch

from experiments import e4_training as e4
from experiments.plotting import FigureOutput
from tests.experiments.helpers import run_tiny

CPU = torch.device("cpu")
TINY = dict(
    tasks=dict(fashion_mnist=dict(train_size=256, eval_size=128, batch_size=32, channels=(4, 8), hidden=16),
               shakespeare=dict(batch_size=4, context=16, width=16, layers=1, heads=2, eval_windows=16,
                                train_chars=20000),
               fashion_mnist_resnet=dict(train_size=256, eval_size=128, batch_size=32, channels=(4, 8, 8),
                                         stem_stride=2)),
    optimizers=["AdamW", "KalmanAdam-adam", "KalmanLAMB-PW"],
    lr_low=1e-3, lr_high=1e-1, lr_count=3, max_extra_lrs=1, weight_decay=0.0, tuning_seed=0, target_slack=0.05,
    steps=10, eval_every=5, seeds=[0, 1],
)
# Synthetic plans: one task and optimizer, a 3-point grid 1e-3, 1e-2, 1e-1 (ratio 10) widened by up to 2 points.
SYNTHETIC = dict(TINY, tasks=dict(fashion_mnist={}), optimizers=["AdamW"], max_extra_lrs=2)


def fake_result(config: dict, val_loss: float, test_loss: float | None = None) -> dict:
    diverged = not math.isfinite(val_loss)
    test = val_loss if test_loss is None else test_loss
    return dict(run_id=e4.run_id(config["task"], config["optimizer"], config["lr"], config["seed"]), config=config,
                metrics=dict(val_loss=val_loss, test_loss=test, val_accuracy=0.5, test_accuracy=0.5,
                             diverged=diverged, steps_done=config["steps"]),
                curves=dict(eval_steps=[5, 10], val_loss=[val_loss + 1, val_loss], val_accuracy=[0.4, 0.5],
                            train_loss=[1.0, 1.0]))


def simulate(settings: dict, seeds: list[int], loss_of) -> dict[str, dict]:
    """Play the runner: call plan() until it asks for nothing new, answering each run with loss_of(config)."""
    done: dict[str, dict] = {}
    for _ in range(20):
        new = [s for s in e4.plan(settings, seeds, done) if s.run_id not in done]
        if not new:
            return done
        for spec in new:
            done[spec.run_id] = fake_result(spec.config, *loss_of(spec.config))
    raise AssertionError("plan() kept asking for runs")


def test_stage_two_only_after_stage_one_and_reuses_the_tuning_run():
    first = e4.plan(SYNTHETIC, [0, 1, 2], {})
    assert [(s.config["lr"], s.config["seed"]) for s in first] == [(1e-3, 0), (1e-2, 0), (1e-1, 0)]
    # Two of three tuning runs: still stage 1.
    done = {s.run_id: fake_result(s.config, v) for s, v in zip(first[:2], (2.0, 1.0))}
    assert len(e4.plan(SYNTHETIC, [0, 1, 2], done)) == 3
    done[first[2].run_id] = fake_result(first[2].config, 1.5)
    second = e4.plan(SYNTHETIC, [0, 1, 2], done)
    extra = [s for s in second if s.run_id not in done]
    # Interior best (1e-2): no widening; seeds 1 and 2 at 1e-2; seed 0's tuning run is reused (same id).
    assert [(s.config["lr"], s.config["seed"]) for s in extra] == [(1e-2, 1), (1e-2, 2)]
    assert all(s.config == dict(first[1].config, seed=s.config["seed"]) for s in extra)
    assert len({s.run_id for s in second}) == len(second) == 5


def test_grid_widens_beyond_an_edge_at_the_same_log_spacing_up_to_the_limit():
    # Loss falls with lr everywhere: the best is always the top edge, so 2 points are added above: 1, 10.
    done = simulate(SYNTHETIC, [0, 1], lambda c: (1.0 / c["lr"],))
    state = e4.tuning_state(e4.tuning_config(SYNTHETIC), "fashion_mnist", "AdamW", done)
    assert state.grid == [1e-3, 1e-2, 1e-1, 1.0, 10.0] and state.extra == 2
    assert state.best_lr == 10.0 and state.on_edge
    assert {(r["config"]["lr"], r["config"]["seed"]) for r in done.values() if r["config"]["seed"] == 1} == {(10.0, 1)}
    # The minimum (lr = 10^-0.6) between the top edge 0.1 and 1: one point added (1.0, worse), so 0.1 is
    # interior and not on the edge.
    done = simulate(SYNTHETIC, [0], lambda c: ((math.log10(c["lr"]) + 0.6) ** 2,))
    state = e4.tuning_state(e4.tuning_config(SYNTHETIC), "fashion_mnist", "AdamW", done)
    assert state.grid == [1e-3, 1e-2, 1e-1, 1.0] and state.best_lr == 1e-1 and not state.on_edge
    # Everything above 1e-3 diverges (+inf) and 1e-3 is the lowest: widen downward, 1e-4 then 1e-5.
    done = simulate(SYNTHETIC, [0], lambda c: (c["lr"] * 1e3 if c["lr"] < 2e-3 else math.inf,))
    state = e4.tuning_state(e4.tuning_config(SYNTHETIC), "fashion_mnist", "AdamW", done)
    assert state.grid[:2] == [1e-5, 1e-4] and state.best_lr == 1e-5 and state.on_edge
    assert math.isinf(state.losses[1e-1])


def test_extended_grid_points_continue_lr_grid():
    from experiments import training

    grid = training.lr_grid(1e-4, 1e-1, 7)
    assert [e4.extended_lr(1e-4, 1e-1, 7, i) for i in range(7)] == grid
    assert e4.extended_lr(1e-4, 1e-1, 7, -1) == pytest.approx(1e-4 / 10 ** 0.5, rel=1e-2)
    assert e4.extended_lr(1e-4, 1e-1, 7, 7) == pytest.approx(10 ** -0.5, rel=1e-2)


def test_paired_differences_target_and_counts_from_synthetic_runs():
    """A constant +0.5 shift over seeds with a large seed-to-seed spread: significant when paired."""
    settings = dict(SYNTHETIC, optimizers=["AdamW", "KalmanAdam-constant"], max_extra_lrs=0)
    shift = {"AdamW": 0.0, "KalmanAdam-constant": 0.5}

    def loss_of(c):
        base = 1.0 + c["seed"] + abs(math.log10(c["lr"]) + 2)  # best lr 1e-2, seeds differ by 1
        return base + shift[c["optimizer"]], base + shift[c["optimizer"]]

    runs = list(simulate(settings, [0, 1, 2], loss_of).values())
    rows = {r.optimizer: r for r in e4.summarize(runs)}
    kalman = rows["KalmanAdam-constant"]
    assert kalman.tuning.best_lr == 1e-2 and kalman.seeds == [0, 1, 2]
    assert kalman.test_loss_vs_baseline.mean == pytest.approx(0.5)
    assert kalman.test_loss_vs_baseline.half_width == pytest.approx(0.0, abs=1e-12)
    assert kalman.test_loss.half_width > 1  # unpaired, the spread over seeds dominates
    # Target = 1.05 x AdamW's mean final val loss (1, 2, 3 -> 2.1). Each curve is [loss + 1, loss] at steps
    # 5, 10: AdamW's seed 0 reaches 2.1 at step 5, seed 1 at step 10, seed 2 never; the shifted runs only seed 0.
    assert kalman.target == pytest.approx(2.1)
    assert rows["AdamW"].reached == 2 and rows["AdamW"].steps_to_target.mean == pytest.approx(7.5)
    assert kalman.reached == 1 and kalman.steps_to_target.mean == 10
    numbers = e4.numbers(runs)
    assert numbers["FashionConstantLossDiff"] == pytest.approx(0.5)
    assert numbers["FashionWorseCount"] == 1 and numbers["FashionBetterCount"] == 0
    assert numbers["FashionWorseVariants"] == "KalmanAdam-constant" and numbers["FashionBetterVariants"] == "none"
    assert numbers["FashionBestKalmanVariant"] == "KalmanAdam-constant"
    assert numbers["FashionAdamWLr"] == 1e-2


def test_steps_ratio_to_adamw_is_paired_by_seed_and_geometric():
    """Curves reach the target at different steps per seed; the ratio pairs seed i with AdamW's seed i."""
    settings = dict(SYNTHETIC, optimizers=["AdamW", "KalmanAdam-constant"], max_extra_lrs=0)
    runs = simulate(settings, [0, 1, 2], lambda c: (1.0 + abs(math.log10(c["lr"]) + 2),))
    # Rewrite the best-lr curves: AdamW reaches 1.05 at steps 10, 20, 40 (seeds 0, 1, 2); the Kalman variant at
    # 5, 10, 20: half the steps on every seed, so the paired ratio is 0.5 with a zero-width interval.
    reach = {"AdamW": {0: 10, 1: 20, 2: 40}, "KalmanAdam-constant": {0: 5, 1: 10, 2: 20}}
    for r in runs.values():
        c = r["config"]
        if c["lr"] == 1e-2:
            step = reach[c["optimizer"]][c["seed"]]
            r["curves"]["eval_steps"] = [5, 10, 20, 40]
            r["curves"]["val_loss"] = [1.0 if s >= step else 2.0 for s in (5, 10, 20, 40)]
    rows = {r.optimizer: r for r in e4.summarize(list(runs.values()))}
    ratio = rows["KalmanAdam-constant"].steps_ratio_to_baseline
    assert ratio.n == 3 and ratio.mean == pytest.approx(0.5)
    assert ratio.low == pytest.approx(0.5) and ratio.high == pytest.approx(0.5)
    # Unpaired means would give 11.7 / 23.3 = 0.5 too, but a seed that AdamW never reaches is left out of the pairs.
    for r in runs.values():
        c = r["config"]
        if c["lr"] == 1e-2 and c["optimizer"] == "AdamW" and c["seed"] == 2:
            r["curves"]["val_loss"] = [2.0] * 4
    rows = {r.optimizer: r for r in e4.summarize(list(runs.values()))}
    assert rows["KalmanAdam-constant"].steps_ratio_to_baseline.n == 2
    numbers = e4.numbers(list(runs.values()))
    assert numbers["FashionConstantStepsRatio"] == pytest.approx(rows["KalmanAdam-constant"].steps_ratio_to_baseline.mean)
    assert numbers["FashionFewerStepsVariants"] == "KalmanAdam-constant" and numbers["FashionMoreStepsVariants"] == "none"
    assert "SanityComparedRuns" not in numbers  # no KalmanAdam-adam runs: no sanity numbers (not "0 of 0")


def test_task_optimizers_restrict_one_task_and_reject_unknown_names():
    settings = dict(SYNTHETIC, tasks=dict(fashion_mnist={}, shakespeare={}), optimizers=["AdamW", "LAMB"],
                    task_optimizers=dict(shakespeare=["LAMB"]))
    tasks_and_optimizers = {(s.config["task"], s.config["optimizer"]) for s in e4.plan(settings, [0], {})}
    assert tasks_and_optimizers == {("fashion_mnist", "AdamW"), ("fashion_mnist", "LAMB"), ("shakespeare", "LAMB")}
    with pytest.raises(ValueError, match="task_optimizers"):
        e4.plan(dict(settings, task_optimizers=dict(shakespeare=["SGD"])), [0], {})


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e4_results")
    return run_tiny(e4, TINY, root)


def test_tiny_experiment_completes_both_stages(tiny_runs):
    rows = e4.summarize(tiny_runs)
    assert {(r.task, r.optimizer) for r in rows} == {(t, o) for t in TINY["tasks"] for o in TINY["optimizers"]}
    for row in rows:
        assert row.seeds == [0, 1] and row.tuning.best_lr in row.tuning.grid
        assert len(row.tuning.grid) in (3, 4)
        assert all(math.isfinite(row.tuning.losses[lr]) or lr >= 0.1 for lr in row.tuning.grid)
    first = tiny_runs[0]
    again = e4.execute(first["config"], CPU)
    assert again["metrics"] == first["metrics"]


def test_kalman_adam_with_adam_noise_tracks_adamw_exactly(tiny_runs):
    largest, pairs = e4.sanity_difference(tiny_runs)
    assert pairs >= 3 * (3 + 1)  # every grid lr of the three tasks plus seed 1 at the best lr
    assert largest < 1e-5
    rows = {(r.task, r.optimizer): r for r in e4.summarize(tiny_runs)}
    for task in TINY["tasks"]:
        assert rows[(task, "KalmanAdam-adam")].tuning.best_lr == rows[(task, "AdamW")].tuning.best_lr


class PanelRecorder(FigureOutput):
    """A FigureOutput that also records the titled panels (axes) of every figure it saves."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.panels: dict[str, list[str]] = {}

    def save(self, fig, name):
        self.panels[name] = [ax.get_title() for ax in fig.axes if ax.get_title()]
        return super().save(fig, name)


def test_figures_table_and_numbers_are_written(tiny_runs, tmp_path):
    out = PanelRecorder(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path)
    e4.figures(tiny_runs, out)
    for name in ("e4_lr_sweep.pdf", "e4_lr_sweep.png", "e4_curves.pdf", "e4_curves.png", "e4_results.tex",
                 "e4_results.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert out.panels["e4_lr_sweep"] == [e4.TASK_TITLES[t] for t in e4.TASKS]  # one panel per task, in order
    assert len(out.panels["e4_curves"]) == 3
    table = (tmp_path / "e4_results.md").read_text()
    assert all(name in table for name in TINY["optimizers"]) and "baseline" in table
    assert "| Fashion-MNIST ResNet | AdamW |" in table and "| Fashion-MNIST | AdamW |" in table
    numbers = e4.numbers(tiny_runs)
    for prefix in ("Fashion", "ResNet", "Shakespeare"):
        assert 0.0 < numbers[f"{prefix}AdamWTestAccuracy"] <= 1.0
        assert math.isfinite(numbers[f"{prefix}LAMBPWLossDiff"])
        assert numbers[f"{prefix}BestKalmanVariant"] == "KalmanLAMB-PW"
        # The median wall time per step of the task's AdamW runs, from the runs' own records.
        adamw = [1e3 * r["wall_time_s"] / r["metrics"]["steps_done"] for r in tiny_runs
                 if r["config"]["optimizer"] == "AdamW" and e4.TASK_KEYS[r["config"]["task"]] == prefix]
        assert numbers[f"{prefix}AdamWMillisecondsPerStep"] == pytest.approx(float(np.median(adamw)), abs=0.051)
    assert numbers["SanityMaxAbsDifference"] < 1e-5 and numbers["Seeds"] == 2
    assert all(k.isalpha() and k[0].isupper() for k in numbers)
    assert all(isinstance(v, str) or math.isfinite(v) for v in numbers.values())


def test_outputs_without_the_resnet_task_have_no_panel_or_numbers_for_it(tiny_runs, tmp_path):
    """The smoke and full profiles do not train the ResNet: its panels, rows and numbers are simply absent."""
    runs = [r for r in tiny_runs if r["config"]["task"] != "fashion_mnist_resnet"]
    out = PanelRecorder(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path)
    e4.figures(runs, out)
    assert out.panels["e4_lr_sweep"] == [e4.TASK_TITLES["fashion_mnist"], e4.TASK_TITLES["shakespeare"]]
    assert len(out.panels["e4_curves"]) == 2
    assert "ResNet" not in (tmp_path / "e4_results.md").read_text()
    numbers = e4.numbers(runs)
    assert "FashionAdamWTestAccuracy" in numbers and not any(k.startswith("ResNet") for k in numbers)


def test_resnet_is_in_the_paper_profile_only():
    """Adding it elsewhere would leave the committed smoke (and full) results incomplete."""
    assert "fashion_mnist_resnet" in e4.PROFILES["paper"]["tasks"]
    assert all("fashion_mnist_resnet" not in e4.PROFILES[p]["tasks"] for p in ("smoke", "full"))
    assert set(e4.TASKS) == set(e4.TASK_TITLES) == set(e4.TASK_KEYS) == set(e4.TASK_TABLE_NAMES)
    assert all(key.isalpha() for key in e4.TASK_KEYS.values())


def test_precision_weighting_is_compared_with_plain_lamb_for_each_uncertainty():
    """KalmanLAMB with precision weighting against plain LAMB, paired by seed, on the zero-memory and on the
    innovation uncertainty (the paper profile runs only the latter)."""
    shift = {"AdamW": 0.0, "LAMB": 0.2, "KalmanLAMB-PW": 0.5, "KalmanLAMB-innovation-PW": 0.1}

    def loss_of(c):
        base = 1.0 + c["seed"] + abs(math.log10(c["lr"]) + 2)
        return base + shift[c["optimizer"]], base + shift[c["optimizer"]]

    for optimizers, expected in ((["AdamW", "LAMB", "KalmanLAMB-PW", "KalmanLAMB-innovation-PW"],
                                  {"": 0.3, "Innovation": -0.1}),
                                 (["AdamW", "LAMB", "KalmanLAMB-innovation-PW"], {"Innovation": -0.1})):
        settings = dict(SYNTHETIC, optimizers=optimizers, max_extra_lrs=0)
        numbers = e4.numbers(list(simulate(settings, [0, 1, 2], loss_of).values()))
        found = {key: numbers[f"Fashion{key}PrecisionWeightingLossDiff"] for key in ("", "Innovation")
                 if f"Fashion{key}PrecisionWeightingLossDiff" in numbers}
        assert found == pytest.approx(expected)
