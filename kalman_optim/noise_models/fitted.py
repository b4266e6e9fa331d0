r"""Noise model "fitted" (D7, model-based read-out): the posterior variance of Adam's first moment from a local-level
model fitted to its innovations, calibrated from the first steps on.

The step is AdamW's, as in mode "innovation"; both read the uncertainty off the innovations nu_t = g_t - m_hat_{t-1}
through D7's exact identity E_t = (1 - k_t)^2 S_t - (1 - 2 k_t) r (S_t = E[nu_t^2]). Mode "innovation" estimates
the current S_t by an EWMA of past squared innovations, which lags S_t while it grows (the first ~50 steps when the
true noise ratio is larger than the filter's: 95% intervals cover 0.75 at step 7 at 100x, E7). This mode instead
fits the random-walk-plus-noise model x_t = x_{t-1} + w_t, g_t = x_t + v_t (ratio rho = q / r per tensor, r per
coordinate) and reads out the model's own E_t. With Adam's gains k_t and the diffuse start (m_hat_1 = g_1), the
model's variances in units of r follow a scalar recursion (D7):

    E_1 = 1,   A_t = E_{t-1} + rho,   S_t = A_t + 1,   E_t = (1 - k_t)^2 A_t + k_t^2,
    M_t = sum_{tau<=t} w_tau (1 - k_tau) S_tau / sum w_tau   (the expected bias-corrected EWMA R_t, w = b^(t - tau)),

so R_t / M_t(rho) is an unbiased estimate of r at every step, and the read-out is

    P_t = R_t * E_t(rho) / M_t(rho).

rho is found per tensor from the pooled lag-1 statistic phi = sum -nu_{t-1} d_t / sum (1 - k_{t-1}) nu_{t-1}^2
(d_t = g_t - g_{t-1}; E[-nu_{t-1} d_t] = r for a random walk, whatever the gain, D7), by inverting its expectation
under the model, which the same recursion gives (a table over a log grid of rho, shared by all tensors at one step).
The lag statistic starts at step 3. Its per-coordinate weights are fixed BEFORE nu_{t-1} is seen (from R_{t-2}), so
they do not correlate with the terms they weight (mode "innovation" weights nu_{t-1} with 1 / R_{t-1}, which
contains nu_{t-1}: a bias while R has few samples): u = 1 / (R + mean(R) / n_eff), normalized so that
sum u R = 1 over the sample. phi is pulled by PRIOR_COUNT pseudo-samples, as in mode "innovation", but to its
expectation under the filter's own model at this step (`own_model_phi`: 1.05 early, 1 at steady state), not to 1.
A tensor whose sample has fewer than MIN_SAMPLED_COORDINATES coordinates does not estimate rho at all: it reads out
the filter's own model (one coordinate cannot tell its noise ratio from its noise, E7's issue series).

Intervals m_hat_t -/+ q sqrt(P_t): for the first SIMULATED_STEPS steps q is the model's own quantile of
|x_t - m_hat_t| / sqrt(P_t) at rho_hat, simulated once per (beta1, noise_beta) (D7 section 9b checks it exactly by
Imhof's formula); later the Student-t quantile with the effective sample size of R (as mode "innovation"). The
Student-t interval is too wide early at high drift (95% covers 0.985 at 100 lambda, step 10): R is dominated by the
last innovations, which the current error shares. The fused path (fused.py) compiles the same statistics and the
same `interpolate`, with the step's table passed in as data.
State: R (4 B per fp32 parameter beyond Adam's 8 B) and per tensor at most SAMPLE_SIZE + 3 floats: 12 B in all.
"""

from __future__ import annotations

import functools
import math
import threading

import torch
from torch import Tensor

from kalman_optim.closed_forms import beta_to_noise_ratio
from kalman_optim.noise_models import innovation as innovation_model
from kalman_optim.noise_models.innovation import LAG_BETA, _global_sum_
from kalman_optim.schedules import adam_coefficients, ewma_effective_samples, student_t_quantile

