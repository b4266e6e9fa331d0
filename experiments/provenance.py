"""Where a result came from: git commit and dirty flag, versions, device, threads, date; and atomic writes."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
# The allocator's and the thread pools' settings change timings; they are recorded beside every result.
ENV_PREFIXES = ("MALLOC_", "LD_PRELOAD", "OMP_", "MKL_", "KMP_", "CUDA_VISIBLE_DEVICES", "PYTORCH_")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty): dirty counts tracked changes outside results/ only, so results being written, or deleted to
    be rerun, do not flip it; the code is what the flag vouches for."""
    if os.environ.get("KALMAN_OPTIM_GIT_COMMIT"):
        # A copy of the tree sent elsewhere (a GPU machine) whose .git, if any, is not the tree's: the commit it was
        # copied from, as told; "dirty" is then unknown.
        return os.environ["KALMAN_OPTIM_GIT_COMMIT"], None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    return (commit.strip() if commit else None), (None if status is None else bool(status.strip()))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device, argv: list[str] | None = None, seed: int | None = None,
               module: str = "experiments") -> dict[str, Any]:
    commit, dirty = git_state()
    info = dict(
        git_commit=commit,
        git_dirty=dirty,
        python=platform.python_version(),
        torch=torch.__version__,
        numpy=np.__version__,
        platform=platform.platform(),
        device=str(device),
        device_name=device_name(device),
        cpu_count=os.cpu_count(),
        threads=torch.get_num_threads(),
        interop_threads=torch.get_num_interop_threads(),
        date_utc=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        environment={k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)},
        command=shlex.join(["python", "-m", module, *(argv if argv is not None else sys.argv[1:])]),
        seed=seed,
    )
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename it over `path`: a kill leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write(path, json.dumps(payload, indent=1, sort_keys=True, allow_nan=True) + "\n")
