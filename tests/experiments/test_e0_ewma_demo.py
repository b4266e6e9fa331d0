"""E0 at a tiny size: the notebook's series, the EWMA/Kalman pairing, the band's coverage, the outputs."""

import math

import pytest
import torch

from experiments import e0_ewma_demo as e0
from experiments.plotting import FigureOutput
from tests.experiments.helpers import run_tiny
from kalman_optim import constant_noise_gain

CPU = torch.device("cpu")
TINY = dict(e0.PROFILES["smoke"], seeds=[0, 1])


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e0_results")
    return run_tiny(e0, TINY, root)


def test_notebook_series():
    f, y = e0.notebook_series(TINY, torch.Generator().manual_seed(0))
    assert f.shape == y.shape == (200,)
    assert f[0].item() == pytest.approx(1 - 16 / 9) and f.max().item() == pytest.approx(1.0, abs=1e-3)
    assert y[0].item() == 0.5  # the notebook's outlier
    assert (y - f)[1:].std().item() == pytest.approx(0.1, rel=0.2)


def test_each_run_pairs_every_beta_with_its_filter(tiny_runs):
    assert len(tiny_runs) == 2
    for run in tiny_runs:
        m, c = run["metrics"], run["curves"]
        per_beta = m["per_beta"]
        assert list(per_beta) == ["0.5", "0.7", "0.9", "0.99"]
        for key, values in per_beta.items():
            beta = float(key)
            assert values["noise_ratio"] == pytest.approx((1 - beta) ** 2 / beta)
            # Every method starts at y_0 (diffuse prior); the band's sd is sqrt(k_t r), falling towards
            # sqrt((1 - beta) r) (reached by t = 200 except at beta = 0.99, whose start-up lasts ~1/(1-beta^2)).
            assert c[f"ewma_{key}"][0] == pytest.approx(0.5) and c[f"kalman_{key}"][0] == pytest.approx(0.5)
            sd = c[f"kalman_sd_{key}"]
            assert sd[0] == pytest.approx(0.1) and all(a >= b for a, b in zip(sd, sd[1:]))
            assert sd[-1] == pytest.approx(math.sqrt(constant_noise_gain(beta, 200) * 0.01), rel=1e-9)
            assert sd[-1] == pytest.approx(math.sqrt((1 - beta) * 0.01), rel=1e-6 if beta < 0.9 else 0.02)
            # The debiased EWMA and the filter at lambda(beta) share their steady state: close MSEs.
            assert values["kalman_mse"] == pytest.approx(values["ewma_mse"], rel=0.25)
        # The lag on the trend grows with beta: the EWMA at 0.99 is far worse than at 0.5, and its narrow
        # band misses the true curve most of the time.
        assert per_beta["0.99"]["ewma_mse"] > 10 * per_beta["0.5"]["ewma_mse"]
        assert per_beta["0.5"]["kalman_coverage"] > 0.8 > 0.3 > per_beta["0.99"]["kalman_coverage"]
        assert 0 < m["adaptive_mse"] < per_beta["0.99"]["ewma_mse"]
        assert 0.5 - 1e-9 <= m["adaptive_median_beta"] <= 0.999


def test_figures_tables_and_numbers(tiny_runs, tmp_path):
    out = FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path)
    e0.figures(tiny_runs, out)
    for name in ("e0_ewma_demo.pdf", "e0_ewma_demo.png", "e0_ewma_demo.tex", "e0_ewma_demo.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "adaptive" in (tmp_path / "e0_ewma_demo.md").read_text()
    numbers = e0.numbers(tiny_runs)
    assert all(k.isalpha() and k[0].isupper() for k in numbers)
    assert all(math.isfinite(v) for v in numbers.values())
    assert numbers["Seeds"] == 2 and numbers["BestBeta"] in (0.5, 0.7)
    assert 0 <= numbers["CoveragePointNineNine"] < numbers["CoveragePointFive"] <= 1


def test_runs_are_deterministic(tiny_runs):
    assert e0.execute(tiny_runs[0]["config"], CPU)["metrics"] == tiny_runs[0]["metrics"]
