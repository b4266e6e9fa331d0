"""E7 at a tiny size: the plan and the recorded curves have the right shape, the innovation mode's intervals cover
at about their nominal rate when the model is right and under a trend, the zero-memory 'adam' read-out gives
zero-width intervals, the issue series tells the modes apart, and the figure/tables/numbers are written."""

import math

import numpy as np
import pytest
import torch

from experiments import e7_misspecified as e7
from experiments import e7_oracles, e7_prior_count
from kalman_optim.noise_models import innovation
from kalman_optim import constant_noise_gain
from kalman_optim.schedules import adam_coefficients
from experiments.plotting import FigureOutput
from tests.experiments.helpers import run_tiny

CPU = torch.device("cpu")
TINY = dict(e7.PROFILES["smoke"], series=500, steps=400, cases=["one", "trend"], seeds=[0],
            issue=dict(e7.PROFILES["smoke"]["issue"], seed_count=5),
            prior=dict(e7.PROFILES["smoke"]["prior"], prior_counts=[100, 100000], seed_count=5, series=200, steps=120))


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e7_results")
    return run_tiny(e7, TINY, root)


def by_case(runs):
    return {r["config"]["case"]: r for r in runs}


def test_record_steps_are_log_spaced_from_two_to_the_last_step():
    steps = e7.record_steps(3000, 22)
    assert steps[0] == 2 and steps[-1] == 3000 and steps == sorted(set(steps))
    assert {2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000} <= set(steps)
    assert 25 <= len(steps) <= 35
    dense = e7.record_steps(3000, 22, 40)
    assert set(range(2, 41)) <= set(dense) and set(steps) <= set(dense)


def test_plan_has_one_run_per_case_and_seed_then_the_issue_series_and_the_prior_sweep():
    ids = [s.run_id for s in e7.plan(dict(TINY, seeds=[0, 1]), [0, 1], {})]
    assert ids == ["one_seed0", "one_seed1", "trend_seed0", "trend_seed1", "issue_series", "prior_count"]
    assert set(e7.PROFILES["smoke"]["cases"]) == set(e7.CASES) and e7.PROFILES["smoke"]["steps"] >= 3000


def test_tiny_runs_structure(tiny_runs):
    runs = by_case(tiny_runs)
    assert set(runs) == {"one", "trend", "issue", "prior"}
    one = runs["one"]
    assert one["curves"]["step"] == e7.record_steps(TINY["steps"], TINY["record_points"], TINY["dense_until"])
    assert set(range(2, TINY["dense_until"] + 1)) <= set(one["curves"]["step"])
    for mode in e7.MODES:
        curve = one["curves"][mode]
        assert set(curve["coverage"]) == {"0.5", "0.9", "0.95", "0.99"}
        assert all(len(c) == len(one["curves"]["step"]) for c in [*curve["coverage"].values(), curve["mse"]])
        assert one["metrics"][mode]["worst95_from10"] <= one["metrics"][mode]["final_coverage"]["0.95"]
    assert one["metrics"]["noise_ratio"] == pytest.approx((1 - 0.9) ** 2 / 0.9)
    assert runs["trend"]["metrics"]["trend"] == pytest.approx(0.05)
    assert len(runs["issue"]["metrics"]["innovation"]["worst_ratio"]) == 5


def test_innovation_mode_is_calibrated_and_the_adam_read_out_is_not(tiny_runs):
    runs = by_case(tiny_runs)
    for case in ("one", "trend"):
        innovation = runs[case]["metrics"]["innovation"]
        assert 0.85 <= innovation["final_coverage"]["0.95"] <= 1.0, case
        assert innovation["variance_ratio"] == pytest.approx(1.0, abs=0.25), case
        assert innovation["zero_variance"] == 0.0
    adam = runs["one"]["metrics"]["adam"]
    # v - m^2 <= 0 for a large share of random-walk coordinates (D7): zero-width intervals, low coverage.
    assert adam["zero_variance"] > 0.1 and adam["final_coverage"]["0.95"] < 0.8
    issue = runs["issue"]["metrics"]
    assert issue["innovation"]["fraction_positive"] == 1.0 and issue["adam"]["fraction_positive"] < 1.0
    assert max(issue["innovation"]["worst_ratio"]) < 3.0 and math.isinf(max(issue["adam"]["worst_ratio"]))


