"""Argument validation shared by the closed forms and the optimizers.

Each check names the argument and its allowed range, and returns the value converted to a float (for
Python numbers) or unchanged (for tensors). Tensors are checked element-wise.
"""

from __future__ import annotations

import math
from numbers import Real

import torch


def is_dtensor(tensor) -> bool:
    """Whether `tensor` is a torch.distributed DTensor (FSDP2's parameters and state), by type name: importing
    torch.distributed.tensor to check costs time and is unavailable in some builds."""
    return type(tensor).__name__ == "DTensor"


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


def _check_finite_nonnegative(value, name: str, meaning: str):
    x = _as_checked(value, name)
    if not _all(_isfinite(x)) or not _all(x >= 0):
        raise ValueError(f"{name} must be finite and >= 0 ({meaning}), got {_describe(x)}")
    return x


def check_noise_ratio(value, name: str = "noise_ratio"):
    """noise ratio lambda = q / r: finite and >= 0."""
    return _check_finite_nonnegative(value, name, "lambda = q / r, in [0, inf)")


def check_beta(value, name: str = "beta"):
    """EWMA coefficient: in the open interval (0, 1)."""
    x = _as_checked(value, name)
    if not _all(_isfinite(x)) or not _all((x > 0) & (x < 1)):
        raise ValueError(f"{name} must be in the open interval (0, 1), got {_describe(x)}")
    return x


def check_prior_gain(value, name: str = "prior_gain"):
    """Normalized prior variance k_0 = P_0 / r: finite and >= 0 (None means a diffuse prior)."""
    return _check_finite_nonnegative(value, name, "P_0 / r; use None for a diffuse prior")


def check_step(value, name: str = "step"):
    """Step count t: an integer >= 1 (an integer-valued float or tensor is accepted, as Adam's state stores one)."""
    x = _as_checked(value, name, floating=False)
    integral = (x == torch.round(x)) if isinstance(x, torch.Tensor) and torch.is_floating_point(x) else True
    if isinstance(x, float):
        integral = math.isfinite(x) and x == round(x)
    if not _all(integral) or not _all(x >= 1):
        raise ValueError(f"{name} must be an integer >= 1, got {_describe(value)}")
    return x


NOISE_MODES = ("adam", "constant", "adaptive", "innovation", "fitted", "transport", "extrapolated")


def _real(value, name: str) -> float:
    """A real hyper-parameter as a float (a one-element tensor is accepted, e.g. a tensor lr)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            raise TypeError(f"{name} must be a real number or a one-element real tensor, got a tensor of shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def validate_optimizer_hyperparameters(group: dict) -> None:
    """Raise ValueError/TypeError naming the first invalid hyper-parameter of a param group."""
    lr = _real(group["lr"], "lr")
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"Invalid learning rate: lr must be finite and >= 0, got {lr}")
    eps = _real(group["eps"], "eps")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"Invalid epsilon value: eps must be finite and >= 0, got {eps}")
    weight_decay = _real(group["weight_decay"], "weight_decay")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"Invalid weight_decay value: weight_decay must be finite and >= 0, got {weight_decay}")
    noise = group["noise"]
    if noise not in NOISE_MODES:
        raise ValueError(f"Invalid noise mode: noise must be one of {NOISE_MODES}, got {noise!r}")
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: betas must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        b = _real(beta, f"betas[{index}]")
        if noise == "adam" and not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid beta parameter at index {index}: betas[{index}] must be in [0, 1), got {b}")
        if noise != "adam" and not 0.0 < b < 1.0:
            raise ValueError(
                f"Invalid beta parameter at index {index}: with noise={noise!r}, betas[{index}] must be in the open "
                f"interval (0, 1) (it sets the noise ratio (1 - beta)^2 / beta), got {b}"
            )
    prior = group["prior_variance"]
    if prior is not None:
        if noise in ("adam", "innovation", "fitted", "transport", "extrapolated"):
            raise ValueError(
                f"Invalid prior_variance: noise={noise!r} fixes the prior (diffuse); prior_variance applies to "
                "noise='constant' or 'adaptive'"
            )
        p = _real(prior, "prior_variance")
        if not (math.isfinite(p) and p >= 0):
            raise ValueError(f"Invalid prior_variance: must be None (diffuse) or finite and >= 0 (P_0 / r), got {p}")
    if noise in ("transport", "extrapolated") and group.get("variance_adaptation"):
        raise ValueError(f"Invalid variance_adaptation: noise={noise!r} keeps no noise statistic; use noise='innovation'")
    scale = _real(group["adaptation_scale"], "adaptation_scale")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"Invalid adaptation_scale: must be finite and > 0, got {scale}")
    noise_beta = _real(group["noise_beta"], "noise_beta")
    if not 0.0 < noise_beta < 1.0:
        raise ValueError(f"Invalid noise_beta: must be in the open interval (0, 1), got {noise_beta}")
    for name in ("foreach", "fused"):
        if name in group and group[name] is not None and not isinstance(group[name], bool):
            raise TypeError(f"Invalid {name}: must be None or a bool, got {group[name]!r}")
    if group.get("foreach") and group.get("fused"):
        raise ValueError("Invalid foreach/fused: foreach=True and fused=True cannot both be set (choose one path)")
    beta_range = group["beta_range"]
    if (
        not isinstance(beta_range, (tuple, list))
        or len(beta_range) != 2
        or not 0.0 < _real(beta_range[0], "beta_range[0]") < _real(beta_range[1], "beta_range[1]") < 1.0
    ):
        raise ValueError(f"Invalid beta_range: must be a pair (low, high) with 0 < low < high < 1, got {beta_range!r}")
