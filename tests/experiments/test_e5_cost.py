"""E5 cost at a tiny size: the runs time every variant against AdamW, the state bytes are Adam's, outputs are drawn."""

import json
import math

import pytest
import torch

from experiments import bench_step
from experiments import e5_cost as e5
from experiments.e5_bench_report import within_phrase
from experiments.plotting import FigureOutput
from tests.experiments.helpers import run_tiny

CPU = torch.device("cpu")
TINY = dict(sizes=[1e3, 1e4], repeats=[3, 3], warmup=3, layout="many", cpu_max_size=None, seeds=[0])
VARIANT_NAMES = set(e5.VARIANTS)
ADAMW_NAMES = {"AdamW [loop]", "AdamW [foreach]"}


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("e5_results")
    return run_tiny(e5, TINY, root)


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory):
    """A tiny `make bench` report, as figures() finds the committed one in results/bench/."""
    folder = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:
        bench_step.main(["--sizes", "2e4", "--repeats", "2", "--out", str(folder / "step_cpu.json"), "--no-progress"])
    finally:
        torch.set_num_threads(threads)  # main() fixes the thread count for the whole process
    return folder


def test_plan_uses_the_profile_repeats_or_the_bench_defaults():
    specs = e5.plan(TINY, [0], {})
    assert [(s.config["size"], s.config["repeats"]) for s in specs] == [(1000, 3), (10000, 3)]
    full = e5.plan(e5.PROFILES["full"], [0], {})
    assert [s.config["size"] for s in full] == [100_000, 1_000_000, 10_000_000, 30_000_000, 100_000_000]
    assert [s.config["repeats"] for s in full] == [bench_step.default_repeats(s.config["size"]) for s in full]
    with pytest.raises(ValueError, match="repeats"):
        e5.plan(dict(TINY, repeats=[3]), [0], {})


def test_candidates_are_torch_adamw_and_the_library_default_path():
    names = {c.name for c in e5.cost_candidates(CPU)}
    assert names == ADAMW_NAMES | VARIANT_NAMES
    assert e5.default_adamw_name(CPU) == "AdamW [loop]"  # torch steps CPU tensors one by one by default


def test_tiny_runs_give_positive_ratios_and_adams_state_bytes(tiny_runs):
    assert [r["metrics"]["size"] for r in tiny_runs] == [1000, 10000]
    for run in tiny_runs:
        metrics = run["metrics"]
        stats = metrics["candidates"]
        assert stats.keys() == ADAMW_NAMES | VARIANT_NAMES
        assert metrics["baseline"] in ADAMW_NAMES and stats[metrics["baseline"]]["ratio"] == 1.0
        assert metrics["rounds"] == 3 and metrics["device"] == "cpu" and metrics["threads"] >= 1
        for name, entry in stats.items():
            for key in ("ratio", "ratio_q25", "ratio_q75", "ratio_to_default_adamw", "median_s"):
                assert math.isfinite(entry[key]) and entry[key] > 0, (name, key)
            assert entry["ratio_q25"] <= entry["ratio_q75"], name
            assert len(run["curves"][f"times_s/{name}"]) == 3
        # The fastest AdamW is never slower than the default one.
        assert stats[metrics["default_adamw"]]["ratio"] >= 1.0
        state = {name: entry["state_bytes_per_param"] for name, entry in stats.items()}
        assert state["KalmanAdam adam"] == state["AdamW [loop]"] == state["AdamW [foreach]"] == 8.0
        assert state["KalmanAdam constant"] == state["KalmanAdam adam+VA"] == 8.0
        assert state["KalmanLAMB"] == state["KalmanLAMB precision"] == 8.0
        assert state["KalmanAdam adaptive"] == 24.0


def test_measured_state_bytes_match_d6(tiny_runs):
    d6 = e5.analytic_costs()
    stats = tiny_runs[-1]["metrics"]["candidates"]
    assert d6[e5.ADAMW_D6]["state_bytes_per_parameter"] == stats["AdamW [loop]"]["state_bytes_per_param"]
    for name, (_, _, d6_name) in e5.VARIANTS.items():
        assert d6[d6_name]["state_bytes_per_parameter"] == stats[name]["state_bytes_per_param"], name


