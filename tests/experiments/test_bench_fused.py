"""The fused-path benchmark runs end to end on a tiny size and reports what `make bench` commits."""

import json

import pytest
import torch

from experiments import bench_fused
from kalman_optim import fused as fused_path

pytestmark = pytest.mark.skipif(not fused_path.compiler_available("cpu"), reason="no C++ compiler for inductor")


def test_tiny_benchmark_writes_complete_results(tmp_path):
    out = tmp_path / "fused.json"
    argv = ["--sizes", "2e4", "--tensor-size", "1e4", "--repeats", "2", "--threads", "1", "--out", str(out),
            "--candidates", "AdamW [fused]", "KalmanAdam innovation", "--no-progress", "--warm-cache"]
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
    assert result["size"] == 20_000 and result["tensors"] == 2 and result["rounds"] == 2
    assert result["bandwidth_bytes_per_s"] == result["copy_bandwidth_bytes_per_s"] > 0
    assert result["in_place_bandwidth_bytes_per_s"] > 0
    compiled = result["candidates"]["AdamW [compiled]"]
    assert compiled["ratio_to_compiled_adamw"] == 1.0 and compiled["bytes_moved_per_element"] == 28
    innovation = result["candidates"]["KalmanAdam innovation"]
    assert innovation["compilations"] == 1 and innovation["state_bytes_per_param"] > 12  # 12 B + the lag sample
    assert innovation["bytes_moved_per_element"] == 36 and len(innovation["warmup_times_s"]) == bench_fused.WARMUP_STEPS
    assert 1 <= innovation["steps_to_steady"] <= bench_fused.WARMUP_STEPS + 1
    assert innovation["bandwidth_fraction"] == pytest.approx(
        36 * 20_000 / innovation["median_s"] / result["bandwidth_bytes_per_s"])
    targets = {row["target"] for row in report["targets"]}
    assert "KalmanAdam innovation: >= 50% of copy bandwidth" in targets


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        bench_fused.parse_args(["--repeats", "0"])
    with pytest.raises(SystemExit):
        bench_fused.parse_args(["--candidates", "SGD"])
