"""E3 at a tiny size: the noisy quadratic model's loss and noise, the lr sweep inside one run, tuning,
the critical batch size, and the figure/table/number outputs."""

import math

import pytest
import torch

from experiments import e3_noisy_quadratic as e3
from experiments import nqm
from experiments.plotting import FigureOutput
from tests.experiments.helpers import run_tiny

CPU = torch.device("cpu")
TINY = dict(e3.PROFILES["smoke"], dim=100, batch_sizes=[1, 64, 4096], max_steps=400, seeds=[0],
            lr_grids={name: (e3.power_of_two_grid(-7, 2) if name == "SGD-momentum" else e3.power_of_two_grid(-8, 1))
                      for name in e3.OPTIMIZERS})


def tiny_config(optimizer: str, batch_size: int, seed: int = 0, **changes) -> dict:
    settings = dict(TINY, **changes)
    return next(s.config for s in e3.plan(settings, [seed], {})
                if s.config["optimizer"] == optimizer and s.config["batch_size"] == batch_size)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e3_results")
    return run_tiny(e3, TINY, root)


# ------------------------------------------------------------------------------------------ the model
def test_curvatures_and_initial_loss():
    h = nqm.curvatures(5, torch.float64)
    assert torch.allclose(h, torch.tensor([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5], dtype=torch.float64))
    assert nqm.initial_loss(5) == pytest.approx(0.5 * (1 + 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5))
    assert float(nqm.exact_loss(torch.ones(5), nqm.curvatures(5))) == pytest.approx(nqm.initial_loss(5), rel=1e-6)
    theta = torch.tensor([[2.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    assert nqm.exact_loss(theta, nqm.curvatures(3)).tolist() == pytest.approx([0.5 * (4 + 3), 0.25])


def test_exact_loss_matches_monte_carlo_of_the_minibatch_loss():
    """E[L_B(theta)] = L(theta) + d/2 (the centres' irreducible part tr(H H^-1) / 2), for any batch size."""
    generator = torch.Generator().manual_seed(0)
    dim = 20
    h = nqm.curvatures(dim, torch.float64)
    theta = 3 * torch.randn(dim, generator=generator, dtype=torch.float64)
    exact = float(nqm.exact_loss(theta, h))
    for batch_size in (1, 16):
        samples = torch.stack([nqm.sample_minibatch_loss(theta, h, batch_size, generator) for _ in range(4000)])
        excess = samples - dim / 2
        standard_error = float(excess.std() / math.sqrt(samples.numel()))
        assert standard_error < 0.02 * exact  # the test can tell a wrong constant or a missing factor
        assert abs(float(excess.mean()) - exact) < 4 * standard_error


def test_minibatch_loss_gradient_has_mean_h_theta_and_covariance_h_over_b():
    """The autograd gradient of L_B is h * (theta - c_bar), c_bar ~ N(0, H^-1 / B): mean h*theta, variance h/B."""
    generator = torch.Generator().manual_seed(1)
    dim, batch_size = 8, 4
    h = nqm.curvatures(dim, torch.float64)
    theta = torch.linspace(-2, 2, dim, dtype=torch.float64)
    grads = []
    for _ in range(3000):
        point = theta.clone().requires_grad_(True)
        nqm.sample_minibatch_loss(point, h, batch_size, generator).backward()
        grads.append(point.grad)
    grads = torch.stack(grads)
    assert torch.allclose(grads.mean(0), h * theta, atol=4 * float((h / batch_size).sqrt().max()) / math.sqrt(3000))
    assert torch.allclose(grads.var(0), h / batch_size, rtol=0.12)


def test_fast_noisy_gradients_have_variance_h_over_b_and_independent_replicas():
    replicas, dim, batch_size = 20000, 10, 8
    problem = nqm.NoisyQuadratic(dim, batch_size, replicas, init=0.5, dtype=torch.float64,
                                 generator=torch.Generator().manual_seed(2))
    problem.set_noisy_gradients()
    grads = torch.stack([p.grad for p in problem.params])  # what the optimizer sees
    h = problem.curvature
    noise = grads - h * 0.5
    assert torch.allclose(grads.mean(0), h * 0.5, atol=4 * float((h / batch_size).sqrt().max()) / math.sqrt(replicas))
    assert torch.allclose(noise.var(0), h / batch_size, rtol=0.05)  # sd of the estimate: sqrt(2 / 20000) = 1%
    # Replicas (learning rates) draw independent noise: neighbouring rows are uncorrelated.
    standardized = noise / (h / batch_size).sqrt()
    correlation = float((standardized[:-1] * standardized[1:]).mean())
    assert abs(correlation) < 4 / math.sqrt(replicas * dim)
    # Fresh noise every step.
    problem.set_noisy_gradients()
    assert not torch.equal(torch.stack([p.grad for p in problem.params]), grads)


def test_each_replica_is_a_leaf_parameter_sharing_theta():
    problem = nqm.NoisyQuadratic(30, 4, 3, generator=torch.Generator().manual_seed(3))
    assert all(p.is_leaf and p.data_ptr() == problem.theta[r].data_ptr() for r, p in enumerate(problem.params))
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(problem.params, (0.0, 0.1, 0.5))])
    before = problem.loss()
    for _ in range(20):
        problem.set_noisy_gradients()
        optimizer.step()
    after = problem.loss()
    assert after[0] == before[0] and after[1] < before[1] and after[2] < after[1]  # lr 0 never moves
    optimizer.zero_grad(set_to_none=True)
    problem.set_noisy_gradients()
    assert all(p.grad is not None for p in problem.params)


# ------------------------------------------------------------------------------------------ one run
def test_kalman_adam_adam_reproduces_adamw_steps_to_target():
    for batch_size in (1, 64):
        adamw = e3.execute(tiny_config("AdamW", batch_size), CPU)["metrics"]
        kalman = e3.execute(tiny_config("KalmanAdam-adam", batch_size), CPU)["metrics"]
        assert any(s is not None for s in adamw["steps_to_target"])
        assert kalman["steps_to_target"] == adamw["steps_to_target"]
        assert kalman["final_loss_fraction"] == adamw["final_loss_fraction"]  # bit for bit on CPU


def test_sgd_reaches_the_target_at_large_batch_and_diverges_beyond_its_stability_limit():
    """Heavy ball with momentum 0.9 is stable for lr * h_max < 2 (1 + 0.9) = 3.8, so lr = 4 diverges."""
    metrics = e3.execute(tiny_config("SGD-momentum", 4096), CPU)["metrics"]
    steps = dict(zip(metrics["lrs"], metrics["steps_to_target"]))
    diverged = dict(zip(metrics["lrs"], metrics["diverged"]))
    reached = [s for s in steps.values() if s is not None]
    assert reached and min(reached) < 60
    assert diverged[4.0] and steps[4.0] is None and not diverged[2.0]
    # The run stops at stop_factor x the first hit; learning rates slower than that are censored (None).
    assert metrics["first_hit"] == min(reached)
    assert metrics["stop_step"] <= math.ceil(TINY["stop_factor"] * metrics["first_hit"])
    assert all(s is None or s <= metrics["stop_step"] for s in steps.values())
    small = e3.execute(tiny_config("SGD-momentum", 1), CPU)["metrics"]
    small_reached = [s for s in small["steps_to_target"] if s is not None]
    assert not small_reached or min(small_reached) > 3 * min(reached)  # gradient noise costs steps at B = 1


def test_execute_is_deterministic_and_stores_small_curves():
    config = tiny_config("KalmanAdam-adaptive", 64)
    first, again = e3.execute(config, CPU), e3.execute(config, CPU)
    assert first == again
    curves = first["curves"]
    assert curves["step"][0] == 0 and curves["step"][-1] == first["metrics"]["stop_step"]
    assert len(curves["loss_fraction"]) == len(config["lrs"])
    assert all(len(c) == len(curves["step"]) and c[0] == 1.0 for c in curves["loss_fraction"])


def test_initial_point_is_fixed_across_seeds():
    a = e3.initial_point(50, "normal", 12345)
    assert torch.equal(a, e3.initial_point(50, "normal", 12345)) and a.std() > 0.5
    assert torch.equal(e3.initial_point(4, "ones", 0), torch.ones(4))
    with pytest.raises(ValueError, match="Invalid init"):
        e3.initial_point(4, "zeros", 0)


# ------------------------------------------------------------------------------------------ summaries
def test_critical_batch_size_from_scaling_efficiency():
    sizes = [1, 2, 4, 8, 16, 32]
    assert e3.critical_batch_size(sizes, [640, 320, 160, 80, 40, 20]) is None  # perfect scaling throughout
    # S = 100 (1 + 8 / B): doubling from B saves (4 / B) / (1 + 8 / B) of the steps, below 20% from B = 16.
    steps = [100 * (1 + 8 / b) for b in sizes]
    assert e3.critical_batch_size(sizes, steps) == 16
    efficiencies = e3.scaling_efficiencies(sizes, steps)
    assert efficiencies[3] > e3.SCALING_EFFICIENCY_THRESHOLD > efficiencies[4]
    # Unreached small batches (inf) are skipped, not read as saturation.
    assert e3.critical_batch_size([1, 2, 4, 8], [math.inf, math.inf, 100, 90]) == 4
    assert e3.critical_batch_size([1, 4, 16], [400, 100, 25]) is None  # factor-4 grids: slope 1 = perfect


def test_fitted_scaling_law_recovers_an_exact_hyperbola():
    sizes = [1, 2, 4, 8, 16, 32, 64]
    steps = [50 * (1 + 12 / b) for b in sizes]
    s_min, b_noise = e3.fit_scaling_law(sizes, steps)
    assert s_min == pytest.approx(50) and b_noise == pytest.approx(12)
    assert e3.fitted_critical_batch_size(sizes, steps) == pytest.approx(18)
    # Under the fitted law, doubling from 1.5 B_noise saves exactly 20%.
    law = lambda b: 50 * (1 + 12 / b)  # noqa: E731
    assert law(36) / law(18) == pytest.approx(0.8)
    assert e3.fit_scaling_law([1, 2], [math.inf, 10]) is None
    assert math.isnan(e3.fitted_critical_batch_size([4], [10]))


def _fake_run(optimizer, batch_size, seed, steps, losses, lrs=(0.1, 0.2, 0.4)):
    return dict(config=dict(optimizer=optimizer, batch_size=batch_size, seed=seed),
                metrics=dict(lrs=list(lrs), steps_to_target=steps, final_loss_fraction=losses))


def test_tune_uses_mean_steps_over_seeds_then_final_loss():
    runs = [_fake_run("AdamW", 8, 0, [30, 20, None], [0.05, 0.06, 0.3]),
            _fake_run("AdamW", 8, 1, [30, 40, 10], [0.05, 0.08, 0.01]),
            _fake_run("AdamW", 16, 0, [None, None, None], [0.5, 0.2, 0.9]),
            _fake_run("AdamW", 32, 0, [None, 12, 12], [0.5, 0.09, 0.08])]
    tuned = e3.tune(runs)
    t8 = tuned[("AdamW", 8)]  # lr 0.4 missed in one seed; means 30 vs 30 tie, broken by final loss
    assert t8.lr == 0.1 and t8.reached and t8.steps.mean == 30
    assert t8.on_edge  # index 0 is the grid's lower edge
    t16 = tuned[("AdamW", 16)]
    assert t16.lr == 0.2 and not t16.reached and math.isinf(t16.steps.mean) and not t16.on_edge
    assert tuned[("AdamW", 32)].lr == 0.4 and tuned[("AdamW", 32)].on_edge
    assert e3.format_steps(t8.steps) == "30 ± 0"
    runs.append(_fake_run("KalmanAdam-adam", 8, 0, [30, 21, None], [0.05, 0.06, 0.3]))
    worst, mismatched, compared = e3.max_relative_step_difference(runs, "KalmanAdam-adam", "AdamW")
    assert worst == pytest.approx(0.05) and mismatched == 0 and compared == 3


# ------------------------------------------------------------------------------------------ the whole experiment
def test_tiny_experiment_figures_table_and_numbers(tiny_runs, tmp_path):
    assert len(tiny_runs) == len(e3.OPTIMIZERS) * len(TINY["batch_sizes"])
    out = FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path)
    e3.figures(tiny_runs, out)
    for name in ("e3_steps_vs_batch.pdf", "e3_steps_vs_batch.png", "e3_loss_curves.pdf", "e3_loss_curves.png",
                 "e3_steps_vs_batch.tex", "e3_steps_vs_batch.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = (tmp_path / "e3_steps_vs_batch.md").read_text()
    assert all(name in table for name in e3.OPTIMIZERS) and "critical B" in table
    numbers = e3.numbers(tiny_runs)
    assert all(k.isalpha() and k[0].isupper() for k in numbers)
    assert numbers["AdamVsAdamWMaxRelativeStepDifference"] == 0.0
    assert numbers["AdamVsAdamWReachedMismatches"] == 0 and numbers["AdamVsAdamWPointsCompared"] > 0
    assert numbers["OnEdgeCount"] <= numbers["TunedCount"] == len(tiny_runs)
    assert numbers["Dim"] == 100 and numbers["Seeds"] == 1 and numbers["TargetFraction"] == 0.1
    for name, macro in e3.MACRO_NAMES.items():
        value = numbers[f"CriticalBatch{macro}"]
        assert value in TINY["batch_sizes"] or value == "4,096 or more"
        assert numbers[f"StepsLargestBatch{macro}"] < 100  # every optimizer reaches the target at B = 4096
        assert numbers[f"FittedCriticalBatch{macro}"] > 0
    assert math.isfinite(numbers["AdaptiveOverAdamWStepsLargestBatch"])
    # SGD with momentum scales: it needs more steps at B = 1 than at B = 4096.
    tuned = e3.tune(tiny_runs)
    assert tuned[("SGD-momentum", 1)].steps.mean > 3 * tuned[("SGD-momentum", 4096)].steps.mean


def test_extrapolated_mode_is_scored_at_its_iterate():
    """Mode "extrapolated" keeps the extrapolated point in its parameters (D8); E3 scores the iterate, read between
    optimizer.eval() and optimizer.train(), which leave the parameters as they were, bit for bit."""
    problem = nqm.NoisyQuadratic(50, 4, 2, generator=torch.Generator().manual_seed(0))
    optimizer = e3.make_optimizer("KalmanAdam-extrapolated", problem.params, [0.05, 0.1])
    for _ in range(5):
        problem.set_noisy_gradients()
        optimizer.step()
    point = problem.theta.clone()
    iterates = torch.stack([optimizer.state[p]["iterate"] for p in problem.params])
    loss = e3._iterate_loss(problem, optimizer)
    assert torch.equal(problem.theta, point)
    assert loss.tolist() == nqm.exact_loss(iterates, problem.curvature).tolist()
    assert loss.tolist() != problem.loss().tolist()  # the point is not the iterate


def test_the_paper_profile_tunes_on_a_grid_twice_as_fine_over_the_same_range():
    assert e3.power_of_two_grid(-2, 1) == [0.25, 0.5, 1.0, 2.0]
    fine = e3.power_of_two_grid(-2, 1, 2)
    assert len(fine) == 7 and fine[0] == 0.25 and fine[-1] == 2.0 and fine[1] == pytest.approx(0.25 * 2**0.5)
    for name, grid in e3.PROFILES["paper"]["lr_grids"].items():
        coarse = e3.LR_GRIDS[name]
        assert (grid[0], grid[-1]) == (coarse[0], coarse[-1]) and len(grid) == 2 * len(coarse) - 1