def test_sizes_above_the_cpu_cap_are_skipped_and_ignored(tiny_runs):
    skipped = e5.execute(dict(size=10**5, repeats=3, warmup=3, layout="many", cpu_max_size=1e4, seed=0), CPU)
    assert "cpu_max_size" in skipped["metrics"]["skipped"]
    fake = dict(tiny_runs[0], run_id="size=1e5_seed0", metrics=skipped["metrics"], curves={})
    assert e5.numbers(tiny_runs + [fake]) == e5.numbers(tiny_runs)


def test_numbers_are_the_ratios_at_the_largest_size(tiny_runs):
    numbers = e5.numbers(tiny_runs)
    largest = tiny_runs[-1]["metrics"]["candidates"]
    assert numbers["LargestSize"] == 10000
    for name, (key, _, _) in e5.VARIANTS.items():
        assert numbers[f"{key}Ratio"] == pytest.approx(largest[name]["ratio"], abs=1e-3), key
        assert math.isfinite(numbers[f"{key}Ratio"]) and numbers[f"{key}Ratio"] > 0
    assert numbers["StateBytesAdam"] == numbers["StateBytesAdamW"] == 8.0
    assert numbers["StateBytesAdaptive"] == 24.0
    assert all(k.isalpha() and k[0].isupper() for k in numbers)


def test_figures_draw_the_e5_runs_and_the_bench_report(tiny_runs, bench_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(e5, "BENCH_DIR", bench_dir)
    e5.figures(tiny_runs, FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path))
    for suffix in ("pdf", "png", "tex", "md"):
        assert (tmp_path / f"e5_cost.{suffix}").stat().st_size > 0, suffix
    table = (tmp_path / "e5_cost.md").read_text()
    assert "E5 smoke cpu (N=1e4)" in table and "bench cpu (N=2e4)" in table
    row = next(line for line in table.splitlines() if line.startswith("| KalmanAdam adaptive"))
    assert row.split("|")[2:4] == [" 24 ", " 24 "]  # measured and D6 state bytes per parameter


def test_figures_without_a_bench_report(tiny_runs, tmp_path, monkeypatch):
    monkeypatch.setattr(e5, "BENCH_DIR", tmp_path / "missing")
    e5.figures(tiny_runs, FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path))
    table = (tmp_path / "e5_cost.md").read_text()
    assert "E5 smoke cpu" in table and "bench" not in table


def _fused_report(size=30_000_000):
    entry = lambda ratio, fraction: dict(  # noqa: E731
        median_s=0.01 * ratio, ratio_to_compiled_adamw=ratio, ratio_to_fastest_adamw=ratio, bandwidth_fraction=fraction,
        bytes_moved_per_element=28, state_bytes_per_param=8.0, first_step_s=5.0, times_s=[0.01 * ratio] * 5)
    candidates = {"AdamW [compiled]": entry(1.0, 0.6), "AdamW [fused]": entry(0.8, 0.7),
                  "KalmanAdam adam": entry(0.8, 0.7), "KalmanLAMB": entry(2.0, 0.4), "KalmanLAMB precision": entry(3.0, 0.3)}
    # Rounds where the machine slowed both alike (rounds 1 and 3) and rounds where it slowed one (0 and 4).
    candidates["KalmanLAMB"]["times_s"] = [0.02, 0.04, 0.02, 0.03, 0.02]
    candidates["KalmanLAMB precision"]["times_s"] = [0.04, 0.06, 0.03, 0.045, 0.024]
    return dict(provenance=dict(git_commit="abcdef0123", threads=2), results=[dict(
        size=size, tensors=30, rounds=30, bandwidth_bytes_per_s=4e10, copy_bandwidth_bytes_per_s=2e10,
        in_place_bandwidth_bytes_per_s=4e10, candidates=candidates)])


