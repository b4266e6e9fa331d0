"""KalmanLAMB: LAMB on Kalman-filter moments, with precision-weighted layer statistics."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kalman_optim._base import COMMON_DEFAULTS, KalmanOptimizerBase, group_scalars
from kalman_optim._validation import _real, validate_optimizer_hyperparameters
from kalman_optim.functional import PREVIOUS_MEAN_KEY, kalman_lamb
from kalman_optim.fused import fused_kalman_lamb

#: What __setstate__ gives a group pickled before these options existed: the behaviour it was saved with (the exact
#: layer mean of P; "previous", today's default, came later and needs a state entry such a pickle lacks).
LAMB_DEFAULTS = dict(precision_weighting=True, precision_floor=0.01, precision_mean="current", trust_clip=None)
PRECISION_MEANS = ("current", "previous")


def _validate_lamb(group: dict) -> None:
    validate_optimizer_hyperparameters(group)
    floor = _real(group["precision_floor"], "precision_floor")
    if not floor > 0:
        raise ValueError(f"Invalid precision_floor: must be > 0, got {floor}")
    if group["precision_mean"] not in PRECISION_MEANS:
        raise ValueError(f"Invalid precision_mean: must be one of {PRECISION_MEANS}, got {group['precision_mean']!r}")
    if group["trust_clip"] is not None:
        clip = _real(group["trust_clip"], "trust_clip")
        if not clip > 0:
            raise ValueError(f"Invalid trust_clip: must be None or > 0, got {clip}")
    if group["noise"] in ("transport", "extrapolated"):
        raise ValueError(f"Invalid noise mode: noise={group['noise']!r} is built on Adam's step and is not available in "
                         "KalmanLAMB; use one of 'adam', 'constant', 'adaptive', 'innovation', 'fitted'")
    if group["variance_adaptation"]:
        raise ValueError("Invalid variance_adaptation: KalmanLAMB uses the uncertainty in its trust ratio; use precision_weighting")


class KalmanLAMB(KalmanOptimizerBase):
    r"""LAMB (You et al. 2020) with Kalman-filter moments and precision-weighted layer statistics (D5).

    Per tensor: u = m_hat / (sqrt(v_hat) + eps) + weight_decay * p; p <- p - lr * (||p|| / N(u)) * u.
    With ``precision_weighting=False``, N(u) = ||u|| and noise="adam" this is LAMB (Algorithm 2, with
    bias correction and phi = identity, optionally clipped at ``trust_clip``). With
    ``precision_weighting=True`` (default) N(u) = sqrt(n sum(pi u^2) / sum(pi)), pi = 1 / (P / mean(P) + floor),
    where P is each coordinate's posterior variance (k_t r_hat; D7's read-out with noise="innovation", the
    calibrated one): coordinates whose gradient estimate is uncertain count less in the layer statistic. The
    weights are 1 / (P / mean(P) + floor), not the BLUE's 1 / P: scale-free and bounded by 1 / floor.
    mean(P) is the layer's mean of P at the previous step (``precision_mean="previous"``, the default; equal
    weights on the first step, before one exists): since only ratios of the weights matter, this is D5's weighting
    with the floor scaled by mean(P_{t-1}) / mean(P_t), and the fused step needs no pass over the data for the
    mean before the weighted sums (one 0-dim tensor of state per parameter). ``precision_mean="current"`` uses this
    step's exact mean at the cost of that pass (E5 measures it).
    ``noise`` and the other filter options, ``foreach`` and ``fused`` included, are KalmanAdam's (not "transport" or "extrapolated").
    """

    def __init__(
        self,
        params: Iterable,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 1e-2,
        *,
        noise: str = "adam",
        precision_weighting: bool = True,
        precision_floor: float = 0.01,
        precision_mean: str = "previous",
        trust_clip: float | None = None,
        prior_variance: float | None = None,
        noise_beta: float = 0.99,
        beta_range: tuple[float, float] = (0.5, 0.999),
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        skip_nonfinite: bool = False,
    ):
        defaults = dict(
            COMMON_DEFAULTS,
            lr=lr,
            betas=tuple(betas) if isinstance(betas, list) else betas,
            eps=eps,
            weight_decay=weight_decay,
            noise=noise,
            precision_weighting=precision_weighting,
            precision_floor=precision_floor,
            precision_mean=precision_mean,
            trust_clip=trust_clip,
            prior_variance=prior_variance,
            noise_beta=noise_beta,
            beta_range=beta_range,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            skip_nonfinite=skip_nonfinite,
        )
        self._validate_group(defaults)
        super().__init__(params, defaults)

    def _extra_defaults(self):
        return dict(LAMB_DEFAULTS)

    @staticmethod
    def _validate_group(group: dict) -> None:
        _validate_lamb(group)

    @staticmethod
    def _lagged_mean(group: dict) -> bool:
        return bool(group["precision_weighting"]) and group["precision_mean"] == "previous"

    def _init_state(self, group: dict, p: torch.Tensor) -> dict:
        state = super()._init_state(group, p)
        if self._lagged_mean(group) and PREVIOUS_MEAN_KEY not in state:
            state[PREVIOUS_MEAN_KEY] = torch.zeros((), dtype=state["exp_avg"].dtype, device=state["exp_avg"].device)
        return state

    def _extra_state_keys(self, group: dict) -> tuple[str, ...]:
        return (PREVIOUS_MEAN_KEY,) if self._lagged_mean(group) else ()

    def _functional_step(self, *tensors, **options):
        kalman_lamb(*tensors, **options)

    def _fused_functional_step(self, cache, *tensors, **options):
        return fused_kalman_lamb(cache, *tensors, **options)

    def _functional_options(self, group):
        scalars = group_scalars(group)
        del scalars["variance_adaptation"], scalars["adaptation_scale"]  # LAMB uses the uncertainty in its trust ratio
        return dict(
            scalars,
            precision_weighting=bool(group["precision_weighting"]),
            precision_floor=float(group["precision_floor"]),
            trust_clip=None if group["trust_clip"] is None else float(group["trust_clip"]),
        )
