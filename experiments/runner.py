"""The experiment runner: plan runs, skip the completed ones, execute the rest, write one JSON file per run.

An experiment is a module in `experiments.registry.EXPERIMENTS` with

    NAME: str                       # e.g. "e1_synthetic"; results go to results/<profile>/<NAME>/
    TITLE: str                      # one line for `python -m experiments list`
    PROFILES: dict[str, dict]       # settings per profile ("smoke", "full"), seeds under the key "seeds"
    plan(settings, seeds, done) -> list[RunSpec]
        every run of the experiment given the results `done` so far (run_id -> result dict). Multi-stage
        experiments (tune a learning rate, then run seeds at the best) return the later stage only once
        the earlier one is in `done`; the runner calls plan() until it asks for nothing new.
    execute(config, device) -> dict
        one run: a dict with "metrics" (scalars) and optionally "curves" (lists); deterministic in
        config["seed"]. Called in a fresh RNG state seeded from config["seed"].
    figures(runs, out) -> None      # optional: figures and tables from the list of result dicts
    numbers(runs) -> dict[str, Any] # optional: named numbers for the paper's macros

A result file holds {"experiment", "run_id", "profile", "config", "config_hash", "seed", "metrics",
"curves", "provenance", "wall_time_s"}; it is written atomically, so a killed run leaves no file and is
simply redone, and a rerun skips every run whose file exists with the same config hash (unless forced).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from experiments.provenance import REPO_ROOT, atomic_write_json, provenance

RESULTS_ROOT = REPO_ROOT / "results"
# smoke: minutes on 2 CPU cores; paper: the paper's scale sized for the 2-core CPU (issue 14; experiments gain it one
# by one); full: sized for one GPU.
PROFILES = ("smoke", "paper", "full")
# File-name safe on every file system and in a shell: ASCII letters, digits, '-', '_', '.', '=' (no leading dot).
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_=-][A-Za-z0-9_.=-]*")
DEVICE_PATTERN = re.compile(r"cpu|cuda(:[0-9]+)?")


@dataclass(frozen=True)
class RunSpec:
    """One run: a file-name-safe id unique within the experiment, and a JSON-serializable config."""

    run_id: str
    config: dict[str, Any] = field(hash=False)

    def __post_init__(self) -> None:
        if not RUN_ID_PATTERN.fullmatch(self.run_id):
            raise ValueError(f"Invalid run_id {self.run_id!r}: use letters, digits, '-', '_', '.', '='")
        if "seed" not in self.config:
            raise ValueError(f"run {self.run_id}: config needs a 'seed'")


def config_hash(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE_PATTERN.fullmatch(name):
        raise ValueError(f"Invalid device: expected auto, cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"Invalid device: {name!r} requested but torch.cuda.is_available() is False")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_path(root: Path, profile: str, experiment: str, run_id: str) -> Path:
    return Path(root) / profile / experiment / f"{run_id}.json"


def load_result(path: Path, expected_hash: str | None = None) -> dict | None:
    """The result at `path`, or None when missing, unreadable or for another config."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or "metrics" not in result:
        return None
    if expected_hash is not None and result.get("config_hash") != expected_hash:
        return None
    return result


#: Keys every result file carries, with their types (checked whenever results are read for figures).
RESULT_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "experiment": str, "profile": str, "config": dict, "config_hash": str, "seed": int,
    "metrics": dict, "provenance": dict, "wall_time_s": (int, float),
}
PROVENANCE_KEYS = ("git_commit", "git_dirty", "python", "torch", "numpy", "device", "seed", "date_utc")


def schema_problem(result: Any) -> str | None:
    """Why `result` is not a valid result record, or None when it is."""
    if not isinstance(result, dict):
        return f"not a JSON object but {type(result).__name__}"
    for key, kind in RESULT_SCHEMA.items():
        if key not in result:
            return f"missing key {key!r}"
        if not isinstance(result[key], kind) or isinstance(result[key], bool):
            return f"key {key!r} is {type(result[key]).__name__}, expected {getattr(kind, '__name__', kind)}"
    missing = [key for key in PROVENANCE_KEYS if key not in result["provenance"]]
    return f"provenance lacks {', '.join(missing)}" if missing else None


