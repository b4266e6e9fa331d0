"""E6 ablations at a tiny size: the plan, the runs, the pairing, and the figure/table/number outputs."""

import math

import pytest
import torch
from scipy import stats as scipy_stats

from experiments import e6_ablations as e6
from experiments.plotting import FigureOutput
from tests.experiments.helpers import run_tiny

CPU = torch.device("cpu")
TINY = dict(task="fashion_mnist",
            task_kwargs=dict(train_size=256, eval_size=128, batch_size=32, channels=(4, 8), hidden=16),
            steps=5, eval_every=5, lr=2e-3, weight_decay=0.0, seeds=[0, 1])


def tiny_config(setting_key: str, seed: int = 0, **changes) -> dict:
    spec = next(s for s in e6.plan(dict(TINY, **changes), [seed], {}) if s.config["setting"] == setting_key)
    return spec.config


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e6_results")
    return run_tiny(e6, TINY, root)


def test_plan_covers_every_group_with_its_reference_once_per_seed():
    specs = e6.plan(TINY, [0, 1], {})
    ids = [s.run_id for s in specs]
    assert len(ids) == len(set(ids)) == 2 * len(e6.SETTINGS)
    planned = {(s.config["setting"], s.config["seed"]) for s in specs}
    for group in e6.GROUPS:
        assert len(group.settings) >= 3 and group.reference.key in {s.key for s in group.settings}
        for setting in group.settings:
            assert {(setting.key, 0), (setting.key, 1)} <= planned
    # The adaptive defaults are the reference of both adaptive groups and are run once.
    window, clipping = (g for g in e6.GROUPS if g.name in ("NoiseWindow", "BetaRange"))
    assert window.reference.key == clipping.reference.key
    assert window.reference.overrides == dict(noise_beta=0.99, beta_range=[0.5, 0.999])
    # Every planned configuration is accepted by the optimizer (valid beta ranges, priors, scales).
    for setting in e6.SETTINGS.values():
        training_params = [torch.nn.Parameter(torch.zeros(2))]
        e6.training.make_optimizer(setting.optimizer, training_params, 1e-3, **e6.optimizer_kwargs(setting.overrides))


def test_confidence_scale_is_the_squared_two_sided_normal_quantile():
    for level in (0.5, 0.9, 0.95, 0.99):
        z = scipy_stats.norm.ppf((1 + level) / 2)
        assert e6.confidence_scale(level) == pytest.approx(z * z, rel=1e-9)
    assert e6.confidence_scale(0.95) == pytest.approx(3.8415, abs=1e-4)
    assert e6.effective_window(0.999) == pytest.approx(1000)


def test_summary_pairs_by_seed():
    """A constant shift of +0.5 across seeds has a zero-width paired interval, however noisy the seeds are."""
    def run(key, seed, loss):
        return dict(config=dict(TINY, setting=key, seed=seed),
                    metrics=dict(test_loss=loss, test_accuracy=0.5, val_loss=loss))

    prior = next(g for g in e6.GROUPS if g.name == "Prior")
    reference, other = prior.reference.key, prior.settings[0].key
    runs = [run(reference, 0, 1.0), run(reference, 1, 3.0), run(other, 0, 1.5), run(other, 1, 3.5)]
    rows = [r for r in e6.summarize(runs) if r.group == "Prior"]
    assert [r.setting.key for r in rows] == [other, reference] and rows[1].is_reference and not rows[0].is_reference
    diff = rows[0].test_loss_vs_reference
    assert diff.mean == pytest.approx(0.5) and diff.half_width == pytest.approx(0.0, abs=1e-12)
    assert rows[0].test_loss.half_width > 5  # unpaired, the seed-to-seed spread of 2 dominates
    numbers = e6.numbers(runs)
    assert numbers["PriorBestSetting"] == "diffuse" and numbers["PriorBestMinusReference"] == 0.0
    assert numbers["PriorTestLossSpread"] == pytest.approx(0.5)
    # One setting shifted by +0.5 on both seeds (separated), one by +1 and -1 (mean 0, not separated).
    noisy = next(x.key for x in prior.settings if x.key not in (reference, other))
    numbers = e6.numbers(runs + [run(noisy, 0, 2.0), run(noisy, 1, 2.0)])
    assert numbers["ComparedCount"] == 2 and numbers["SeparatedCount"] == 1