def test_fused_numbers_and_table(tmp_path):
    numbers = e5.fused_numbers(_fused_report())
    assert numbers["FusedCpuAdamCompiled"] == 0.8 and numbers["FusedCpuTorchFusedCompiled"] == 0.8
    assert numbers["FusedCpuAdamBandwidth"] == 70 and numbers["FusedCpuBandwidth"] == 40.0
    assert numbers["FusedCpuLambPrecisionOverLamb"] == 1.5 and numbers["FusedCpuCommit"] == "abcdef0"
    assert numbers["FusedCpuProcesses"] == 1  # a report without the setting: one process
    # Per-round ratios 2.0, 1.5, 1.5, 1.5, 1.2: quartiles of the pairs, not ratios of each candidate's quartiles.
    assert numbers["FusedCpuLambPrecisionOverLambLow"] == 1.35 and numbers["FusedCpuLambPrecisionOverLambHigh"] == 1.75
    assert e5.fused_numbers(None) == {}
    # The targets' bootstrap intervals (bench_fused.ratio_interval) at the largest size, named like their ratios.
    report = _fused_report()
    report["targets"] = [
        dict(candidate="KalmanAdam adam", versus="AdamW [compiled]", size=30_000_000, interval=[0.97, 1.041]),
        dict(candidate="KalmanLAMB precision", versus="KalmanLAMB", size=30_000_000, interval=[1.08, 1.16]),
        dict(candidate="KalmanAdam adam", versus="AdamW [compiled]", size=10_000_000, interval=[0.5, 0.6]),
        dict(candidate="KalmanAdam adam", versus="copy", size=30_000_000, ratio=0.7)]
    numbers = e5.fused_numbers(report)
    assert (numbers["FusedCpuAdamCompiledIntervalLow"], numbers["FusedCpuAdamCompiledIntervalHigh"]) == (0.97, 1.04)
    assert numbers["FusedCpuLambPrecisionOverLambIntervalHigh"] == 1.16
    e5.fused_table(_fused_report(), FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path))
    table = (tmp_path / "e5_fused.md").read_text()
    assert "| KalmanAdam adam | 8 | 28 | 0.80 | 0.80 | 70 | 5.0 |" in table


def test_fused_cuda_numbers_and_table_are_ratios_to_torchs_fused_adamw(tmp_path):
    report = _fused_report(100_000_000)
    report["results"][-1].update(tensor_size=1_000_000, baseline="AdamW [fused]")
    report["provenance"].update(torch="2.11.0+cu130", device_name="NVIDIA H200")
    numbers = e5.fused_cuda_numbers(report)
    assert numbers["FusedCudaAdamOverTorchFused"] == 1.0 and numbers["FusedCudaTorchFusedOverTorchFused"] == 1.0
    assert numbers["FusedCudaAdamWCompiledOverTorchFused"] == 1.25 and numbers["FusedCudaAdamBandwidth"] == 70
    assert numbers["FusedCudaLambPrecisionOverLamb"] == 1.5 and numbers["FusedCudaDevice"] == "NVIDIA H200"
    assert numbers["FusedCudaCopyBandwidth"] == 0.02 and numbers["FusedCudaTensorSize"] == 1_000_000
    assert e5.fused_cuda_numbers(None) == {}
    renamed = e5.fused_cuda_numbers(report, prefix="FusedCudaPinned")  # a second run of the same device
    assert renamed["FusedCudaPinnedAdamOverTorchFused"] == 1.0 and renamed["FusedCudaPinnedLambPrecisionOverLamb"] == 1.5
    assert len(renamed) == len(numbers) and not any(key.startswith("FusedCudaAdam") for key in renamed)
    e5.fused_cuda_table(report, FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path))
    assert "| AdamW [compiled] | 28 | 1.25 | 60 | 5.0 |" in (tmp_path / "e5_fused_cuda.md").read_text()
    assert e5.fused_cuda_numbers(report, timing="queued") == {}  # a report without queued steps


def test_queued_steps_get_their_own_cuda_macros_and_table_columns(tmp_path):
    report = _fused_report(100_000_000)
    synchronized = report["results"][-1]
    synchronized.update(tensor_size=10_000_000, baseline="AdamW [fused]", timing="synchronized", steps_per_sample=1)
    queued = json.loads(json.dumps(synchronized))
    queued.update(timing="queued", steps_per_sample=10)
    queued["candidates"]["KalmanAdam adam"].update(median_s=0.0076, times_s=[0.0076] * 5, bandwidth_fraction=0.99)
    report["results"].append(queued)
    report["provenance"].update(torch="2.11.0+cu130", device_name="NVIDIA H200")
    numbers = e5.fused_cuda_numbers(report)  # the synchronized steps by default, though the queued come last
    assert numbers["FusedCudaAdamOverTorchFused"] == 1.0 and "FusedCudaStepsPerSample" not in numbers
    queued_numbers = e5.fused_cuda_numbers(report, prefix="FusedCudaQueued", timing="queued")
    assert queued_numbers["FusedCudaQueuedAdamOverTorchFused"] == 0.95
    assert queued_numbers["FusedCudaQueuedAdamBandwidth"] == 99 and queued_numbers["FusedCudaQueuedStepsPerSample"] == 10
    e5.fused_cuda_table(report, FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path))
    text = (tmp_path / "e5_fused_cuda.md").read_text()
    assert "| KalmanAdam adam | 28 | 1.00 | 70 | 0.95 | 99 | 5.0 |" in text and "blocks of 10 steps" in text