def _read_validated(path: Path, expected_hash: str) -> tuple[dict | None, str | None]:
    """(result, None) for a valid, current result file, else (None, one line saying what is wrong with it)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"missing: {path}"
    except (OSError, ValueError) as error:
        return None, f"corrupt: {path} ({type(error).__name__}: {error})"
    problem = schema_problem(result)
    if problem is not None:
        return None, f"invalid: {path} ({problem})"
    if result["config_hash"] != expected_hash:
        return None, f"stale: {path} (its config is not the current plan's)"
    return result, None


def _walk_plan(module: ModuleType, profile: str, root: Path, read) -> tuple[list[dict[str, Any]], list[str]]:
    """Follow `module.plan` (whose later stages depend on earlier results) over the results on disk, reading each
    planned run with `read(path, config_hash) -> (result or None, problem or None)`: the results in plan order and
    the problems found."""
    settings = settings_for(module, profile)
    seeds = list(settings.get("seeds", [0]))
    done: dict[str, dict] = {}
    problems: dict[str, str] = {}
    while True:
        specs = module.plan(settings, seeds, done)
        added = False
        for spec in specs:
            if spec.run_id in done or spec.run_id in problems:
                continue
            result, problem = read(run_path(root, profile, module.NAME, spec.run_id), config_hash(spec.config))
            if result is not None:
                done[spec.run_id] = result
                added = True
            elif problem is not None:
                problems[spec.run_id] = problem
        if not added:
            return [done[s.run_id] for s in specs if s.run_id in done], list(problems.values())


def scan_results(module: ModuleType, profile: str, root: Path = RESULTS_ROOT) -> tuple[list[dict[str, Any]], list[str]]:
    """The valid, current results of the runs the plan asks for, and one line naming the file for every planned
    run whose result is missing, unreadable, schema-invalid or stale (its config hash is not the plan's)."""
    return _walk_plan(module, profile, root, _read_validated)


def settings_for(module: ModuleType, profile: str) -> dict[str, Any]:
    if profile not in module.PROFILES:
        raise ValueError(f"Invalid profile for {module.NAME}: expected one of {sorted(module.PROFILES)}, got {profile!r}")
    return dict(module.PROFILES[profile])


def execute_one(module: ModuleType, spec: RunSpec, profile: str, device: torch.device) -> dict[str, Any]:
    seed_everything(int(spec.config["seed"]))
    start = time.perf_counter()
    output = module.execute(dict(spec.config), device)
    wall = time.perf_counter() - start
    if "metrics" not in output:
        raise RuntimeError(f"{module.NAME}.execute returned no 'metrics' for run {spec.run_id}")
    return dict(
        experiment=module.NAME,
        run_id=spec.run_id,
        profile=profile,
        config=spec.config,
        config_hash=config_hash(spec.config),
        seed=int(spec.config["seed"]),
        metrics=output["metrics"],
        curves=output.get("curves", {}),
        provenance=provenance(device, seed=int(spec.config["seed"])),
        wall_time_s=wall,
    )


def run_experiment(
    module: ModuleType,
    profile: str = "smoke",
    *,
    seeds: list[int] | None = None,
    device: str | torch.device = "auto",
    force: bool = False,
    root: Path = RESULTS_ROOT,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> list[dict[str, Any]]:
    """Run every planned run of `module` not yet completed; return all of its results, in plan order.

    With shard = (k, n) only the runs whose id hashes to k mod n are executed (n processes share the cores; each
    reads the others' results from disk when it plans again); it returns the results present when it stops, and
    a later call without a shard runs what the shards left (e.g. stages that became ready after a shard stopped)."""
    if shard is not None and not (len(shard) == 2 and 0 <= shard[0] < shard[1]):
        raise ValueError(f"Invalid shard: expected (k, n) with 0 <= k < n, got {shard!r}")
    settings = settings_for(module, profile)
    seeds = list(seeds) if seeds is not None else list(settings.get("seeds", [0]))
    device = device if isinstance(device, torch.device) else resolve_device(device)
    done: dict[str, dict] = {}
    redone: set[str] = set()  # with force, each run is executed once even though plan() is called again
    while True:
        specs = module.plan(settings, seeds, done)
        ids = [s.run_id for s in specs]
        if len(set(ids)) != len(ids):
            raise RuntimeError(f"{module.NAME}.plan returned duplicate run ids")
        pending = []
        loaded = False
        for spec in specs:
            if spec.run_id in done:
                continue
            path = run_path(root, profile, module.NAME, spec.run_id)
            existing = None if (force and spec.run_id not in redone) else load_result(path, config_hash(spec.config))
            if existing is not None:
                done[spec.run_id] = existing
                loaded = True
            elif shard is None or in_shard(spec.run_id, shard):
                pending.append(spec)
        if not pending:
            if not loaded:  # plan() was given every result it asked for and asked for nothing new
                return [done[s.run_id] for s in specs if s.run_id in done]
            continue  # loaded results may unlock a later stage
        bar = tqdm(pending, desc=f"{module.NAME} [{profile}]", unit="run", disable=not progress, leave=False)
        for spec in bar:
            bar.set_postfix_str(spec.run_id[:40])
            result = execute_one(module, spec, profile, device)
            atomic_write_json(run_path(root, profile, module.NAME, spec.run_id), result)
            done[spec.run_id] = result
            redone.add(spec.run_id)


def in_shard(run_id: str, shard: tuple[int, int]) -> bool:
    """Whether run `run_id` belongs to shard k of n (a stable hash of the id, the same in every process)."""
    k, n = shard
    return int(hashlib.sha256(run_id.encode()).hexdigest(), 16) % n == k


def load_experiment_results(module: ModuleType, profile: str, root: Path = RESULTS_ROOT) -> list[dict[str, Any]]:
    """The results of the runs `module.plan` asks for that exist on disk (no execution)."""
    return _walk_plan(module, profile, root, lambda path, expected: (load_result(path, expected), None))[0]


def complete(module: ModuleType, profile: str, root: Path = RESULTS_ROOT) -> bool:
    """True when every run the plan asks for has a result on disk."""
    settings = settings_for(module, profile)
    seeds = list(settings.get("seeds", [0]))
    runs = load_experiment_results(module, profile, root)
    done = {r["run_id"]: r for r in runs}
    return all(s.run_id in done for s in module.plan(settings, seeds, done))
