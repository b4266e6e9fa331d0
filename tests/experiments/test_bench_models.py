"""The model-parameter benchmark runs end to end on one of E4's models and reports what `make bench` commits."""

import json

import torch

from experiments import bench_models, e4_training, training


def test_candidates_cover_every_e4_paper_optimizer_on_both_eager_paths_and_the_fused_one():
    names = {c.name for c in bench_models.candidates()}
    for optimizer in e4_training.PAPER_OPTIMIZERS:
        if optimizer != "AdamW":
            assert {optimizer, f"{optimizer} [loop]"} <= names
            assert f"{optimizer} [fused]" in names
    assert {"AdamW [loop]", "AdamW [foreach]", "AdamW [compiled]"} <= names
    assert "AdamW [compiled]" not in {c.name for c in bench_models.candidates(paths=("default", "loop"))}
    # The two paths of one optimizer are configured as named (the library default resolves foreach=None itself).
    params = [torch.nn.Parameter(torch.zeros(3))]
    loop = next(c for c in bench_models.candidates() if c.name == "KalmanAdam-transport [loop]").build(params)
    assert loop.param_groups[0]["foreach"] is False and loop.param_groups[0]["fused"] is False


def test_fused_candidates_time_their_first_step_and_compiled_adamw_is_no_baseline():
    first_steps = {}
    cands = {c.name: c for c in bench_models.candidates(first_steps)}
    params = [torch.nn.Parameter(torch.zeros(3))]
    params[0].grad = torch.ones(3)
    fused = cands["KalmanAdam-extrapolated [fused]"].build(params)
    assert fused.param_groups[0]["fused"] is True and first_steps["KalmanAdam-extrapolated [fused]"] > 0
    assert cands["AdamW [compiled]"].optimizer != "AdamW"  # bench_one's baseline is the fastest eager AdamW


def test_model_parameters_are_the_e4_paper_models_with_seeded_gradients():
    params = bench_models.model_parameters("fashion_mnist_resnet", seed=0)
    settings = e4_training.PROFILES["paper"]["tasks"]["fashion_mnist_resnet"]
    torch.manual_seed(0)
    model = training.make_task("fashion_mnist_resnet", torch.device("cpu"), **settings).model
    assert [p.shape for p in params] == [p.shape for p in model.parameters() if p.requires_grad]
    again = bench_models.model_parameters("fashion_mnist_resnet", seed=0)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(params, again))
    assert len(params) > 20  # many small tensors: the case the benchmark is for


def test_tiny_benchmark_writes_complete_results(tmp_path):
    out = tmp_path / "models.json"
    argv = ["--tasks", "fashion_mnist_resnet", "--repeats", "2", "--out", str(out), "--no-progress",
            "--paths", "default", "loop"]  # the fused path's compiles: test_fused_candidates_... and bench_fused
    threads = torch.get_num_threads()
    try:
        returned = bench_models.main(argv)
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report["results"] == json.loads(json.dumps(returned["results"]))
    assert out.with_suffix(".md").read_text().startswith("# Optimizer step time on E4's paper models")
    assert report["provenance"]["threads"] == 1 and report["provenance"]["git_commit"] is not None
    (result,) = report["results"]
    assert result["task"] == "fashion_mnist_resnet" and result["tensors"] > 20 and result["rounds"] == 2
    stats = result["candidates"]
    assert stats.keys() == {c.name for c in bench_models.candidates(paths=("default", "loop"))}
    assert stats[result["baseline"]]["ratio"] == 1.0 and result["baseline"].startswith("AdamW")
    speedups = result["loop_speedup"]
    assert set(speedups) == set(e4_training.PAPER_OPTIMIZERS) - {"AdamW"} and all(s > 0 for s in speedups.values())
    # State memory is measured on the model's tensors: Adam's two moments for AdamW and LAMB.
    assert stats["AdamW [loop]"]["state_bytes_per_param"] == 8.0 and stats["LAMB"]["state_bytes_per_param"] == 8.0