def test_overhead_numbers_and_a_damaged_overhead_report(tmp_path):
    report = _fused_report(1_000)
    report["results"][-1]["tensor_size"] = 10
    numbers = e5.overhead_numbers(report)
    assert numbers["FusedCpuOverheadAdamOverTorchFused"] == 1.0
    assert numbers["FusedCpuOverheadAdamWCompiledOverTorchFused"] == 1.25
    assert e5.overhead_numbers(None) == {} and e5.overhead_report(tmp_path) is None
    (tmp_path / "fused_cpu_overhead.json").write_text('{"results": []}')
    with pytest.raises(ValueError, match="fused_cpu_overhead.json.*make bench"):
        e5.overhead_report(tmp_path)


def test_a_damaged_fused_report_stops_the_build_with_its_name(tmp_path):
    (tmp_path / "fused_cpu.json").write_text('{"results": [')
    with pytest.raises(ValueError, match="fused_cpu.json.*make bench"):
        e5.fused_report("cpu", tmp_path)
    assert e5.fused_report("cpu", tmp_path / "missing") is None


@pytest.mark.parametrize("small, large, phrase", [(2.3, 2.4, "at the smaller size only"), (2.3, 2.2, "at both sizes"),
                                                  (2.5, 2.2, "at the larger size only"), (2.4, 2.5, "at neither size")])
def test_the_fused_targets_are_said_from_the_ratios(small, large, phrase):
    """The adaptive mode's target (1.1x its bytes ratio to compiled AdamW, 1.1 x 60/28 = 2.36) and precision
    weighting's (1.1x plain LAMB) as the paper's words, so that a rerun bench cannot leave a stale claim."""
    report = _fused_report()
    largest = report["results"][0]
    smallest = json.loads(json.dumps(largest))
    smallest["size"] = 10_000_000
    for result, ratio in ((smallest, small), (largest, large)):
        result["candidates"]["KalmanAdam adaptive"] = dict(result["candidates"]["KalmanLAMB"],
                                                           ratio_to_compiled_adamw=ratio, bytes_moved_per_element=60)
        # The mid start-up row (step 1000) is judged against the same bound, here 0.1 below the first steps' ratios.
        result["candidates"]["KalmanAdam adaptive, step 1k"] = dict(result["candidates"]["KalmanLAMB"],
                                                                    ratio_to_compiled_adamw=ratio - 0.1,
                                                                    bytes_moved_per_element=60)
    report["results"] = [smallest, largest]
    numbers = e5.fused_numbers(report)
    assert numbers["FusedCpuAdaptiveTargetBound"] == 2.36
    assert numbers["FusedCpuAdaptiveWithinTarget"] == phrase
    assert numbers["FusedCpuAdaptiveMidStartUpCompiled"] == round(large - 0.1, 2)
    assert numbers["FusedCpuAdaptiveMidStartUpWithinTarget"] == within_phrase(small - 0.1 <= 2.36, large - 0.1 <= 2.36)
    # Precision weighting takes 1.5x plain LAMB at both sizes here.
    assert numbers["FusedCpuLambPrecisionWithinTarget"] == "at neither size"


def _models_report():
    """A bench_models report: two tasks, the default path at 2x/3x AdamW and the loop 1.5x slower than it."""
    def entry(ratio):
        return dict(ratio=ratio, median_s=ratio * 1e-3)

    results = []
    for task, scale in (("fashion_mnist", 2.0), ("fashion_mnist_resnet", 3.0)):
        candidates = {"AdamW [loop]": entry(1.0), "AdamW [foreach]": entry(1.2)}
        for name in e5.MODEL_OPTIMIZERS:
            ratio = 1.5 if name == "LAMB" else scale
            candidates[name], candidates[f"{name} [loop]"] = entry(ratio), entry(1.5 * ratio)
        results.append(dict(task=task, tensors=8 if scale == 2.0 else 29, largest_tensor=int(50_000 * scale), rounds=5,
                            candidates=candidates,
                            loop_speedup={name: 1.5 for name in e5.MODEL_OPTIMIZERS}))
    return dict(provenance=dict(git_commit="abcdef123456", threads=1), results=results)