def test_tiny_experiment_runs_and_is_deterministic(tiny_runs):
    assert len(tiny_runs) == 2 * len(e6.SETTINGS)
    for run in tiny_runs:
        m = run["metrics"]
        assert not m["diverged"] and m["steps_done"] == TINY["steps"]
        assert all(math.isfinite(m[k]) for k in ("val_loss", "test_loss", "test_accuracy", "parameter_distance"))
        assert ("effective_beta_mean" in m) == (run["config"]["optimizer"] == "KalmanAdam-adaptive")
    first = tiny_runs[0]
    again = e6.execute(first["config"], CPU)
    assert again["metrics"] == first["metrics"]


def test_variance_adaptation_shrinks_the_distance_travelled(tiny_runs):
    """VA multiplies every coordinate's step by m^2 / (m^2 + kappa P) < 1, so the parameters move less."""
    distance = {(r["config"]["setting"], r["config"]["seed"]): r["metrics"]["parameter_distance"] for r in tiny_runs}
    for seed in (0, 1):
        off = distance[("va=off", seed)]
        assert distance[("va_innovation_level=0.99", seed)] < distance[("va_innovation_level=0.5", seed)] < off


def test_adaptive_effective_beta_stays_in_the_clipping_range():
    """With beta_range [0.85, 0.95] every coordinate's coefficient is in range (the start-up factor of
    the diffuse prior, (1 + b^(2t-1)) / (1 - b^(2t)), is < 1.04 at t = 40, lowering b by at most 0.002)."""
    config = tiny_config("adaptive_nb=0.99_range=0.85-0.95", steps=40, eval_every=40)
    q = e6.execute(config, CPU)["metrics"]["effective_beta_quantiles"]
    assert 0.848 <= q["min"] <= q["median"] <= q["max"] <= 0.95 + 1e-9
    wide = e6.execute(tiny_config("adaptive_nb=0.99_range=0.01-0.9999", steps=40, eval_every=40), CPU)
    assert wide["metrics"]["effective_beta_quantiles"]["min"] < 0.848  # the wide range lets coordinates leave it