__all__ = ["STATE_KEYS", "SAMPLE_SIZE", "MIN_SAMPLED_COORDINATES", "estimates_ratio", "own_model_phi", "init_state",
           "observe", "observe_foreach", "noise_fraction", "noise_ratio",
           "posterior_variance", "degrees_of_freedom", "interval_quantile", "model_tables", "simulated_quantiles"]

STATE_KEYS = ("innovation_sq_avg", "lag_prev", "lag_prev_sq", "lag_num", "lag_den")
#: Coordinates per tensor in the pooled lag statistic (8x mode "innovation"'s): the read-out's factor moves ~8x as
#: fast as phi when k is small (D7), so phi's sampling error decides the calibration of one tensor (E7: with 1024 of
#: 2000 series the 95% coverage dips to 0.932 at 10x in steps 30-40, with all of them 0.936).
SAMPLE_SIZE = 8192
#: Smallest lag sample whose statistic sets the tensor's noise ratio; a smaller tensor (a scalar, a bias of a few units)
#: reads out the filter's own model. With n coordinates the statistic's sampling error moves log P_t by about
#: 0.13 / 0.064 / 0.056 / 0.037 / 0.025 (n = 1 / 8 / 16 / 32 / 64, own model, step 2000), a shared error on top of R's
#: own per-coordinate 0.10 (noise_beta 0.99); from 32 on it is below half of that. The prior count alone cannot
#: do this without biasing large tensors whose ratio differs (E7's prior sweep).
MIN_SAMPLED_COORDINATES = 32
#: Log grid of the noise ratio rho = q / r the model is fitted on (and rho = 0); beyond it rho is clipped.
RATIO_GRID = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-8, 6, 400, dtype=torch.float64)])
#: Once b^t and LAG_BETA^t are below this, the tables have converged (steady state) and stop changing.
CONVERGED = 1e-12


def lag_samples(step: int) -> int:
    """Steps that have entered the pooled lag-1 statistic by `step`: from step 3 on."""
    return max(0, step - 2)


def sample_of(tensor: Tensor) -> Tensor:
    """This mode's fixed strided sample of `tensor` (innovation.sample_of with SAMPLE_SIZE)."""
    return innovation_model.sample_of(tensor, SAMPLE_SIZE)


def sample_count(numel: int) -> int:
    """Number of sampled coordinates of a tensor with `numel` elements."""
    return innovation_model.sample_count(numel, SAMPLE_SIZE)


def init_state(exp_avg: Tensor) -> dict[str, Tensor]:
    """Zero R shaped like the parameter, the weighted previous innovations of the (local) sample, three scalars."""
    sample = sample_of(exp_avg)
    scalar = torch.zeros((), dtype=sample.dtype, device=sample.device)
    return {
        "innovation_sq_avg": torch.zeros_like(exp_avg, memory_format=torch.preserve_format),
        "lag_prev": torch.zeros_like(sample),
        "lag_prev_sq": scalar.clone(),
        "lag_num": scalar.clone(),
        "lag_den": scalar.clone(),
    }


# ------------------------------------------------------------------------------------------ the model's tables
class _Tables:
    """The recursion of the module docstring for every rho of RATIO_GRID, advanced step by step (float64)."""

    def __init__(self, beta1: float, noise_beta: float) -> None:
        self.beta1, self.b = beta1, noise_beta
        grid = RATIO_GRID
        self.step = 1
        self.error = torch.ones_like(grid)  # E_1 = r: m_hat_1 = g_1
        self.raw = torch.zeros_like(grid)  # sum w (1 - k) S, not bias-corrected
        self.num = torch.zeros_like(grid)
        self.den = torch.zeros_like(grid)
        self.history: dict[int, tuple[Tensor, Tensor, float]] = {}  # t -> (M_t, S_t, k_t), last 3 steps
        self.phi: Tensor | None = None
        self.factor = torch.ones_like(grid)
        self.interpolation: tuple[Tensor, Tensor] | None = None  # `interpolation_table` at this step, once asked

    def advance(self) -> None:
        t = self.step + 1
        k = adam_coefficients(self.beta1, t).gain
        if t >= 3:
            m_weights, s_prev, k_prev = self.history[2 if t == 3 else t - 2][0], *self.history[t - 1][1:]
            c = m_weights.reciprocal()  # the weights' scale: sum u R = 1, R = r M
            self.num.mul_(LAG_BETA).add_(c, alpha=1 - LAG_BETA)
            self.den.mul_(LAG_BETA).add_(c * s_prev, alpha=(1 - k_prev) * (1 - LAG_BETA))
        prior = self.error + RATIO_GRID
        innovation = prior + 1
        self.raw.mul_(self.b).add_(innovation, alpha=(1 - self.b) * (1 - k))
        expected = self.raw / -math.expm1((t - 1) * math.log(self.b))
        self.error = prior * (1 - k) ** 2 + k**2
        self.history[t] = (expected, innovation, k)
        self.history.pop(t - 3, None)
        self.phi = self.num / self.den if t >= 3 else None
        self.factor = self.error / expected
        self.interpolation = None
        self.step = t

    def converged(self) -> bool:
        t = self.step
        return t > 10 and self.b ** t < CONVERGED and LAG_BETA ** t < CONVERGED and self.beta1 ** t < CONVERGED