def test_models_numbers_and_table(tmp_path):
    numbers = e5.models_numbers(_models_report())
    assert numbers["ModelsCnnTransportRatio"] == 2.0 and numbers["ModelsResnetInnovationVARatio"] == 3.0
    assert numbers["ModelsCnnLambRatio"] == 1.5
    # Plain LAMB is not a Kalman mode: the range runs over the Kalman optimizers only.
    assert numbers["ModelsKalmanRatioLow"] == 2.0 and numbers["ModelsKalmanRatioHigh"] == 3.0
    assert numbers["ModelsLoopSpeedupMax"] == 1.5 and numbers["ModelsCommit"] == "abcdef1"
    layout = (numbers["ModelsTensorsLow"], numbers["ModelsTensorsHigh"], numbers["ModelsLargestTensor"])
    assert layout == (8, 29, 150_000)
    assert all(k.isalpha() for k in numbers)
    assert e5.models_numbers(None) == {}
    e5.models_table(_models_report(), FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path))
    table = (tmp_path / "e5_models.md").read_text()
    assert "KalmanAdam-transport [loop]" in table and "3.00x" in table
    assert "ModelsFusedKalmanRatioLow" not in numbers  # a report without the fused path


def test_models_numbers_of_the_fused_path():
    report = _models_report()
    for result, scale in zip(report["results"], (1.0, 2.0)):
        result["candidates"]["AdamW [compiled]"] = dict(ratio=0.25 * scale, median_s=0.25e-3 * scale)
        result["fused_over_compiled_adamw"] = {}
        for index, name in enumerate(e5.MODEL_OPTIMIZERS):
            ratio = (10.0 if name == "LAMB" else 0.5 + 0.1 * index) * scale
            result["candidates"][f"{name} [fused]"] = dict(ratio=ratio, median_s=ratio * 1e-3, first_step_s=2.0 + index)
            result["fused_over_compiled_adamw"][name] = ratio / (0.25 * scale)
    numbers = e5.models_numbers(report)
    kalman = [0.5 + 0.1 * i for i, name in enumerate(e5.MODEL_OPTIMIZERS) if name != "LAMB"]  # LAMB is no Kalman mode
    assert numbers["ModelsFusedKalmanRatioLow"] == round(min(kalman), 1)
    assert numbers["ModelsFusedKalmanRatioHigh"] == round(2 * max(kalman), 1)
    assert numbers["ModelsFusedOverCompiledLow"] == round(min(kalman) / 0.25, 1)
    assert (numbers["ModelsCompiledAdamWRatioLow"], numbers["ModelsCompiledAdamWRatioHigh"]) == (0.25, 0.5)
    assert numbers["ModelsFusedFirstStepHigh"] == 2 + max(i for i, n in enumerate(e5.MODEL_OPTIMIZERS) if n != "LAMB")


def test_a_damaged_models_report_stops_the_build_with_its_name(tmp_path):
    (tmp_path / "models_cpu.json").write_text('{"results": [{"task": "fashion_mnist"}]}')
    with pytest.raises(ValueError, match="models_cpu.json"):
        e5.models_report(tmp_path)
    assert e5.models_report(tmp_path / "missing") is None


def test_cuda_profile_numbers_are_read_from_the_step_profile(tmp_path):
    path = tmp_path / "cuda_step_profile.log"
    assert e5.cuda_profile_numbers(path) == {}  # no GPU was lent
    path.write_text("1e+08 parameters in tensors of 1e+07\n"
                    "  AdamW [fused]          host   0.140 ms  wall   0.897 ms  kernels   0.786 ms in 6 per step\n"
                    "  KalmanAdam adam [torch kernel] host   0.252 ms  wall   1.000 ms  kernels   0.789 ms in 6 per step\n"
                    "  SomethingElse          host   9.000 ms  wall   9.000 ms  kernels   9.000 ms in 1 per step\n")
    numbers = e5.cuda_profile_numbers(path)
    assert numbers == {"FusedCudaProfileTorchFusedHost": 0.14, "FusedCudaProfileTorchFusedWall": 0.897,
                       "FusedCudaProfileTorchFusedKernels": 0.786, "FusedCudaProfileAdamTorchKernelHost": 0.252,
                       "FusedCudaProfileAdamTorchKernelWall": 1.0, "FusedCudaProfileAdamTorchKernelKernels": 0.789}
    path.write_text("truncated")
    with pytest.raises(ValueError, match="cuda_step_profile.log"):
        e5.cuda_profile_numbers(path)


