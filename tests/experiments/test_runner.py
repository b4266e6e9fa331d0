"""The experiment runner on a toy experiment: resume after a kill, atomic writes, provenance, skipping, --force,
config hashes, multi-stage plans, validation, determinism, devices and the registry."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from experiments import provenance as provenance_module
from experiments import registry
from experiments.runner import (
    RunSpec, complete, config_hash, execute_one, load_experiment_results, load_result, resolve_device,
    run_experiment, run_path,
)
from tests.experiments import toy_experiment as toy

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
SMOKE_IDS = [f"run{i}_seed0" for i in range(4)]
PROVENANCE_FIELDS = ("git_commit", "git_dirty", "python", "torch", "numpy", "device", "device_name", "date_utc",
                     "seed", "command")


@pytest.fixture
def log(tmp_path, monkeypatch) -> Path:
    """The toy's execution log: one line per execute() call, in order."""
    path = tmp_path / "executions.log"
    monkeypatch.setenv("TOY_EXECUTION_LOG", str(path))
    monkeypatch.delenv("TOY_BLOCK_RUN", raising=False)
    monkeypatch.delenv("TOY_FAIL_RUN", raising=False)
    return path


def executions(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def run_toy(root: Path, profile: str = "smoke", **kwargs) -> list[dict]:
    return run_experiment(toy, profile, root=root, device=CPU, progress=False, **kwargs)


def result_dir(root: Path, profile: str = "smoke") -> Path:
    return root / profile / toy.NAME


# --- resume after a kill ---------------------------------------------------------------------------------------

def test_a_killed_run_leaves_the_completed_files_and_the_rerun_executes_only_the_missing_runs(tmp_path, log):
    root = tmp_path / "results"
    code = ("import sys; from experiments.runner import run_experiment; import tests.experiments.toy_experiment as toy; "
            "run_experiment(toy, 'smoke', root=sys.argv[1], device='cpu', progress=False)")
    env = dict(os.environ, PYTHONPATH=str(REPO), TOY_EXECUTION_LOG=str(log), TOY_BLOCK_RUN="run2_seed0")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    blocked = Path(f"{log}.blocked")
    try:
        deadline = time.monotonic() + 120
        while not blocked.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "the toy run never reached its third run"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert executions(log) == ["run0_seed0", "run1_seed0", "run2_seed0"]
    folder = result_dir(root)
    assert sorted(p.name for p in folder.iterdir()) == ["run0_seed0.json", "run1_seed0.json"]

    # A SIGKILL in the middle of a write would leave the temporary file: it is not a result.
    leftover = folder / ".run2_seed0.json.k1ll3d.tmp"
    leftover.write_text('{"metrics": {"loss": 0.')
    assert load_result(run_path(root, "smoke", toy.NAME, "run2_seed0")) is None
    assert load_result(leftover) is None
    assert [r["run_id"] for r in load_experiment_results(toy, "smoke", root)] == ["run0_seed0", "run1_seed0"]
    assert not complete(toy, "smoke", root)

    results = run_toy(root)
    assert [r["run_id"] for r in results] == SMOKE_IDS
    assert executions(log) == ["run0_seed0", "run1_seed0", "run2_seed0", "run2_seed0", "run3_seed0"]
    assert sorted(p.name for p in folder.glob("*.json")) == [f"{i}.json" for i in SMOKE_IDS]
    assert complete(toy, "smoke", root)


# --- atomic writes ---------------------------------------------------------------------------------------------

def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("broken", ["json.dumps", "os.fsync", "os.replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch, broken):
    path = tmp_path / "out" / "result.json"
    provenance_module.atomic_write_json(path, {"metrics": {"loss": 1.0}})
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(f"simulated failure in {broken}")

    module_name, function = broken.split(".")
    monkeypatch.setattr(getattr(provenance_module, module_name), function, fail)
    with pytest.raises(OSError, match="simulated"):
        provenance_module.atomic_write_json(path, {"metrics": {"loss": 2.0}})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert folder_listing(path.parent) == ["result.json"]


def test_atomic_write_makes_a_readable_file_without_leftovers(tmp_path):
    path = tmp_path / "deep" / "er" / "x.json"
    provenance_module.atomic_write_json(path, {"a": [1, 2], "b": float("nan")})
    assert folder_listing(path.parent) == ["x.json"]
    assert json.loads(path.read_text())["a"] == [1, 2]
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp's private mode is not kept


def test_a_forced_rerun_that_fails_to_write_keeps_every_old_result(tmp_path, log, monkeypatch):
    root = tmp_path / "results"
    run_toy(root)
    folder = result_dir(root)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(provenance_module.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        run_toy(root, force=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# --- the result file and its provenance ------------------------------------------------------------------------

def test_every_result_file_holds_config_metrics_and_provenance(tmp_path, log):
    root = tmp_path / "results"
    results = run_toy(root)
    for returned in results:
        on_disk = json.loads(run_path(root, "smoke", toy.NAME, returned["run_id"]).read_text())
        assert on_disk == json.loads(json.dumps(returned))
        assert on_disk["experiment"] == toy.NAME and on_disk["profile"] == "smoke"
        assert on_disk["config_hash"] == config_hash(on_disk["config"])
        assert on_disk["seed"] == on_disk["config"]["seed"] == 0
        assert set(on_disk["metrics"]) == {"loss", "noise"} and len(on_disk["curves"]["trace"]) == 5
        assert isinstance(on_disk["wall_time_s"], float) and 0 <= on_disk["wall_time_s"] < 60
        info = on_disk["provenance"]
        assert set(PROVENANCE_FIELDS) <= set(info)
        assert info["seed"] == 0 and info["device"] == "cpu" and info["device_name"]
        assert info["python"].count(".") == 2 and info["torch"] == torch.__version__ and info["numpy"]
        assert info["git_commit"] is None or len(info["git_commit"]) == 40
        assert info["git_dirty"] in (None, True, False)
        assert info["command"].startswith("python -m experiments")
        date = dt.datetime.fromisoformat(info["date_utc"])
        assert date.utcoffset() == dt.timedelta(0)
        assert abs((dt.datetime.now(dt.timezone.utc) - date).total_seconds()) < 600


def test_execute_without_metrics_is_an_error():
    broken = types.SimpleNamespace(NAME="broken", execute=lambda config, device: {"curves": {}})
    with pytest.raises(RuntimeError, match="no 'metrics'"):
        execute_one(broken, RunSpec("r", {"seed": 0}), "smoke", CPU)


# --- skipping, forcing, config hashes --------------------------------------------------------------------------

def test_a_second_run_executes_nothing_and_returns_the_same_results(tmp_path, log):
    root = tmp_path / "results"
    first = run_toy(root)
    assert executions(log) == SMOKE_IDS
    mtimes = {p.name: p.stat().st_mtime_ns for p in result_dir(root).iterdir()}
    second = run_toy(root)
    assert executions(log) == SMOKE_IDS
    assert json.loads(json.dumps(first)) == second
    assert {p.name: p.stat().st_mtime_ns for p in result_dir(root).iterdir()} == mtimes


def test_force_reruns_every_run_exactly_once(tmp_path, log):
    root = tmp_path / "results"
    run_toy(root)
    run_toy(root, force=True)
    assert executions(log) == SMOKE_IDS + SMOKE_IDS


def test_force_on_a_multi_stage_plan_reruns_every_stage_exactly_once(tmp_path, log):
    root = tmp_path / "results"
    first = [r["run_id"] for r in run_toy(root, "staged")]
    log.unlink()
    assert [r["run_id"] for r in run_toy(root, "staged", force=True)] == first
    assert sorted(executions(log)) == sorted(first)


def test_a_changed_config_is_rerun(tmp_path, log, monkeypatch):
    root = tmp_path / "results"
    old = run_toy(root)
    monkeypatch.setitem(toy.PROFILES["smoke"], "scale", 2.0)
    new = run_toy(root)
    assert executions(log) == SMOKE_IDS + SMOKE_IDS
    for before, after in zip(old, new):
        assert after["config"]["scale"] == 2.0 and after["config_hash"] != before["config_hash"]
        assert load_result(run_path(root, "smoke", toy.NAME, after["run_id"]), before["config_hash"]) is None


def test_a_result_file_with_another_config_hash_is_rerun_alone(tmp_path, log):
    root = tmp_path / "results"
    run_toy(root)
    path = run_path(root, "smoke", toy.NAME, "run1_seed0")
    stale = json.loads(path.read_text())
    stale["config_hash"] = "0" * 16
    path.write_text(json.dumps(stale))
    run_toy(root)
    assert executions(log) == SMOKE_IDS + ["run1_seed0"]


def test_unreadable_or_foreign_files_are_not_results(tmp_path):
    path = tmp_path / "r.json"
    assert load_result(path) is None  # missing
    for text in ("", "{", "[1, 2]", '{"config": {}}', "\x00\x01"):
        path.write_text(text)
        assert load_result(path) is None, text
    path.write_text(json.dumps({"metrics": {}, "config_hash": "abc"}))
    assert load_result(path) is not None and load_result(path, "abc") is not None
    assert load_result(path, "abd") is None


def test_config_hash_ignores_key_order_and_sees_values():
    assert config_hash({"a": 1, "seed": 0}) == config_hash({"seed": 0, "a": 1})
    assert config_hash({"a": 1, "seed": 0}) != config_hash({"a": 1.5, "seed": 0})
    assert len(config_hash({"seed": 0})) == 16


# --- multi-stage plans -----------------------------------------------------------------------------------------

STAGE1 = ["tune_x=0.1", "tune_x=0.5", "tune_x=0.9"]
STAGE2 = ["final_seed0", "final_seed1", "final_seed2"]


def test_a_multi_stage_plan_runs_stage_two_at_the_best_stage_one_result(tmp_path, log):
    results = run_toy(tmp_path, "staged")
    assert [r["run_id"] for r in results] == STAGE1 + STAGE2
    assert executions(log) == STAGE1 + STAGE2
    assert {r["config"]["x"] for r in results[3:]} == {0.5}  # target 0.5: stage 1's best candidate
    assert [r["seed"] for r in results[3:]] == [0, 1, 2]


@pytest.mark.parametrize("failing_run", ["tune_x=0.5", "final_seed0", "final_seed1"])
def test_a_multi_stage_plan_resumes_after_a_crash_in_either_stage(tmp_path, log, monkeypatch, failing_run):
    monkeypatch.setenv("TOY_FAIL_RUN", failing_run)
    with pytest.raises(RuntimeError, match="toy failure"):
        run_toy(tmp_path, "staged")
    executed_before = executions(log)
    monkeypatch.delenv("TOY_FAIL_RUN")
    results = run_toy(tmp_path, "staged")
    assert [r["run_id"] for r in results] == STAGE1 + STAGE2
    # Only the crashed run and the ones after it are executed again.
    crashed_at = (STAGE1 + STAGE2).index(failing_run)
    assert executions(log)[len(executed_before):] == (STAGE1 + STAGE2)[crashed_at:]
    assert complete(toy, "staged", tmp_path)
    assert [r["run_id"] for r in load_experiment_results(toy, "staged", tmp_path)] == STAGE1 + STAGE2


def test_completed_multi_stage_results_are_loaded_without_executing(tmp_path, log):
    first = run_toy(tmp_path, "staged")
    second = run_toy(tmp_path, "staged")
    assert executions(log) == STAGE1 + STAGE2
    assert json.loads(json.dumps(first)) == second


# --- validation --------------------------------------------------------------------------------------------------

def test_duplicate_run_ids_are_rejected(tmp_path):
    duplicated = types.SimpleNamespace(
        NAME="dup", PROFILES={"smoke": {"seeds": [0]}},
        plan=lambda settings, seeds, done: [RunSpec("same", {"seed": 0}), RunSpec("same", {"seed": 1})],
        execute=lambda config, device: {"metrics": {}})
    with pytest.raises(RuntimeError, match="duplicate run ids"):
        run_experiment(duplicated, "smoke", root=tmp_path, device=CPU, progress=False)
    assert not any(tmp_path.rglob("*"))


@pytest.mark.parametrize("run_id", ["", "a/b", "a\\b", "a b", ".hidden", "..", "a\nb", "a:b", "a*b", "a?b", "é",
                                    "a\x00b", "a|b"])
def test_run_ids_that_are_not_file_name_safe_are_rejected(run_id):
    with pytest.raises(ValueError, match="Invalid run_id"):
        RunSpec(run_id, {"seed": 0})


@pytest.mark.parametrize("run_id", ["seed0", "lr=0.001_seed0", "SGD-momentum_B=1_seed0", "a.b", "size=1e4_seed0",
                                    "lambda=1e-05_seed3"])
def test_file_name_safe_run_ids_are_accepted(run_id):
    assert RunSpec(run_id, {"seed": 0}).run_id == run_id


def test_a_config_without_a_seed_is_rejected():
    with pytest.raises(ValueError, match="seed"):
        RunSpec("r", {"lr": 0.1})


def test_unknown_profiles_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="Invalid profile"):
        run_toy(tmp_path, "medium")


# --- determinism -------------------------------------------------------------------------------------------------

def test_the_same_seed_gives_identical_metrics_and_another_seed_does_not(tmp_path, log):
    spec = RunSpec("run0_seed7", dict(toy.plan(toy.PROFILES["smoke"], [7], {})[0].config))
    first, second = (execute_one(toy, spec, "smoke", CPU) for _ in range(2))
    assert first["metrics"] == second["metrics"] and first["curves"] == second["curves"]
    other = execute_one(toy, RunSpec("run0_seed8", dict(spec.config, seed=8)), "smoke", CPU)
    assert other["metrics"]["noise"] != first["metrics"]["noise"]
    # Whole experiments in two folders agree too, whatever ran before in this process.
    toy.rng_draw()
    a = run_toy(tmp_path / "a", seeds=[3, 4])
    b = run_toy(tmp_path / "b", seeds=[3, 4])
    assert [r["metrics"] for r in a] == [r["metrics"] for r in b]
    assert [r["seed"] for r in a] == [3] * 4 + [4] * 4


# --- devices -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpu", "CPU", "cuda0", "tpu", "", "cuda:", "cuda:x", "cuda:-1", "cuda:0:1"])
def test_invalid_device_names_are_rejected(name, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="Invalid device"):
        resolve_device(name)


def test_cuda_without_cuda_is_an_error_and_auto_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(ValueError, match="is_available"):
            resolve_device(name)
    assert resolve_device("auto") == CPU
    assert resolve_device("cpu") == CPU


def test_auto_and_cuda_names_resolve_when_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


# --- the registry --------------------------------------------------------------------------------------------------

def test_registry_loads_by_name_or_prefix():
    by_prefix = registry.load("e1")
    assert by_prefix.NAME == "e1_synthetic" and registry.load("e1_synthetic") is by_prefix
    for name in registry.available():
        assert registry.load(name).NAME == name


@pytest.mark.parametrize("name", ["e9", "e", "e1_synth", "synthetic", "", "all"])
def test_registry_rejects_unknown_names_listing_the_valid_ones(name):
    with pytest.raises(ValueError, match="Invalid experiment") as error:
        registry.load(name)
    assert all(module in str(error.value) for module in registry.EXPERIMENT_MODULES)


def test_every_registered_experiment_follows_the_module_contract():
    for name in registry.available():
        module = registry.load(name)
        assert module.NAME == name and module.TITLE and "\n" not in module.TITLE
        assert {"smoke", "full"} <= set(module.PROFILES)
        for settings in module.PROFILES.values():
            assert settings["seeds"] and all(type(seed) is int for seed in settings["seeds"])
        assert callable(module.plan) and callable(module.execute)


def test_git_state_is_dirty_for_code_changes_not_for_result_files(tmp_path, monkeypatch):
    """Rerunning results (their tracked files deleted or rewritten) leaves the flag clean; a code change does not."""
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results" / "paper").mkdir(parents=True)
    (tmp_path / "results" / "paper" / "run.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(provenance_module, "REPO_ROOT", tmp_path)
    commit, dirty = provenance_module.git_state()
    assert len(commit) == 40 and dirty is False
    (tmp_path / "results" / "paper" / "run.json").unlink()
    assert provenance_module.git_state()[1] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert provenance_module.git_state()[1] is True
