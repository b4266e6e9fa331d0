"""Argument validation shared by the closed forms and the optimizers.

Each check names the argument and its allowed range, and returns the value converted to a float (for
Python numbers) or unchanged (for tensors). Tensors are checked element-wise.
"""

from __future__ import annotations

import math
from numbers import Real

import torch


def _as_checked(value, name: str, *, floating: bool = True):
    """Return `value` as a float, or the tensor itself; TypeError for anything else."""
    if isinstance(value, torch.Tensor):
        if floating and not torch.is_floating_point(value):
            raise TypeError(f"{name} must be a float or a floating-point tensor, got a tensor of dtype {value.dtype}")
        if value.is_complex():
            raise TypeError(f"{name} must be real, got a complex tensor")
        return value
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number or a torch.Tensor, got {type(value).__name__}")
    return float(value)


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return repr(value.item())
        return f"a tensor with values in [{value.min().item()!r}, {value.max().item()!r}]"
    return repr(value)


def _all(condition) -> bool:
    return bool(condition.all()) if isinstance(condition, torch.Tensor) else bool(condition)


def _isfinite(x):
    return torch.isfinite(x) if isinstance(x, torch.Tensor) else math.isfinite(x)


def check_noise_ratio(value, name: str = "noise_ratio"):
    """noise ratio lambda = q / r: finite and >= 0."""
    x = _as_checked(value, name)
    if not _all(_isfinite(x)) or not _all(x >= 0):
        raise ValueError(f"{name} must be finite and >= 0 (lambda = q / r, in [0, inf)), got {_describe(x)}")
    return x


def check_beta(value, name: str = "beta"):
    """EWMA coefficient: in the open interval (0, 1)."""
    x = _as_checked(value, name)
    if not _all(_isfinite(x)) or not _all((x > 0) & (x < 1)):
        raise ValueError(f"{name} must be in the open interval (0, 1), got {_describe(x)}")
    return x


def check_prior_gain(value, name: str = "prior_gain"):
    """Normalized prior variance k_0 = P_0 / r: finite and >= 0 (None means a diffuse prior)."""
    x = _as_checked(value, name)
    if not _all(_isfinite(x)) or not _all(x >= 0):
        raise ValueError(f"{name} must be finite and >= 0 (P_0 / r; use None for a diffuse prior), got {_describe(x)}")
    return x


def check_step(value, name: str = "step"):
    """Step count t: an integer >= 1 (an integer-valued float or tensor is accepted, as Adam's state stores one)."""
    x = _as_checked(value, name, floating=False)
    integral = (x == torch.round(x)) if isinstance(x, torch.Tensor) and torch.is_floating_point(x) else True
    if isinstance(x, float):
        integral = math.isfinite(x) and x == round(x)
    if not _all(integral) or not _all(x >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {_describe(value)}")
    return x