def test_ab_step_times_are_the_range_over_runs_and_a_damaged_run_stops_the_build(tmp_path):
    """Each side's macros span its runs' medians (us); a run without a candidate stops the build with its name."""
    def run(name, fitted_s, innovation_s):
        result = {"candidates": {"KalmanAdam fitted": {"median_s": fitted_s},
                                 "KalmanAdam innovation": {"median_s": innovation_s}}}
        (tmp_path / name).write_text(json.dumps({"results": [{"candidates": {}}, result]}))
    run("before1.json", 900e-6, 600e-6)
    run("before2.json", 1000e-6, 610e-6)
    run("after1.json", 700e-6, 590e-6)
    numbers = e5.ab_step_times(tmp_path, "Ab", ("KalmanAdam fitted", "KalmanAdam innovation"))
    assert numbers["AbBeforeFittedMicrosecondsLow"] == 900 and numbers["AbBeforeFittedMicrosecondsHigh"] == 1000
    assert numbers["AbAfterFittedMicrosecondsLow"] == numbers["AbAfterFittedMicrosecondsHigh"] == 700
    assert numbers["AbBeforeInnovationMicrosecondsHigh"] == 610
    assert e5.ab_step_times(tmp_path / "missing", "Ab", ("KalmanAdam fitted",)) == {}
    (tmp_path / "after2.json").write_text(json.dumps({"results": [{"candidates": {"KalmanAdam fitted": {}}}]}))
    with pytest.raises(ValueError, match="after2.json: unreadable"):
        e5.ab_step_times(tmp_path, "Ab", ("KalmanAdam fitted",))


def test_ab_step_times_read_bench_cuda_hosts_reports(tmp_path):
    """bench_cuda_host's reports give the median over their processes; one without the candidate stops the build."""
    for name, us in (("before1.json", 400.4), ("after1.json", 310.0), ("after2.json", 330.0)):
        (tmp_path / name).write_text(json.dumps({"summary": {"KalmanAdam innovation": {"median_us": us}}}))
    numbers = e5.ab_step_times(tmp_path, "Host", ("KalmanAdam innovation",))
    assert numbers == {"HostBeforeInnovationMicrosecondsLow": 400, "HostBeforeInnovationMicrosecondsHigh": 400,
                       "HostAfterInnovationMicrosecondsLow": 310, "HostAfterInnovationMicrosecondsHigh": 330}
    with pytest.raises(ValueError, match="before1.json: unreadable"):
        e5.ab_step_times(tmp_path, "Host", ("KalmanAdam fitted",))


def test_triton_bytes_macros_and_a_damaged_report_stops_the_build(tmp_path):
    """Bytes per element per candidate from `make triton-bytes`'s report; a damaged one stops with its name."""
    report = {"config": {"tensors": 10, "tensor_size": 10**7}, "provenance": {"git_commit": "abcdef123456"},
              "results": {"KalmanLAMB": {"bytes_per_element": 44.0}, "KalmanLAMB precision": {"bytes_per_element": 72.4}}}
    (tmp_path / "triton_bytes.json").write_text(json.dumps(report))
    numbers = e5.triton_bytes_numbers(tmp_path / "triton_bytes.json", "Tb")
    assert numbers["TbLamb"] == 44 and numbers["TbLambPrecision"] == 72 and numbers["TbCommit"] == "abcdef1"
    assert numbers["TbTensors"] == 10 and numbers["TbTensorSize"] == "10,000,000"
    assert e5.triton_bytes_numbers(tmp_path / "missing.json", "Tb") == {}
    (tmp_path / "triton_bytes.json").write_text('{"config": {}}')
    with pytest.raises(ValueError, match="triton_bytes.json: unreadable.*make triton-bytes"):
        e5.triton_bytes_numbers(tmp_path / "triton_bytes.json", "Tb")
