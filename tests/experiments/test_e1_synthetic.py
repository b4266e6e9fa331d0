"""E1 at a tiny size: the filters match the library, the best EWMA beta is the derived one, the true-ratio
filter's intervals cover at their nominal rate, and the figure/tables/numbers are written."""

import math

import numpy as np
import pytest
import torch

from experiments import e1_synthetic as e1
from experiments.plotting import FigureOutput
from tests.experiments.helpers import run_tiny
from kalman_optim import KalmanAdam, noise_ratio_to_beta
from kalman_optim.functional import AdaptiveNoiseConfig

CPU = torch.device("cpu")
TINY = dict(e1.PROFILES["smoke"], noise_ratios=[1e-2, 1.0], series=400, steps=700, burn_in=200, grid_size=121,
            seeds=[0])


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e1_results")
    return run_tiny(e1, TINY, root)


def test_gain_filter_with_constant_gains_reaches_the_steady_state_ewma():
    """k_1 = 1 (diffuse prior) and k_t -> 1 - beta; after the start-up the filter is the EWMA with beta."""
    beta = 0.8
    gains = e1.constant_gains(beta, 60)
    assert gains[0].item() == pytest.approx(1.0) and gains[-1].item() == pytest.approx(1 - beta, rel=1e-9)
    assert torch.all(gains[:-1] >= gains[1:])
    adam = e1.adam_gains(beta, 60).reshape(-1)
    assert adam[0].item() == pytest.approx(1.0) and adam[2].item() == pytest.approx(0.2 / (1 - 0.8**3))
    g = torch.randn(60, 3, dtype=torch.float64)
    means = e1.gain_filter(g, gains)
    assert torch.equal(means[0], g[0])
    ewma = means[40].clone()
    for t in range(41, 60):
        ewma = beta * ewma + (1 - beta) * g[t]
    assert torch.allclose(ewma, means[-1], atol=1e-8)


def test_adaptive_filter_is_the_optimizers_first_moment():
    """The vectorized D4 filter gives KalmanAdam(noise="adaptive")'s exp_avg, step by step."""
    torch.manual_seed(1)
    config = AdaptiveNoiseConfig(noise_beta=0.9, beta_min=0.5, beta_max=0.999, prior_beta=0.9)
    g = torch.cumsum(0.3 * torch.randn(40, 5, dtype=torch.float64), 0) + torch.randn(40, 5, dtype=torch.float64)
    means, gains, r_hats = e1.adaptive_filter(g, config)
    p = torch.nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = KalmanAdam([p], lr=0.0, weight_decay=0.0, betas=(0.9, 0.999), noise="adaptive", noise_beta=0.9,
                     beta_range=(0.5, 0.999))
    for t in range(40):
        p.grad = g[t].clone()
        opt.step()
        assert torch.allclose(opt.state[p]["exp_avg"], means[t], rtol=1e-12, atol=1e-12), t
    assert torch.all((gains[3:] > 0) & (gains[3:] <= 0.5 + 1e-12)) and torch.all(r_hats[3:] >= 0)


def test_refine_minimum_finds_the_vertex_of_a_parabola():
    u = np.linspace(-1, 1, 21)
    vertex, edge = e1.refine_minimum(u, (u - 0.137) ** 2 + 3)
    assert vertex == pytest.approx(0.137, abs=1e-12) and not edge
    assert e1.refine_minimum(u, u)[1]  # monotone: the minimum is at the grid edge


def test_tiny_runs_recover_the_derived_beta_and_nominal_coverage(tiny_runs):
    assert [r["metrics"]["noise_ratio"] for r in tiny_runs] == [1e-2, 1.0]
    for run in tiny_runs:
        m = run["metrics"]
        lam = m["noise_ratio"]
        assert m["derived_beta"] == pytest.approx(noise_ratio_to_beta(lam))
        # The best EWMA is the steady-state filter: K = 1 - beta within a few percent of the derived gain.
        assert not m["best_at_grid_edge"]
        assert abs(m["best_gain_relative_error"]) < 0.03, m["best_beta"]
        # The true-ratio filter's MSE is its own posterior variance (1 - beta) r, and no EWMA beats it by much.
        assert m["mse"]["true"] / m["mse"]["theory"] == pytest.approx(1.0, abs=0.06)
        # (The grid's best can be a hair worse than the true filter: grid spacing and the diffuse-prior start.)
        assert 0.97 < m["mse_ratio"]["ewma_best"] < 1.01
        assert m["mse_ratio"]["adam_beta_star"] == pytest.approx(1.0, abs=0.01)  # same beta after the burn-in
        assert m["mse_ratio"]["adam"] > 1.5 if lam == 1.0 else m["mse_ratio"]["adam"] < 1.02  # beta = 0.9 vs 0.905
        for level in (0.5, 0.9, 0.95):
            counts = m["coverage"]["true"][f"{level:g}"]
            assert counts["pooled"] / counts["pooled_trials"] == pytest.approx(level, abs=0.03)
            assert counts["final_trials"] == TINY["series"]
    assert len(tiny_runs[0]["curves"]["grid_mse"]) == TINY["grid_size"]


def test_runs_are_deterministic(tiny_runs):
    again = e1.execute(tiny_runs[0]["config"], CPU)
    assert again["metrics"] == tiny_runs[0]["metrics"]


def test_figures_tables_and_numbers(tiny_runs, tmp_path):
    out = FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path)
    e1.figures(tiny_runs, out)
    for name in ("e1_synthetic.pdf", "e1_synthetic.png", "e1_calibration.tex", "e1_calibration.md",
                 "e1_summary.tex", "e1_summary.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "adaptive (window 100)" in (tmp_path / "e1_calibration.md").read_text()
    numbers = e1.numbers(tiny_runs)
    assert all(k.isalpha() and k[0].isupper() for k in numbers)
    assert all(math.isfinite(v) for v in numbers.values())
    assert numbers["BestBetaMaxAbsError"] < 0.01
    assert numbers["TrueCoverageNinetyFive"] == pytest.approx(0.95, abs=0.04)
    assert numbers["AdaptiveWorstMseRatio"] >= 1.0 and numbers["NoiseRatios"] == 2
