"""The fused-path benchmark runs end to end on a tiny size and reports what `make bench` commits."""

import json
import time

import pytest
import torch

from experiments import bench_fused
from kalman_optim import fused as fused_path

pytestmark = pytest.mark.skipif(not fused_path.compiler_available("cpu"), reason="no C++ compiler for inductor")


def test_tiny_benchmark_writes_complete_results(tmp_path):
    out = tmp_path / "fused.json"
    argv = ["--sizes", "2e4", "--tensor-size", "1e4", "--repeats", "2", "--threads", "1", "--out", str(out),
            "--candidates", "AdamW [fused]", "KalmanAdam innovation", "--no-progress", "--warm-cache", "--processes", "2"]
    threads = torch.get_num_threads()
    try:
        returned = bench_fused.main(argv)
    finally:
        torch.set_num_threads(threads)  # main() fixes the thread count for the whole process
    report = json.loads(out.read_text())
    assert report["results"] == json.loads(json.dumps(returned["results"]))
    assert out.with_suffix(".md").read_text().startswith("# Fused optimizer steps")
    assert report["provenance"]["threads"] == 1 and report["config"]["tensor_size"] == 10_000
    # The baseline and plain LAMB (the reference of precision weighting) are always measured.
    assert report["candidates"] == ["AdamW [fused]", "AdamW [compiled]", "KalmanAdam innovation", "KalmanLAMB"]

    (result,) = report["results"]
    # Two fresh processes of 2 rounds each, merged: every process's medians are kept beside the merged ones.
    assert result["size"] == 20_000 and result["tensors"] == 2 and result["rounds"] == 4
    assert len(result["processes"]) == 2 and report["config"]["processes"] == 2
    assert result["bandwidth_bytes_per_s"] == result["copy_bandwidth_bytes_per_s"] > 0
    assert result["in_place_bandwidth_bytes_per_s"] > 0
    compiled = result["candidates"]["AdamW [compiled]"]
    assert compiled["ratio_to_compiled_adamw"] == 1.0 and compiled["bytes_moved_per_element"] == 28
    innovation = result["candidates"]["KalmanAdam innovation"]
    assert innovation["compilations"] == 1 and innovation["state_bytes_per_param"] > 12  # 12 B + the lag sample
    assert innovation["bytes_moved_per_element"] == 36 and len(innovation["warmup_times_s"]) == bench_fused.WARMUP_STEPS
    assert 1 <= innovation["steps_to_steady"] <= bench_fused.WARMUP_STEPS + 1
    fractions = [36 * 20_000 / run["candidates"]["KalmanAdam innovation"]["median_s"] / run["bandwidth_bytes_per_s"]
                 for run in result["processes"]]
    assert innovation["bandwidth_fraction"] == pytest.approx(sum(fractions) / 2)  # the median of two
    targets = {row["target"] for row in report["targets"]}
    assert "KalmanAdam innovation: >= 50% of copy bandwidth" in targets


def test_queued_steps_add_a_second_timing_of_the_same_optimizers(tmp_path):
    out = tmp_path / "fused.json"
    argv = ["--sizes", "2e4", "--tensor-size", "1e4", "--repeats", "3", "--threads", "1", "--out", str(out),
            "--candidates", "AdamW [fused]", "KalmanAdam adam+VA", "--no-progress", "--warm-cache", "--processes", "1",
            "--queued-steps", "4"]
    threads = torch.get_num_threads()
    try:
        report = bench_fused.main(argv)
    finally:
        torch.set_num_threads(threads)
    synchronized, queued = report["results"]
    assert (synchronized["timing"], synchronized["steps_per_sample"]) == ("synchronized", 1)
    assert (queued["timing"], queued["steps_per_sample"]) == ("queued", 4) and report["config"]["queued_steps"] == 4
    assert bench_fused.timing_result(report, "queued") is queued and bench_fused.timing_result(report) is synchronized
    for result in (synchronized, queued):
        entry = result["candidates"]["KalmanAdam adam+VA"]
        assert len(entry["times_s"]) == 3 and entry["median_s"] > 0 and result["copy_bandwidth_bytes_per_s"] > 0
    # The targets are evaluated on both timings, and the tables say which is which.
    timings = {(row["candidate"], row["timing"]) for row in report["targets"] if row["versus"] != "copy"}
    assert timings == {("KalmanAdam adam+VA", "synchronized"), ("KalmanAdam adam+VA", "queued")}
    text = out.with_suffix(".md").read_text()
    assert "N=2e4 queued" in text and "blocks of 4 steps" in text


