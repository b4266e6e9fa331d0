"""E2's fixed design, shared by its plan, its measurements and its reports: the KalmanAdam modes compared, the
interval levels and quantiles recorded, the training phases, the filter models whose innovations are tested,
the names of tasks, modes and layer types, and how numbers are stored in the result files."""

from __future__ import annotations

import math

import numpy as np

MODES = ("adam", "constant", "adaptive", "innovation", "innovation-medium", "innovation-fast", "fitted")
# D7's read-out at three noise windows (noise_beta 0.99, 0.95, 0.9): the noise ground truth and long runs
CALIBRATED_MODES = ("innovation", "innovation-medium", "innovation-fast")
LEVELS = (0.5, 0.8, 0.9, 0.95, 0.99)
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Coverage counts coordinates whose full-batch gradient is not exactly 0 (CalibrationCheckpoints.measure); in
# the config, so results counted over "active" coordinates (dead units with a decaying mean included) are stale.
COVERAGE_OVER = "live"
ADAM_BETA1 = 0.9
PHASES = ("early", "middle", "late")
TASK_LABELS = {"fashion_mnist": "Fashion-MNIST CNN", "fashion_mnist_resnet": "Fashion-MNIST ResNet (BatchNorm)",
               "shakespeare": "Shakespeare transformer"}
MODE_LABELS = {"adam": "adam (= AdamW)", "constant": "constant", "adaptive": "adaptive", "innovation": "innovation (D7)",
               "innovation-medium": "innovation, noise β 0.95", "innovation-fast": "innovation, noise β 0.9", "fitted": "fitted (D7, model read-out)"}
WHITENESS_MODELS = ("fitted", "iid", "adam")  # plotted; "moment" (the D4 lambda) is stored as well
WHITENESS_LABELS = {"fitted": "fitted λ (ML)", "iid": "i.i.d. (λ = 0)", "adam": "β = 0.9", "moment": "fitted λ (D4)"}


# ------------------------------------------------------------------------------------------ layer types
def layer_type(name: str) -> str:
    """Coarse kind of a parameter tensor from its module path (SmallCNN / CharTransformer / SmallResNet names)."""
    kind = "bias" if name.endswith("bias") else "weight"
    if "norm" in name:
        return "layernorm"
    if name.startswith(("stem.", "stages.")):  # SmallResNet: Conv2d at .0 and .3 of each Sequential, BatchNorm2d else
        return "conv weight" if name.endswith((".0.weight", ".3.weight")) else f"batchnorm {kind}"
    if name.startswith("head.2."):  # SmallResNet's output Linear (SmallCNN's head.2 is a ReLU)
        return f"output {kind}"
    if name.startswith("token"):
        return "embedding (tied)"
    if name.startswith("position"):
        return "position"
    if "attn" in name:
        return f"attention {kind}"
    if "linear1" in name or "linear2" in name:
        return f"MLP {kind}"
    if name.startswith("features"):
        return f"conv {kind}"
    if name.startswith("head.3"):
        return f"output {kind}"
    if name.startswith("head"):
        return f"hidden linear {kind}"
    return name


# The layer types in the models' order, for tables and figures (result files store them sorted by name).
TYPE_ORDER = ("all", "conv weight", "conv bias", "hidden linear weight", "hidden linear bias", "output weight",
              "output bias", "embedding (tied)", "position", "attention weight", "attention bias", "MLP weight",
              "MLP bias", "layernorm", "batchnorm weight", "batchnorm bias")


# ------------------------------------------------------------------------------------------ stored numbers
def finite_or_none(value: float) -> float | None:
    """JSON-safe number: inf / NaN become None (printed as ∞ / n/a)."""
    return float(value) if math.isfinite(value) else None


def quantiles(values: np.ndarray) -> list[float | None]:
    """QUANTILES of `values` without interpolation (inverted CDF), so infinite values stay exact."""
    if values.size == 0:
        return [None] * len(QUANTILES)
    return [finite_or_none(v) for v in np.quantile(values, QUANTILES, method="inverted_cdf")]