def test_figures_table_and_numbers_are_written(tiny_runs, tmp_path):
    out = FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path)
    e6.figures(tiny_runs, out)
    for name in ("e6_ablations.pdf", "e6_ablations.png", "e6_ablations.tex", "e6_ablations.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    table = (tmp_path / "e6_ablations.md").read_text()
    for group in e6.GROUPS:
        assert all(s.label in table for s in group.settings)
    assert table.count("reference") >= len(e6.GROUPS)
    numbers = e6.numbers(tiny_runs)
    for group in e6.GROUPS:
        assert numbers[f"{group.name}TestLossSpread"] >= 0
        assert numbers[f"{group.name}BestSetting"] in [s.label for s in group.settings]
        assert math.isfinite(numbers[f"{group.name}BestMinusReference"])
    assert math.isfinite(numbers["NarrowRangeMinusAdamTestLoss"])
    assert 0.0 < numbers["AdaptiveMeanEffectiveBeta"] < 1.0
    assert numbers["Seeds"] == 2 and numbers["Steps"] == TINY["steps"]
    assert all(k.isalpha() and k[0].isupper() for k in numbers)


def test_clip_fractions_read_drift_as_low_beta_and_white_noise_as_high_beta():
    """D4: a linear trend g_t = a t has constant differences, Cov(d_t, d_{t-1}) = a^2 > 0, so r_hat = 0 and
    beta is clipped to beta_min. White noise has q = 0: q_hat = c0 + 2 c1 scatters around 0, so about half the
    coordinates (q_hat <= 0) sit at beta_max and few reach beta_min."""
    torch.manual_seed(0)
    drift = torch.nn.Parameter(torch.zeros(1000))
    noise = torch.nn.Parameter(torch.zeros(1000))
    drift_optimizer = e6.training.make_optimizer("KalmanAdam-adaptive", [drift], 1e-3)
    noise_optimizer = e6.training.make_optimizer("KalmanAdam-adaptive", [noise], 1e-3)
    steps = 500
    for t in range(1, steps + 1):
        drift.grad = torch.full((1000,), 0.01 * t)
        noise.grad = torch.randn(1000)
        drift_optimizer.step()
        noise_optimizer.step()
    assert e6.clip_fractions(drift_optimizer) == (1.0, 0.0)
    # At the lower clip the prior blend w = 1 - 0.99^(t-2) still pulls beta slightly above beta_min = 0.5.
    betas = e6.effective_betas(drift_optimizer)
    assert 0.5 < betas.min() and betas.max() < 0.52
    low, high = e6.clip_fractions(noise_optimizer)
    assert low < 0.1 and 0.4 < high < 0.6
    assert e6.effective_betas(noise_optimizer).mean() > 0.8
    assert e6.clip_fractions(e6.training.make_optimizer("AdamW", [drift], 1e-3)) is None


def test_paper_profile_runs_each_group_at_its_lr_without_the_prior_and_adaptive_groups():
    paper = e6.PROFILES["paper"]
    specs = e6.plan(paper, [0, 1], {})
    lr_of = {s.config["setting"]: s.config["lr"] for s in specs}
    assert not any(key.startswith(("constant_prior", "adaptive")) for key in lr_of)
    groups = {g.name: g for g in e6.GROUPS}
    for name in paper["groups"]:
        assert {lr_of[s.key] for s in groups[name].settings} == {paper["group_lrs"][name]}
    # With the adaptive groups, their shared reference is run once per seed.
    adaptive = dict(paper, groups=["NoiseWindow", "BetaRange"], group_lrs=dict(NoiseWindow=3e-4, BetaRange=3e-4))
    specs = e6.plan(adaptive, [0, 1], {})
    keys = {s.config["setting"] for s in specs}
    assert len(specs) == len({s.run_id for s in specs}) == 2 * len(keys) == 2 * 6


def test_profile_groups_and_lrs_are_validated():
    with pytest.raises(ValueError, match="groups"):
        e6.plan(dict(TINY, groups=["Priors"]), [0], {})
    with pytest.raises(ValueError, match="group_lrs"):
        e6.plan(dict(TINY, group_lrs=dict(Window=1e-3)), [0], {})
    # The adaptive reference belongs to NoiseWindow and BetaRange: two lrs for it cannot both be run.
    with pytest.raises(ValueError, match="shared by groups"):
        e6.plan(dict(TINY, group_lrs=dict(NoiseWindow=1e-3, BetaRange=1e-4)), [0], {})
    with pytest.raises(ValueError, match="learning rate"):
        e6.plan(dict(TINY, group_lrs=dict(Confidence=0.0)), [0], {})


def test_outputs_cover_only_the_groups_that_ran(tmp_path):
    """A profile without the prior group: the figure has one column fewer, the numbers carry each group's lr."""
    def run(key, seed, loss, lr):
        return dict(config=dict(TINY, setting=key, seed=seed, lr=lr),
                    metrics=dict(test_loss=loss, test_accuracy=0.5, val_loss=loss))

    confidence = next(g for g in e6.GROUPS if g.name == "Confidence")
    runs = [run(s.key, seed, 1.0 + 0.1 * i + 0.01 * seed, 3e-3)
            for i, s in enumerate(confidence.settings) for seed in (0, 1, 2)]
    out = FigureOutput(profile="paper", figure_dir=tmp_path, table_dir=tmp_path)
    e6.figures(runs, out)
    table = (tmp_path / "e6_ablations.md").read_text()
    assert "Prior" not in table and "0.003" in table
    numbers = e6.numbers(runs)
    assert numbers["ConfidenceLr"] == 3e-3 and "PriorLr" not in numbers and "PriorTestLossSpread" not in numbers
    assert numbers["ConfidenceBestSetting"] == "off" and numbers["ConfidenceBestTestLoss"] == pytest.approx(1.01)
    # Every setting is shifted by the same amount on every seed: separated with or without Holm's correction.
    assert numbers["ComparedCount"] == 4 and numbers["SeparatedCount"] == 4 and numbers["HolmSeparatedCount"] == 4