def test_a_queued_sample_is_the_mean_time_of_its_steps():
    class Sleeper:
        calls = 0

        def step(self):
            Sleeper.calls += 1
            time.sleep(0.002)

    seconds = bench_fused.queued_step_time(Sleeper(), 5, torch.device("cpu"))
    assert Sleeper.calls == 5 and 0.002 <= seconds < 0.01


def test_the_variants_are_measured_only_where_they_differ_from_the_default():
    cpu, cuda = bench_fused.default_candidates("cpu"), bench_fused.default_candidates("cuda")
    assert "KalmanAdam adam [torch kernel]" in cuda and "KalmanAdam adam [torch kernel]" not in cpu
    assert set(cuda) - set(cpu) == {"KalmanAdam adam [torch kernel]", "KalmanAdam constant [torch kernel]",
                                    "KalmanAdam adam [no CUDA graphs]", "KalmanAdam adam+VA [no CUDA graphs]",
                                    "KalmanLAMB precision [no CUDA graphs]"}
    param = [torch.nn.Parameter(torch.zeros(3))]
    cache = lambda optimizer: optimizer._kernel_cache(optimizer.param_groups[0])  # noqa: E731
    assert cache(bench_fused.CANDIDATES["KalmanAdam adam [torch kernel]"][0](param)).torch_kernel_devices == ("cpu", "cuda")
    assert cache(bench_fused.CANDIDATES["KalmanAdam adam [no CUDA graphs]"][0](param)).graph_devices == ()
    assert cache(bench_fused.CANDIDATES["KalmanLAMB precision"][0](param)).graph_devices == ("cuda",)


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        bench_fused.parse_args(["--repeats", "0"])
    with pytest.raises(SystemExit):
        bench_fused.parse_args(["--candidates", "SGD"])
    with pytest.raises(SystemExit):
        bench_fused.parse_args(["--queued-steps", "-1"])


