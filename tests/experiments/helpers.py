"""Shared test helpers for the experiment modules."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from unittest import mock

import torch

from experiments.runner import run_experiment


def run_tiny(module: ModuleType, settings: dict, root: Path) -> list[dict]:
    """Run `module` on CPU with `settings` as a temporary profile "tiny" (PROFILES is restored afterwards)."""
    with mock.patch.dict(module.PROFILES, {"tiny": settings}):
        return run_experiment(module, "tiny", root=root, device=torch.device("cpu"), progress=False)