def test_fitted_mode_covers_from_the_first_interval_on(tiny_runs):
    """Mode "fitted" (model-based read-out): at every recorded step from 2 on, 95% coverage near nominal on the
    model itself (500 series: binomial sd ~0.01)."""
    one = by_case(tiny_runs)["one"]["curves"]["fitted"]["coverage"]["0.95"]
    assert 0.91 <= min(one) and max(one) <= 0.99


def test_runs_are_deterministic(tiny_runs):
    run = by_case(tiny_runs)["one"]
    assert e7.execute(run["config"], CPU)["metrics"] == run["metrics"]


def test_figures_tables_and_numbers(tiny_runs, tmp_path):
    out = FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path)
    e7.figures(tiny_runs, out)
    for name in ("e7_misspecified.pdf", "e7_misspecified.png", "e7_calibrated.pdf", "e7_coverage.tex", "e7_coverage.md",
                 "e7_issue_series.tex", "e7_issue_series.md", "e7_prior_count.tex", "e7_prior_count.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    numbers = e7.numbers(tiny_runs)
    assert all(k.isalpha() and k[0].isupper() for k in numbers)
    assert all(math.isfinite(v) for v in numbers.values())
    assert {"InnovationWorstCoverageFromTenOne", "AdamWorstCoverageFromHundredTrend", "InnovationCoverageLow",
            "IssueInnovationFractionWithin", "FittedCoverageLowFromTwo", "IssueFittedFractionWithin",
            "PriorOneHundredInnovationIssueFraction", "PriorOneHundredThousandFittedWorstFromTwo",
            "PriorLibraryCount"} <= set(numbers)
    assert numbers["InnovationCoverageLow"] <= numbers["InnovationWorstCoverageFromTenOne"] <= 1.0
    # The paired counts against the oracle: mode share - oracle share = (mode only - oracle only) / seeds.
    seeds = numbers["IssueSeeds"]
    for mode in ("Fitted", "FittedLong", "Innovation"):
        difference = numbers[f"Issue{mode}FractionWithin"] - numbers["IssueOracleFractionWithin"]
        assert difference * seeds == pytest.approx(numbers[f"Issue{mode}ModeOnly"] - numbers[f"Issue{mode}OracleOnly"])
    assert e7.numbers([]) == {}


def test_likelihood_oracle_is_the_exact_filters_running_ml_estimate(tiny_runs):
    """The oracle's worst ratio per seed equals a direct computation (exact gain for lambda(beta1), r_hat the running
    mean of (1 - k) nu^2), and its simulated pass probability is a probability consistent with the seeds'."""
    issue = by_case(tiny_runs)["issue"]
    config = issue["config"]
    beta, r, start = config["beta1"], config["observation_noise"], config["from_step"]
    g = torch.empty(config["steps"], config["seed_count"], dtype=torch.float64)
    q = (1 - beta) ** 2 / beta * r
    for seed in range(config["seed_count"]):
        generator = torch.Generator().manual_seed(seed)
        w, v = torch.randn(2, config["steps"], generator=generator, dtype=torch.float64)
        g[:, seed] = torch.cumsum(math.sqrt(q) * w, 0) + math.sqrt(r) * v
    for seed in range(config["seed_count"]):
        m, total, worst = float(g[0, seed]), 0.0, 1.0
        for t in range(2, config["steps"] + 1):
            k = constant_gain_at(beta, t)
            nu = float(g[t - 1, seed]) - m
            total += (1 - k) * nu * nu
            m += k * nu
            if t >= start:
                ratio = total / (t - 1) / r
                worst = max(worst, ratio, 1 / ratio)
        assert issue["metrics"]["oracle"]["worst_ratio"][seed] == pytest.approx(worst, rel=1e-9)
    oracle = issue["metrics"]["oracle"]
    assert 0.85 < oracle["pass_probability"] < 0.97  # chi^2_1 running means, steps 50-300: ~0.92
    assert oracle["all_seeds_probability"] == pytest.approx(oracle["pass_probability"] ** config["seed_count"])


def constant_gain_at(beta, t):
    """Adam's diffuse-prior gain, the exact filter's for lambda(beta) (D2)."""
    return (1 - beta) / (1 - beta**t)


def test_prior_count_sweep_patches_the_library_constant_only_inside_and_covers_every_count_and_mode(tiny_runs):
    saved = innovation.PRIOR_COUNT
    with pytest.raises(RuntimeError), e7_prior_count.prior_count(5.0):
        assert innovation.PRIOR_COUNT == 5.0
        raise RuntimeError
    assert innovation.PRIOR_COUNT == saved
    state = dict(innovation_sq_avg=torch.ones(4), lag_num=torch.tensor(0.2), lag_den=torch.tensor(1.0))
    with e7_prior_count.prior_count(1e12):  # the data (phi = 0.2) has no weight: the filter's model, phi = 1
        assert innovation.shrunk_lag_ratio(state, 100).item() == pytest.approx(1.0, abs=1e-6)
    with e7_prior_count.prior_count(1e-12):
        assert innovation.shrunk_lag_ratio(state, 100).item() == pytest.approx(0.2, abs=1e-6)
    with e7_prior_count.prior_count(1e-12, coordinates=6.0):  # 4 coordinates against 6 pseudo-coordinates at phi = 1,
        # whatever the number of lag steps: (0.2 x 4 + 6) / (4 + 6)
        for steps in (20, 100, 5000):
            assert innovation.shrunk_lag_ratio(state, steps).item() == pytest.approx(0.68, abs=1e-6)
    assert innovation.PRIOR_COORDINATES == 0.0
    run = by_case(tiny_runs)["prior"]
    rows = e7_prior_count.rows(run)
    expected = {(c, 0.0, m) for c in (100.0, 100000.0) for m in ("innovation", "fitted")}
    expected |= {(1.0, c, m) for c in TINY["prior"]["prior_coordinates"] for m in ("innovation", "fitted")}
    assert {(r["count"], r["coordinates"], r["mode"]) for r in rows} == expected
    assert all(0 <= r["issue"] <= 1 and 0 <= r["from_two"] <= r["from_ten"] <= 1 for r in rows)
    assert set(run["metrics"]["ratio_oracle_fraction_within"]) == {"maximum likelihood", "posterior mean"}


def test_the_ratio_unknown_oracle_is_consistent_on_long_series_and_uninformed_on_short_ones():
    """Estimating the noise ratio by maximum likelihood (or its posterior mean) reads out the exact filter's variance
    within 1.5x once thousands of steps have been seen, and, on the issue's 300 steps, far less often than the oracle
    that knows the ratio (the price E7's prior sweep measures)."""
    beta, r, seeds = 0.9, 0.25, 20
    q = (1 - beta) ** 2 / beta * r
    rng = np.random.default_rng(0)
    g = np.cumsum(math.sqrt(q) * rng.standard_normal((3000, seeds)), axis=0) + math.sqrt(r) * rng.standard_normal((3000, seeds))
    config = dict(beta1=beta, observation_noise=r, within=1.5, from_step=2000)
    for name, value in e7_oracles.ratio_unknown_oracle(g, config).items():
        assert value["fraction_within"] >= 0.9, name
    short = dict(config, from_step=50)
    known = e7_oracles.likelihood_oracle(g[:300], short, simulated_seeds=1000)["fraction_within"]
    unknown = e7_oracles.ratio_unknown_oracle(g[:300], short)["maximum likelihood"]["fraction_within"]
    assert known >= 0.8 and unknown <= known - 0.4


def test_adams_error_recursion_is_the_exact_filters_variance_from_step_50():
    """The ratio-unknown oracle reads out Adam's error recursion E_t(lambda); at the filter's own lambda it is the exact
    filter's P*_t / r (the closed form the issue run compares with) to 1e-4 from step 50 on."""
    beta = 0.9
    lam = (1 - beta) ** 2 / beta
    error = 1.0
    for t in range(2, 301):
        k = adam_coefficients(beta, t).gain
        error = (1 - k) ** 2 * (error + lam) + k**2
        if t >= 50:
            assert error == pytest.approx(float(constant_noise_gain(beta, t)), rel=1e-4)
