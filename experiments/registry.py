"""The experiments, in the order `make experiments` runs them."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

EXPERIMENT_MODULES = (
    "e0_ewma_demo",
    "e1_synthetic",
    "e2_gradient_noise",
    "e3_noisy_quadratic",
    "e4_training",
    "e5_cost",
    "e6_ablations",
    "e7_misspecified",
)


def load(name: str) -> ModuleType:
    """The experiment module called `name` (its NAME, e.g. "e1_synthetic", or a unique prefix like "e1")."""
    matches = [m for m in EXPERIMENT_MODULES if m == name or m.split("_", 1)[0] == name]
    if len(matches) != 1:
        raise ValueError(f"Invalid experiment {name!r}: expected one of {', '.join(EXPERIMENT_MODULES)} (or e0..e7)")
    return importlib.import_module(f"experiments.{matches[0]}")


def available() -> list[str]:
    """Registered experiments whose module exists (imported lazily: each may pull in data sets)."""
    found = []
    for name in EXPERIMENT_MODULES:
        if importlib.util.find_spec(f"experiments.{name}") is not None:
            found.append(name)
    return found