_CACHE: dict[tuple[float, float], _Tables] = {}
_LOCK = threading.Lock()


def model_tables(beta1: float, noise_beta: float, step: int) -> tuple[Tensor | None, Tensor]:
    """(expected phi, E_t / M_t) over RATIO_GRID at `step` (>= 2); phi is None at step 2 (no lag statistic yet).

    Advanced incrementally from the last step asked for (recomputed from step 2 for an earlier step); constant
    after convergence."""
    with _LOCK:
        tables = _advanced_to(beta1, noise_beta, step)
        return tables.phi, tables.factor


def _advanced_to(beta1: float, noise_beta: float, step: int) -> _Tables:
    """The shared tables of (beta1, noise_beta) at `step` (call with _LOCK held)."""
    key = (float(beta1), float(noise_beta))
    tables = _CACHE.get(key)
    if tables is None or tables.step > step and not tables.converged():
        tables = _CACHE[key] = _Tables(*key)
    while tables.step < step and not tables.converged():
        tables.advance()
    return tables


def interpolate(x: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """Piecewise-linear y(x) through (xs, ys), xs non-decreasing, clamped at the ends (0-dim x). Written with a count
    and a gather instead of searchsorted, so that the fused path compiles the same function."""
    upper, weight = _bracket(x, xs)
    y0, y1 = ys.gather(0, upper - 1), ys.gather(0, upper)
    return (y0 + weight * (y1 - y0)).reshape(())


def _bracket(x: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
    """(upper index as a 1-element tensor, weight) of `interpolate`: x clamped to xs's ends lies between
    xs[upper - 1] and xs[upper], at `weight` of the way (0 across a zero-width span)."""
    n = xs.numel()
    x = torch.minimum(torch.maximum(x, xs[0]), xs[n - 1])
    upper = (xs < x).sum().clamp(1, n - 1).reshape(1)  # a gather, not x[int]: no data-dependent Python integer
    x0, x1 = xs.gather(0, upper - 1), xs.gather(0, upper)
    span = x1 - x0
    weight = torch.where(span > 0, (x - x0) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(span))
    return upper, weight


def interpolation_table(step: int, beta1: float, noise_beta: float) -> tuple[Tensor, Tensor]:
    """(xs, ys), float64: the expected lag statistic (increasing, i.e. rho decreasing) and E_t / M_t at `step`. At
    step 2 (no lag statistic yet) ys is constant: the factor at the filter's own ratio lambda(beta1). Computed once
    per step and shared (the eager path reads it per tensor); callers do not write to it."""
    with _LOCK:
        tables = _advanced_to(beta1, noise_beta, step)
        if tables.interpolation is None:
            tables.interpolation = _interpolation_of(tables.phi, tables.factor, beta1)
        return tables.interpolation


def _interpolation_of(expected_phi: Tensor | None, factor: Tensor, beta1: float) -> tuple[Tensor, Tensor]:
    """`interpolation_table` from the tables' expected phi and factor."""
    if expected_phi is None:
        own = torch.tensor(float(beta_to_noise_ratio(beta1)), dtype=torch.float64)
        constant = interpolate(own, RATIO_GRID, factor)
        return RATIO_GRID, constant.expand_as(RATIO_GRID)
    return _phi_axis(expected_phi), factor.flip(0)


def _phi_axis(expected_phi: Tensor) -> Tensor:
    """The expected lag statistic as an increasing interpolation axis: it falls as rho grows, so RATIO_GRID backwards,
    made monotone against rounding (values on it belong to RATIO_GRID.flip(0))."""
    return torch.cummax(expected_phi.flip(0), 0).values


def model_factor(phi: Tensor, step: int, beta1: float, noise_beta: float) -> Tensor:
    """E_t(rho) / M_t(rho) at the rho whose expected lag statistic is `phi` (float64, 0-dim)."""
    xs, ys = interpolation_table(step, beta1, noise_beta)
    return interpolate(phi.detach().to(device="cpu", dtype=torch.float64), xs, ys)


# ------------------------------------------------------------------------------------------ statistics
def _update_lag(state: dict[str, Tensor], innovation: Tensor, step: int, beta1: float, noise_beta: float) -> None:
    """Add nu_{t-1}'s lag term (weights fixed at step t - 1), then fix the weights of nu_t from R_{t-1} (before R takes
    in nu_t). Stored: lag_prev = u nu_t and lag_prev_sq = sum u nu_t^2 over the sample."""
    sample = sample_of(innovation)
    if step >= 3:
        kept = 1 - adam_coefficients(beta1, step - 1).gain
        scale = sample_of(state["innovation_sq_avg"]) / -math.expm1((step - 2) * math.log(noise_beta))
        # One reduction over the shards for both sums.
        lag_sum, scale_sum = _global_sum_(torch.stack([torch.dot(state["lag_prev"], sample), scale.sum()]), innovation)
        previous_sq = state["lag_prev_sq"]
        state["lag_num"].mul_(LAG_BETA).add_(lag_sum - kept * previous_sq, alpha=-(1 - LAG_BETA))
        state["lag_den"].mul_(LAG_BETA).add_(previous_sq, alpha=kept * (1 - LAG_BETA))
        mean = scale_sum / sample_count(innovation.numel())
        weights = scale.add(mean / ewma_effective_samples(step - 2, noise_beta)).reciprocal_()
        weights = torch.where(torch.isfinite(weights), weights, torch.zeros_like(weights))
        total = _global_sum_(torch.dot(weights, scale).reshape(1), innovation)[0]
    else:  # step 2: no R yet; equal weights, normalized by this step's own (1 - k) nu^2
        weights = torch.ones_like(sample)
        total = _global_sum_(sample.square().sum().reshape(1), innovation)[0] * (1 - adam_coefficients(beta1, step).gain)
    weights = torch.where(total > 0, weights / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(weights))
    weighted = weights.mul_(sample)
    state["lag_prev"].copy_(weighted)
    state["lag_prev_sq"].copy_(_global_sum_(torch.dot(weighted, sample).reshape(1), innovation)[0])


def observe(grad: Tensor, prediction: Tensor, state: dict[str, Tensor], step: int, beta1: float, noise_beta: float) -> None:
    """Update the statistics with g_t, given the filter's prediction m_hat_{t-1} of it (before the update):
    mode "innovation"'s update of R with this mode's lag statistic."""
    innovation_model.observe(grad, prediction, state, step, beta1, noise_beta, update_lag=_update_lag)


def _update_lag_batched(states: dict[str, list[Tensor]], innovations: list[Tensor], step: int, beta1: float,
                        noise_beta: float) -> None:
    """`_update_lag` for a bucket of plain tensors at once (samples concatenated, per-tensor sums as segment sums)."""
    samples = [sample_of(innovation) for innovation in innovations]
    sizes = tuple(sample.numel() for sample in samples)
    segments = innovation_model.segment_ids(sizes, samples[0].device)
    flat = torch.cat(samples)
    if step >= 3:
        kept = 1 - adam_coefficients(beta1, step - 1).gain
        scale = torch.cat([sample_of(r) for r in states["innovation_sq_avg"]]) / -math.expm1((step - 2) * math.log(noise_beta))
        lag_sums, scale_sums = innovation_model.segment_sums(torch.stack([torch.cat(states["lag_prev"]) * flat, scale]), sizes)
        previous_sq = torch.stack(states["lag_prev_sq"])
        torch._foreach_mul_(states["lag_num"], LAG_BETA)
        torch._foreach_add_(states["lag_num"], list((lag_sums - kept * previous_sq).unbind()), alpha=-(1 - LAG_BETA))
        torch._foreach_mul_(states["lag_den"], LAG_BETA)
        torch._foreach_add_(states["lag_den"], list(previous_sq.unbind()), alpha=kept * (1 - LAG_BETA))
        counts = innovation_model.sample_counts(tuple(r.numel() for r in states["innovation_sq_avg"]), SAMPLE_SIZE,
                                                 flat.dtype, flat.device)
        means = scale_sums / counts
        weights = scale.add((means / ewma_effective_samples(step - 2, noise_beta))[segments]).reciprocal_()
        weights = torch.where(torch.isfinite(weights), weights, torch.zeros_like(weights))
        totals = innovation_model.segment_sums((weights * scale).unsqueeze(0), sizes)[0]
    else:  # step 2: no R yet; equal weights, normalized by this step's own (1 - k) nu^2
        weights = torch.ones_like(flat)
        totals = innovation_model.segment_sums(flat.square().unsqueeze(0), sizes)[0] * (1 - adam_coefficients(beta1, step).gain)
    totals = totals[segments]
    weights = torch.where(totals > 0, weights / totals.clamp_min(torch.finfo(totals.dtype).tiny), torch.zeros_like(weights))
    weighted = weights.mul_(flat)
    torch._foreach_copy_(states["lag_prev"], list(weighted.split(sizes)))
    squares = innovation_model.segment_sums((weighted * flat).unsqueeze(0), sizes)[0]
    torch._foreach_copy_(states["lag_prev_sq"], list(squares.unbind()))


def observe_foreach(grads: list[Tensor], predictions: list[Tensor], states: dict[str, list[Tensor]], step: int,
                    beta1: float, noise_beta: float) -> None:
    """`observe` on lists (one foreach pass over the per-coordinate statistic, then the small samples, batched over
    plain tensors)."""
    innovation_model.observe_foreach(grads, predictions, states, step, beta1, noise_beta, update_lag=_update_lag,
                                     update_lag_batched=_update_lag_batched)


# ------------------------------------------------------------------------------------------ read-out
@functools.lru_cache(maxsize=256)
def own_model_phi(step: int, beta1: float, noise_beta: float) -> float:
    """The lag statistic's expectation at `step` under the filter's own model, rho = lambda(beta1): the prior's target.
    It is 1 only at steady state: under Adam's gains it starts near 1.05 and the read-out's factor moves ~8x as fast
    (at step 50, phi = 1 reads out a factor 13% above the own model's), so pulling to 1 biases every tensor whose
    prior weight is large (few coordinates, early steps). 1 before the statistic has data (step < 3)."""
    expected_phi, _ = model_tables(beta1, noise_beta, step)
    if expected_phi is None:
        return 1.0
    lower, upper, weight = _own_ratio_bracket(beta1)
    low, high = float(expected_phi[lower]), float(expected_phi[upper])
    return low + weight * (high - low)  # `interpolate`'s y0 + w (y1 - y0), in the same float64 operations


@functools.lru_cache(maxsize=64)
def _own_ratio_bracket(beta1: float) -> tuple[int, int, float]:
    """(lower index, upper index, weight) on the table of `own_model_phi`: `interpolate`'s bracket and weight of
    log lambda(beta1) on log RATIO_GRID[1:] (indices into the whole grid). Only the table's values change with the
    step, so the interpolation reads two of them (a torch `interpolate` on the 400-point grid took ~150 us per step
    on the 2-core CPU, host time of every fused and eager step in this mode)."""
    own = torch.tensor(float(beta_to_noise_ratio(beta1)), dtype=torch.float64).log()
    upper, weight = _bracket(own, RATIO_GRID[1:].log())
    return int(upper), int(upper) + 1, float(weight)


def estimates_ratio(numel: int) -> bool:
    """Whether a tensor of `numel` elements estimates its own noise ratio: its lag sample has at least
    MIN_SAMPLED_COORDINATES coordinates (else it reads out the filter's own model)."""
    return sample_count(numel) >= MIN_SAMPLED_COORDINATES


def noise_fraction(state: dict[str, Tensor], step: int, beta1: float, noise_beta: float) -> Tensor:
    """The pooled lag-1 statistic phi (0-dim), shrunk by PRIOR_COUNT pseudo-samples to its expectation under the
    filter's own model (`own_model_phi`; not clipped); that expectation itself for a tensor too small to estimate
    its ratio (`estimates_ratio`)."""
    target = own_model_phi(step, float(beta1), float(noise_beta))
    if not estimates_ratio(state["innovation_sq_avg"].numel()):
        return torch.full_like(state["lag_num"], target)
    return innovation_model.shrunk_lag_ratio(state, lag_samples(step), SAMPLE_SIZE, target=target)


def posterior_variance(state: dict[str, Tensor], step: int, beta1: float, noise_beta: float) -> Tensor | None:
    """P_t = R_t E_t(rho_hat) / M_t(rho_hat) per coordinate, or None at step 1 (no innovation yet)."""
    count = step - 1
    if count < 1:
        return None
    statistic = state["innovation_sq_avg"]
    factor = model_factor(noise_fraction(state, step, beta1, noise_beta), step, beta1, noise_beta)
    factor = float(factor) / -math.expm1(count * math.log(noise_beta))  # R's bias correction
    return statistic.mul(factor)


def posterior_variance_foreach(states: dict[str, list[Tensor]], step: int, beta1: float,
                               noise_beta: float) -> list[Tensor] | None:
    """`posterior_variance` of every tensor of a bucket (None at step 1); the model's table is read per tensor."""
    return innovation_model.posterior_variance_each(posterior_variance, states, step, beta1, noise_beta)


#: Degrees of freedom of the Student-t interval after SIMULATED_STEPS: the effective sample size of R (D7).
degrees_of_freedom = innovation_model.degrees_of_freedom


def noise_ratio(state: dict[str, Tensor], step: int, beta1: float, noise_beta: float) -> float:
    """rho_hat = q / r of the tensor: the ratio whose expected lag statistic is phi (the filter's own lambda(beta1) at
    step 2, before the lag statistic has data)."""
    expected_phi, _ = model_tables(beta1, noise_beta, step)
    if expected_phi is None:
        return float(beta_to_noise_ratio(beta1))
    phi = noise_fraction(state, step, beta1, noise_beta).detach().to(device="cpu", dtype=torch.float64)
    return float(interpolate(phi, _phi_axis(expected_phi), RATIO_GRID.flip(0)))


# ------------------------------------------------------------------------------------------ intervals
#: Steps up to which intervals use the model's simulated quantiles of |x_t - m_t| / sqrt(P_t). Early on, and the more
#: so the larger rho, R is dominated by the last few innovations, which the current error shares: the ratio has
#: lighter tails than the Student-t with R's effective sample size, whose 95% interval covers 0.985 at rho = 100
#: lambda(0.9), step 10 (D7, exact by Imhof's formula). By step 100 the two agree within a few per cent (E7).
SIMULATED_STEPS = 100
#: Simulated paths per ratio (a quantile's coverage error ~ sqrt(0.05 * 0.95 / 8192) = 0.0024 at 95%).
SIMULATED_PATHS = 8192
#: Ratios q / r simulated (half-decade spacing); rho_hat outside is clamped.
SIMULATED_RATIOS = torch.logspace(-5, 5, 21, dtype=torch.float64)
#: Levels whose quantiles are kept; another level interpolates the ratio to the Student-t quantile between them.
SIMULATED_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99, 0.995, 0.999)
_SIMULATED: dict[tuple[float, float], Tensor] = {}


def simulated_quantiles(beta1: float, noise_beta: float) -> Tensor:
    """[SIMULATED_STEPS + 1, len(SIMULATED_LEVELS), len(SIMULATED_RATIOS)] float64: the quantiles of |x_t - m_t| /
    sqrt(P_t) under the model (rows 0 and 1 unused), P_t = R_t E_t / M_t at the true ratio. Simulated once per
    (beta1, noise_beta) and process with a fixed seed (deterministic; about 2 s on one CPU core): every path starts
    from the diffuse prior (m_1 = g_1), r = 1, and follows this mode's R recursion exactly."""
    key = (float(beta1), float(noise_beta))
    with _LOCK:
        if key in _SIMULATED:
            return _SIMULATED[key]
        b, dtype = key[1], torch.float64
        generator = torch.Generator().manual_seed(0)
        ratios = SIMULATED_RATIOS
        shape = (ratios.numel(), SIMULATED_PATHS)
        error = -torch.randn(shape, generator=generator, dtype=dtype)  # x_1 - m_1 = -v_1
        raw = torch.zeros(shape, dtype=dtype)
        expected_error, expected_raw = torch.ones_like(ratios), torch.zeros_like(ratios)
        positions = torch.tensor(SIMULATED_LEVELS, dtype=dtype) * (SIMULATED_PATHS - 1)
        lower = positions.floor().long()
        upper, weight = (lower + 1).clamp(max=SIMULATED_PATHS - 1), positions - lower
        table = torch.full((SIMULATED_STEPS + 1, len(SIMULATED_LEVELS), ratios.numel()), math.nan, dtype=dtype)
        for t in range(2, SIMULATED_STEPS + 1):
            k = adam_coefficients(key[0], t).gain
            drift, noise = torch.randn((2, *shape), generator=generator, dtype=dtype)
            prior = error + ratios.sqrt()[:, None] * drift
            nu = prior + noise
            error = prior - k * nu
            raw.mul_(b).addcmul_(nu, nu, value=(1 - b) * (1 - k))
            prior_var = expected_error + ratios
            expected_raw = expected_raw * b + (1 - b) * (1 - k) * (prior_var + 1)
            expected_error = prior_var * (1 - k) ** 2 + k**2
            # |x - m| / sqrt(R E / M) with R and M both un-bias-corrected: the correction cancels.
            ratio = (error.square() / raw * (expected_raw / expected_error)[:, None]).sort(dim=1).values.sqrt_()
            table[t] = (ratio[:, lower] * (1 - weight) + ratio[:, upper] * weight).T
        _SIMULATED[key] = table
        return table


def interval_quantile(state: dict[str, Tensor], step: int, beta1: float, noise_beta: float, level: float) -> float:
    """The multiplier of sqrt(P_t) of a central `level` interval: up to SIMULATED_STEPS the model's simulated quantile
    at the tensor's rho_hat (log-linear in rho between the simulated ratios; between SIMULATED_LEVELS its ratio to
    the Student-t quantile is interpolated linearly in the level, clamped outside), later the Student-t quantile
    with R's effective sample size (D7)."""
    dof = degrees_of_freedom(step, noise_beta)
    student = student_t_quantile(level, dof)
    if step < 2 or step > SIMULATED_STEPS:
        return student
    table = simulated_quantiles(beta1, noise_beta)[step]  # [levels, ratios]
    log_ratio = torch.tensor(math.log(max(noise_ratio(state, step, beta1, noise_beta), 1e-300)), dtype=torch.float64)
    at_ratio = torch.stack([interpolate(log_ratio, SIMULATED_RATIOS.log(), row) for row in table])
    levels = torch.tensor(SIMULATED_LEVELS, dtype=torch.float64)
    students = torch.tensor([student_t_quantile(v, dof) for v in SIMULATED_LEVELS], dtype=torch.float64)
    scale = interpolate(torch.tensor(float(level), dtype=torch.float64), levels, at_ratio / students)
    return float(scale) * student