def _process_result(times: dict[str, list[float]], bandwidth: float) -> dict:
    """One process's result of one size, as bench_size writes it (only what merge_processes reads)."""
    medians = {name: sorted(values)[len(values) // 2] for name, values in times.items()}
    fastest = min((n for n in times if n.startswith("AdamW")), key=medians.get)
    return dict(size=100, tensor_size=10, tensors=10, rounds=3, bandwidth_bytes_per_s=bandwidth,
                copy_bandwidth_bytes_per_s=bandwidth, in_place_bandwidth_bytes_per_s=2 * bandwidth, fastest_adamw=fastest,
                candidates={name: dict(median_s=medians[name], times_s=values, bandwidth_fraction=1e-3 / medians[name],
                                       first_step_s=float(len(values)), ratio_to_compiled_adamw=0.0)
                            for name, values in times.items()})


def test_processes_merge_into_medians_of_per_process_ratios():
    # The second process is slow for every candidate alike (its tensors landed badly), the third only for AdamW.
    runs = [_process_result({"AdamW [compiled]": [1.0, 1.0, 1.0], "KalmanLAMB": [2.0, 2.0, 2.0]}, 10.0),
            _process_result({"AdamW [compiled]": [3.0, 3.0, 3.0], "KalmanLAMB": [6.0, 6.0, 6.0]}, 8.0),
            _process_result({"AdamW [compiled]": [2.0, 2.0, 2.0], "KalmanLAMB": [2.0, 2.0, 2.0]}, 12.0)]
    merged = bench_fused.merge_processes(runs)
    lamb = merged["candidates"]["KalmanLAMB"]
    # Per-process ratios 2, 2, 1: their median, not the ratio of the medians of the times (2 / 2 = 1).
    assert lamb["ratio_to_compiled_adamw"] == 2.0 and bench_fused.ratio_between(merged, "KalmanLAMB", "AdamW [compiled]") == 2.0
    assert lamb["median_s"] == 2.0 and merged["candidates"]["AdamW [compiled]"]["median_s"] == 2.0
    assert lamb["times_s"] == [2.0] * 3 + [6.0] * 3 + [2.0] * 3 and merged["rounds"] == 9
    assert lamb["first_step_s"] == 3.0  # the first process's (cold) warm-up
    assert merged["bandwidth_bytes_per_s"] == 10.0 and len(merged["processes"]) == 3
    rows = {row["candidate"]: row for row in bench_fused.evaluate_targets(merged) if row["versus"] != "copy"}
    assert rows == {} or all(row["ratio"] > 0 for row in rows.values())


def test_ratio_interval_covers_the_ratio_and_widens_with_the_spread_between_processes():
    """The bootstrap interval of a target ratio: around the measured one, wider when the processes disagree,
    and reproducible (seeded)."""
    steady = [_process_result({"AdamW [compiled]": [1.0, 1.01, 0.99] * 4, "KalmanLAMB": [1.1, 1.11, 1.09] * 4,
                               "KalmanLAMB precision": [1.2, 1.21, 1.19] * 4}, 10.0) for _ in range(3)]
    spread = [_process_result({"AdamW [compiled]": [1.0] * 12, "KalmanLAMB": [ratio] * 12}, 10.0)
              for ratio in (0.9, 1.1, 1.3)]
    narrow = bench_fused.ratio_interval(bench_fused.merge_processes(steady), "KalmanLAMB", "AdamW [compiled]")
    wide = bench_fused.ratio_interval(bench_fused.merge_processes(spread), "KalmanLAMB", "AdamW [compiled]")
    assert narrow[0] <= 1.1 <= narrow[1] and narrow[1] - narrow[0] < 0.05
    assert wide[0] <= 0.9 + 1e-12 and wide[1] >= 1.3 - 1e-12  # three processes: the extremes are resampled
    assert bench_fused.ratio_interval(bench_fused.merge_processes(spread), "KalmanLAMB", "AdamW [compiled]") == wide
    (row,) = [row for row in bench_fused.evaluate_targets(bench_fused.merge_processes(steady)) if row["versus"] != "copy"]
    assert row["candidate"] == "KalmanLAMB precision" and row["interval"][0] <= row["ratio"] <= row["interval"][1]


def test_processes_flag_is_checked_and_not_passed_twice():
    assert bench_fused.parse_args([]).processes == 5
    with pytest.raises(SystemExit):
        bench_fused.parse_args(["--processes", "0"])
    argv = ["--sizes", "1e4", "--out", "x.json", "--processes=2", "--quick"]
    assert bench_fused._without_option(bench_fused._without_option(argv, "--out"), "--processes") == [
        "--sizes", "1e4", "--quick"]


def test_kernel_options_are_parsed_as_python_literals_and_bad_ones_stop_the_run():
    args = bench_fused.parse_args(["--kernel-option", "combo_kernels=False", "--kernel-option", "max_autotune=1"])
    assert args.kernel_options == {"combo_kernels": False, "max_autotune": 1}
    assert bench_fused.parse_args([]).kernel_options == {}
    for bad in ("combo_kernels", "combo_kernels=off"):  # no value; not a literal
        with pytest.raises(SystemExit):
            bench_fused.parse_args(["--kernel-option", bad])
