"""The step-time benchmark runs end to end on a tiny size and reports what `make bench` commits."""

import json

import torch

from experiments import bench_step

PROVENANCE = (
    "git_commit", "git_dirty", "python", "torch", "numpy", "device", "device_name", "threads", "date_utc", "environment",
    "command", "argv", "seed",
)


def test_tiny_benchmark_writes_complete_results(tmp_path):
    out = tmp_path / "step.json"
    argv = ["--sizes", "2e4", "--repeats", "2", "--warmup", "3", "--threads", "1", "--out", str(out), "--no-progress"]
    threads = torch.get_num_threads()
    try:
        returned = bench_step.main(argv)
    finally:
        torch.set_num_threads(threads)  # main() fixes the thread count for the whole process

    report = json.loads(out.read_text())
    assert report["results"] == json.loads(json.dumps(returned["results"]))
    assert out.with_suffix(".md").read_text().startswith("# Optimizer step time")
    assert not list(tmp_path.glob("*.tmp")), "atomic write left a temporary file"

    provenance = report["provenance"]
    assert set(PROVENANCE) <= provenance.keys()
    assert provenance["threads"] == 1 and provenance["seed"] == 0 and provenance["argv"] == argv
    assert provenance["torch"] == torch.__version__

    expected = {c.name for c in bench_step.candidates(torch.device("cpu"))}
    assert {"AdamW [loop]", "AdamW [foreach]", "KalmanAdam adam", "KalmanAdam adaptive [foreach]",
            "KalmanAdam adam+VA [loop]", "KalmanLAMB", "KalmanLAMB precision"} <= expected
    assert {c["name"] for c in report["candidates"]} == expected

    (result,) = report["results"]
    assert result["size"] == 20_000 and result["tensors"] == 1 and result["rounds"] == 2
    assert result["baseline"] in ("AdamW [loop]", "AdamW [foreach]")
    stats = result["candidates"]
    assert stats.keys() == expected
    for name, entry in stats.items():
        assert len(entry["times_s"]) == 2 and all(t > 0 for t in entry["times_s"]), name
        assert entry["median_s"] > 0 and entry["iqr_s"] >= 0 and entry["ratio"] > 0, name
    assert stats[result["baseline"]]["ratio"] == 1.0

    # Facts of the implementations: Adam's two moments, plus four tensors in mode "adaptive".
    state = {name: entry["state_bytes_per_param"] for name, entry in stats.items()}
    for name in ("AdamW [loop]", "AdamW [foreach]", "KalmanLAMB", "KalmanLAMB precision"):
        assert state[name] == 8.0, name
    for path in ("", " [foreach]", " [loop]"):
        for mode in ("adam", "constant", "adam+VA"):
            assert state[f"KalmanAdam {mode}{path}"] == 8.0, (mode, path)
        assert state[f"KalmanAdam adaptive{path}"] == 24.0, path

    assert {(t["target"], t["path"]) for t in report["targets"]} == {
        (target["id"], path) for target in bench_step.TARGETS for path in bench_step.PATHS
    }
    assert all(isinstance(t["met"], bool) for t in report["targets"] + report["target_summary"])
