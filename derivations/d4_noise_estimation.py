# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # D4. Estimating the process and observation noise from gradient differences
#
# **Model (D1).** $x_t = x_{t-1} + w_t$, $w_t \sim \mathcal N(0, q)$; $g_t = x_t + v_t$, $v_t \sim \mathcal N(0, r)$;
# $\lambda = q/r$, and the optimal EWMA coefficient is $\beta = 1 - K_\infty(\lambda)$.
#
# The level $x_t$ is unknown and wanders, but differencing removes it:
#
# $$d_t = g_t - g_{t-1} = w_t + v_t - v_{t-1}$$
#
# is a stationary moving average of order 1 from the second step on, whatever the initial level. Its variance and
# lag-1 covariance identify $q$ and $r$ separately, so each coordinate can learn its own $\lambda$, hence its own $\beta$.
# This notebook derives the moment estimators, their running (EWMA) version and its memory cost, a cheaper identity
# that uses the filter's own residual, the clipping that keeps $\hat\beta$ in a safe range, and checks all of it by
# Monte-Carlo.

# %%
from statistics import NormalDist

import numpy as np
import sympy as sp
import sympy.stats as stats

from derivations.common import (
    assert_identity,
    assert_numerically_equal,
    export_latex,
    log_uniform,
    show_equation,
    simplify_radicals,
    uniform,
)
from derivations.d1_steady_state import beta, beta_of_noise_ratio, beta_robust, lam, noise_ratio_of_beta, q, r

_noise_symbols: dict[tuple[str, int], sp.Symbol] = {}


def w(i: int) -> sp.Symbol:
    """Process noise w_{t+i} (i <= 0): independent, zero mean, variance q."""
    return _noise_symbols.setdefault(("w", i), sp.Symbol(f"w_{{t{i:+d}}}" if i else "w_t", real=True))


def v(i: int) -> sp.Symbol:
    """Observation noise v_{t+i}: independent, zero mean, variance r."""
    return _noise_symbols.setdefault(("v", i), sp.Symbol(f"v_{{t{i:+d}}}" if i else "v_t", real=True))


def d(i: int) -> sp.Expr:
    """The gradient difference d_{t+i} = w_{t+i} + v_{t+i} - v_{t+i-1}."""
    return w(i) + v(i) - v(i - 1)


def gaussian_expectation(expr: sp.Expr, variances: dict[sp.Symbol, sp.Expr]) -> sp.Expr:
    """E[expr] for a polynomial in independent zero-mean Gaussians (keys of `variances`); other symbols are constants."""
    noise = list(variances)
    total = sp.Integer(0)
    for powers, coefficient in sp.Poly(sp.expand(expr), *noise).terms():
        term = coefficient
        for symbol, n in zip(noise, powers):
            # Independence factorizes the moment; E[s^n] = 0 for odd n and (n-1)!! var^(n/2) for even n (Isserlis).
            term *= 0 if n % 2 else sp.factorial2(n - 1) * variances[symbol] ** (n // 2)
        total += term
    return sp.expand(total)


def noise_variances(*exprs: sp.Expr) -> dict[sp.Symbol, sp.Expr]:
    """Variances of the model noises appearing in `exprs`."""
    found = set().union(*(e.free_symbols for e in exprs))
    return {s: (q if kind == "w" else r) for (kind, _), s in _noise_symbols.items() if s in found}


def covariance(a: sp.Expr, b: sp.Expr) -> sp.Expr:
    """Cov(a, b) of two zero-mean polynomials in the model noises."""
    variances = noise_variances(a, b)
    return sp.expand(gaussian_expectation(a * b, variances) - gaussian_expectation(a, variances) * gaussian_expectation(b, variances))


# %% [markdown]
# ## 1. The autocovariance of the differences, and the moment estimators
#
# With $w_t, v_t, v_{t-1}, \dots$ independent and zero mean:
#
# $$\gamma_0 = \operatorname{Var}(d_t) = q + 2r, \qquad \gamma_1 = \operatorname{Cov}(d_t, d_{t-1}) = -r, \qquad
# \gamma_h = 0 \ (h \ge 2).$$
#
# The lag-1 covariance is negative because $v_{t-1}$ enters $d_t$ with a minus sign and $d_{t-1}$ with a plus sign.
# Solving for the noises gives the moment estimators
#
# $$\hat r = -\hat\gamma_1, \qquad \hat q = \hat\gamma_0 + 2\hat\gamma_1, \qquad
# \hat\lambda = \frac{\hat\gamma_0 + 2\hat\gamma_1}{-\hat\gamma_1}, \qquad \hat\beta = 1 - K_\infty(\hat\lambda).$$

# %%
difference_variance = covariance(d(0), d(0))
difference_lag1_covariance = covariance(d(0), d(-1))
assert_identity(difference_variance - (q + 2 * r), "Var(d_t) = q + 2r")
assert_identity(difference_lag1_covariance + r, "Cov(d_t, d_{t-1}) = -r")
for lag in (2, 3, 5):
    assert covariance(d(0), d(-lag)) == 0, lag  # an MA(1): no correlation beyond lag 1
assert gaussian_expectation(d(0), noise_variances(d(0))) == 0  # E[d] = 0, so no centering is needed

# The same two moments by an independent route (sympy.stats with named normal variables).
w_now, w_prev = stats.Normal("w", 0, sp.sqrt(q)), stats.Normal("w'", 0, sp.sqrt(q))
v_now, v_prev, v_prev2 = (stats.Normal(name, 0, sp.sqrt(r)) for name in ("v", "v'", "v''"))
assert_identity(stats.variance(w_now + v_now - v_prev) - difference_variance, "sympy.stats: Var(d_t)")
assert_identity(
    stats.covariance(w_now + v_now - v_prev, w_prev + v_prev - v_prev2) - difference_lag1_covariance, "sympy.stats: Cov(d_t, d_{t-1})"
)

gamma0, gamma1 = sp.symbols("gamma_0 gamma_1", real=True)
solution = sp.solve([sp.Eq(gamma0, difference_variance), sp.Eq(gamma1, difference_lag1_covariance)], [q, r], dict=True)
assert len(solution) == 1
q_hat, r_hat = solution[0][q], solution[0][r]
assert_identity(r_hat + gamma1, "r_hat = -gamma_1")
assert_identity(q_hat - (gamma0 + 2 * gamma1), "q_hat = gamma_0 + 2 gamma_1")
noise_ratio_estimate = q_hat / r_hat
beta_estimate = beta_robust.subs(lam, noise_ratio_estimate)
true_moments = {gamma0: difference_variance, gamma1: difference_lag1_covariance}
assert_identity(noise_ratio_estimate.subs(true_moments) - q / r, "lambda_hat at the true moments = q / r")
assert_numerically_equal(
    beta_estimate.subs(true_moments), beta_robust.subs(lam, q / r), {q: log_uniform(1e-6, 1e2), r: log_uniform(1e-4, 1e4)},
    "beta_hat at the true moments = 1 - K(q / r)", rtol=1e-12,
)
show_equation(r"\gamma_0", difference_variance)
show_equation(r"\gamma_1", difference_lag1_covariance)
show_equation(r"(\hat q, \hat r)", sp.Tuple(q_hat, r_hat))
show_equation(r"\hat\lambda", noise_ratio_estimate)

# %% [markdown]
# **The same thing seen through the filter.** For any gain sequence, $m_{t-1} = m_{t-2} + k_{t-1}\nu_{t-1}$, so the
# difference is a combination of two consecutive innovations:
#
# $$d_t = \nu_t - (1 - k_{t-1})\, \nu_{t-1} \;\xrightarrow{\text{steady state}}\; \nu_t - \beta\, \nu_{t-1}.$$
#
# For the optimal filter the innovations are white with variance $r/\beta$ (D3), so $d_t$ is an MA(1) with coefficient
# $-\beta$: $\gamma_0 = (1 + \beta^2) r / \beta$ and $\gamma_1 = -r$, the same moments as above when
# $\lambda = (1-\beta)^2/\beta$. (This is the classical equivalence of the local-level model with an ARIMA(0,1,1),
# whose optimal forecast is the EWMA.) The lag-1 autocorrelation $\rho_1 = \gamma_1/\gamma_0 = -1/(\lambda + 2) = -\beta/(1+\beta^2)$
# therefore gives $\hat\beta$ directly, as the invertible root:
#
# $$\hat\beta = \frac{1 - \sqrt{1 - 4\rho_1^2}}{2\,|\rho_1|}, \qquad -\tfrac12 < \rho_1 < 0 .$$

# %%
g_now, g_prev, m_prev2 = sp.symbols("g_t g_{t-1} m_{t-2}", real=True)
k_prev = sp.Symbol("k_{t-1}", nonnegative=True)
m_prev = m_prev2 + k_prev * (g_prev - m_prev2)
nu_prev, nu_now = g_prev - m_prev2, g_now - m_prev
assert_identity((g_now - g_prev) - (nu_now - (1 - k_prev) * nu_prev), "d_t = nu_t - (1 - k_{t-1}) nu_{t-1}")

# An MA(1) d_t = eps_t - beta eps_{t-1} with white eps of variance r / beta (D3's steady-state innovation variance).
eps = sp.symbols("epsilon_0:3", real=True)
eps_variances = {e: r / beta for e in eps}
ma_gamma0 = gaussian_expectation((eps[0] - beta * eps[1]) ** 2, eps_variances)
ma_gamma1 = gaussian_expectation((eps[0] - beta * eps[1]) * (eps[1] - beta * eps[2]), eps_variances)
at_beta = {q: noise_ratio_of_beta * r}
assert_identity(difference_variance.subs(at_beta) - ma_gamma0, "gamma_0 = (1 + beta^2) r / beta")
assert_identity(difference_lag1_covariance.subs(at_beta) - ma_gamma1, "gamma_1 = -r")
rho1 = sp.Symbol("rho_1", negative=True)
lag1_autocorrelation = sp.simplify(difference_lag1_covariance / difference_variance).subs(q, lam * r)
assert_identity(lag1_autocorrelation + 1 / (lam + 2), "rho_1 = -1 / (lambda + 2)")
assert_identity(lag1_autocorrelation.subs(lam, noise_ratio_of_beta) + beta / (1 + beta**2), "rho_1 = -beta / (1 + beta^2)")
beta_from_autocorrelation = (1 - sp.sqrt(1 - 4 * rho1**2)) / (2 * -rho1)
assert_identity(
    beta_from_autocorrelation.subs(rho1, -1 / (lam + 2)) - beta_of_noise_ratio, "beta(rho_1(lambda)) = 1 - K(lambda)",
    simplifier=simplify_radicals,
)
assert_numerically_equal(
    beta_from_autocorrelation, beta_robust.subs(lam, -1 / rho1 - 2), {rho1: uniform(-0.4999, -1e-4)},
    "beta from rho_1 = beta from lambda(rho_1)", rtol=1e-9,
)
show_equation(r"\hat\beta(\rho_1)", beta_from_autocorrelation)

# %% [markdown]
# ## 2. Running statistics and what the optimizer must store
#
# The moments are tracked with EWMAs of coefficient $\beta_s$, bias-corrected like Adam's (no centering: $\mathbb E[d] = 0$
# under the model):
#
# $$c_0 \leftarrow \beta_s c_0 + (1-\beta_s)\, d_t^2, \qquad c_1 \leftarrow \beta_s c_1 + (1-\beta_s)\, d_t d_{t-1},
# \qquad \hat\gamma_h = \frac{c_h}{1 - \beta_s^{n_h}},$$
#
# with $n_0 = t - 1$ and $n_1 = t - 2$ contributions so far. Because $d_t$ is stationary from its first value
# (differencing removed the level), the bias-corrected statistics are **exactly unbiased at every step**, with no burn-in.
# The optimizer stores $g_{t-1}$, $d_{t-1}$, $c_0$, $c_1$: **four tensors** per parameter (section 3 brings this to three).

# %%
beta_s = sp.Symbol("beta_s", positive=True)
n_contrib = sp.Symbol("n", integer=True, positive=True)
j_age = sp.Symbol("j", integer=True, nonnegative=True)
ewma_weight = (1 - beta_s) * beta_s**j_age / (1 - beta_s**n_contrib)


def general_branch(piecewise):
    """sympy keeps a beta_s = 1 branch for finite geometric sums; 0 < beta_s < 1 here."""
    (_, condition), (general, otherwise) = piecewise.args
    assert condition == sp.Eq(beta_s, 1) and otherwise == sp.true, piecewise
    return general


weight_sum = sp.summation(ewma_weight, (j_age, 0, n_contrib - 1)).replace(lambda e: isinstance(e, sp.Piecewise), general_branch)
assert_identity(weight_sum - 1, "bias-corrected EWMA weights sum to 1")
# Hence E[c_h / (1 - beta_s^n)] = sum of weights * gamma_h = gamma_h at every n, since E[d_s d_{s-h}] = gamma_h for every s.
assert covariance(d(-7), d(-8)) == difference_lag1_covariance and covariance(d(-7), d(-7)) == difference_variance

# %% [markdown]
# ## 3. A cheaper identity: the filter's residual instead of $d_{t-1}$
#
# Let $m$ be any filter of the form $m_t = m_{t-1} + k_t(g_t - m_{t-1})$ with **any** gains fixed in advance (not
# necessarily optimal). The innovation $\nu_{t-1} = g_{t-1} - m_{t-2} = (x_{t-1} - m_{t-2}) + v_{t-1}$ contains $v_{t-1}$ with
# coefficient 1, and $e_{t-1} = x_{t-1} - m_{t-2}$ depends only on noises before $t-1$ (and $w_{t-1}$), independent of
# $w_t, v_t, v_{t-1}$. So
#
# $$\mathbb E[d_t\, \nu_{t-1}] = -r, \qquad \mathbb E[d_t\,(g_{t-1} - m_{t-1})] = -(1 - k_{t-1})\, r,$$
#
# using $g_{t-1} - m_{t-1} = (1-k_{t-1})\nu_{t-1}$ (D3). The optimizer already stores $m_{t-1}$; with $g_{t-1}$ it has the
# residual, so $\hat r = -c'_1/(1 - k_{t-1})$ with $c'_1$ an EWMA of $d_t (g_{t-1} - m_{t-1})$: store $g_{t-1}$, $c_0$, $c'_1$
# (**three tensors**). The gain $k_{t-1}$ must not depend on $g_{t-1}$ itself (compute it from statistics up to $t-2$),
# or the factor $1 - k_{t-1}$ no longer comes out of the expectation.

# %%
error_prev = sp.Symbol("e_{t-1}", real=True)  # x_{t-1} - m_{t-2}: zero-mean part
error_mean = sp.Symbol("mu_e", real=True)  # its mean, arbitrary (the filter may be biased)
innovation_prev = error_mean + error_prev + v(-1)
variances = {**noise_variances(d(0), v(-1)), error_prev: sp.Symbol("S", positive=True)}
innovation_difference_covariance = gaussian_expectation(d(0) * innovation_prev, variances)
assert_identity(innovation_difference_covariance + r, "E[d_t nu_{t-1}] = -r for any gain")
residual_prev = (1 - k_prev) * innovation_prev
residual_difference_covariance = gaussian_expectation(d(0) * residual_prev, variances)
assert_identity(residual_difference_covariance + (1 - k_prev) * r, "E[d_t (g_{t-1} - m_{t-1})] = -(1 - k_{t-1}) r")
# Cross-check through d_t = nu_t - (1 - k) nu_{t-1}: nu_t = (1 - k)(mu + e) + w_t + v_t - k v_{t-1}. For the optimal
# filter (mu = 0, E[e^2] = S = P-_{t-1}, k = S/(S + r)) the innovations are uncorrelated and (1 - k) E[nu^2] = r.
innovation_now = (1 - k_prev) * (error_mean + error_prev) + w(0) + v(0) - k_prev * v(-1)
assert_identity(innovation_now - (1 - k_prev) * innovation_prev - d(0), "nu_t - (1 - k) nu_{t-1} = d_t in the noises")
optimal = {error_mean: 0, k_prev: variances[error_prev] / (variances[error_prev] + r)}
assert_identity(gaussian_expectation(innovation_now * innovation_prev, variances).subs(optimal), "optimal: E[nu_t nu_{t-1}] = 0")
assert_identity(
    ((1 - k_prev) * gaussian_expectation(innovation_prev**2, variances)).subs(optimal) - r, "optimal: (1 - k) E[nu_{t-1}^2] = r"
)
# For a non-optimal gain the innovations are correlated, yet E[d_t nu_{t-1}] = -r still: the identity needs no optimality.
assert gaussian_expectation(innovation_now * innovation_prev, variances).subs({error_mean: 0, k_prev: sp.Rational(1, 2)}) != 0

# %% [markdown]
# **Monte-Carlo check with a non-optimal gain.** A constant gain $k = 0.3$ on a walk with $\lambda = 0.01$ (the optimal
# gain would be about $0.095$), $N$ independent coordinates with their own $r$, $T$ steps. The time averages are
# autocorrelated (the innovations of a mismatched filter are not white), so the standard error is estimated across
# coordinates: the per-coordinate time averages are independent, and their standard deviation over $\sqrt N$ is the
# standard error of the pooled mean. Tolerance 5 standard errors. The two targets ($-1$ and $-(1-k) = -0.7$ in units of $r$)
# are many standard errors apart (asserted), so the check can tell them apart.

# %%
rng = np.random.default_rng(40)
n_coords, n_steps, gain, lam_value = 20_000, 400, 0.3, 0.01
r_coord = rng.uniform(0.1, 10.0, n_coords)
x = rng.normal(size=n_coords)
g_last = x + rng.normal(size=n_coords) * np.sqrt(r_coord)
m_before = np.zeros(n_coords)  # prior mean: independent of the noises that follow
m_last = m_before + gain * (g_last - m_before)  # the same constant gain from the first step on
sum_innovation_product = np.zeros(n_coords)
sum_residual_product = np.zeros(n_coords)
for step in range(n_steps):
    x = x + rng.normal(size=n_coords) * np.sqrt(lam_value * r_coord)
    g_new = x + rng.normal(size=n_coords) * np.sqrt(r_coord)
    diff = g_new - g_last
    sum_innovation_product += diff * (g_last - m_before) / r_coord  # nu_{t-1} = g_{t-1} - m_{t-2}
    sum_residual_product += diff * (g_last - m_last) / r_coord  # g_{t-1} - m_{t-1}
    m_before, m_last = m_last, m_last + gain * (g_new - m_last)
    g_last = g_new
for name, per_coord, expected in [
    ("E[d_t nu_{t-1}] / r", sum_innovation_product / n_steps, -1.0),
    ("E[d_t (g_{t-1} - m_{t-1})] / r", sum_residual_product / n_steps, -(1 - gain)),
]:
    mean, se = per_coord.mean(), per_coord.std(ddof=1) / np.sqrt(n_coords)
    assert abs(mean - expected) < 5 * se and 0.3 > 20 * se, (name, mean, expected, se)  # 0.3 r separates the targets
    print(f"{name:32s} = {mean:.4f} +- {se:.4f} (predicted {expected:.4f})")

# %% [markdown]
# ## 4. Out-of-range estimates and the clipped estimator
#
# - $\hat q < 0$ happens by sampling noise when $\lambda$ is small: $\hat q = \hat\gamma_0 + 2\hat\gamma_1$ is a small difference
#   of two large numbers ($\gamma_0 \approx 2r$, $2\gamma_1 = -2r$). Its standard error does not shrink with $q$ (section 5).
# - $\hat r \le 0$ ($c_1 \ge 0$) means positively correlated differences: the model does not fit (a trend, momentum in
#   the gradient, or a curvature effect), so there is no evidence of observation noise to average away.
#
# The clipped estimator
#
# $$\hat\lambda = \operatorname{clip}\Big(\frac{\max(c_0 + 2c_1,\, 0)}{\max(-c_1,\, \epsilon)},\ \lambda_{\min},\ \lambda_{\max}\Big),
# \qquad \lambda_{\min} = \frac{(1-\beta_{\max})^2}{\beta_{\max}},\ \lambda_{\max} = \frac{(1-\beta_{\min})^2}{\beta_{\min}},$$
#
# ($\epsilon$ the smallest positive normal number of the dtype) maps $\hat q < 0$ to $\lambda_{\min}$ (the longest memory allowed)
# and $c_1 \ge 0$ with $c_0 > 0$ to $\lambda_{\max}$ (the shortest memory: follow the data). Since $\lambda(\beta)$ decreases on
# $(0, 1)$, $\hat\beta = 1 - K_\infty(\hat\lambda)$ stays in $[\beta_{\min}, \beta_{\max}]$. All-zero statistics (a constant
# gradient) give $\lambda_{\min}$.

# %%
s_odds = sp.Symbol("s", positive=True)  # beta = 1 / (1 + s) covers 0 < beta < 1
slope = sp.diff(noise_ratio_of_beta, beta)
assert_identity(slope + (1 - beta) * (1 + beta) / beta**2, "d lambda / d beta = -(1 - beta^2) / beta^2")
assert sp.factor(slope.subs(beta, 1 / (1 + s_odds))).is_negative  # lambda(beta) decreases on (0, 1)


def clipped_noise_ratio_estimate(c0, c1, lambda_min, lambda_max):
    """lambda_hat = clip(max(c0 + 2 c1, 0) / max(-c1, tiny), lambda_min, lambda_max), elementwise, in the inputs' dtype."""
    c0, c1 = np.asarray(c0), np.asarray(c1)
    dtype = np.result_type(c0, c1)
    dtype = dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)
    c0, c1 = c0.astype(dtype, copy=False), c1.astype(dtype, copy=False)
    numerator = np.maximum(c0 + 2 * c1, dtype.type(0))
    denominator = np.maximum(-c1, np.finfo(dtype).tiny)
    with np.errstate(over="ignore"):  # a huge ratio overflows to inf and is clipped to lambda_max
        ratio = numerator / denominator
    return np.clip(ratio, dtype.type(lambda_min), dtype.type(lambda_max))


beta_min, beta_max = 0.5, 0.999
noise_ratio_of_beta_fn = sp.lambdify(beta, noise_ratio_of_beta, "numpy")
beta_of_noise_ratio_fn = sp.lambdify(lam, beta_robust, "numpy")
lambda_min, lambda_max = noise_ratio_of_beta_fn(beta_max), noise_ratio_of_beta_fn(beta_min)
noise_estimates_fn = sp.lambdify((gamma0, gamma1), (q_hat, r_hat), "numpy")
with np.errstate(all="raise"):  # no warnings allowed on any edge case
    # q_hat < 0 (c0 + 2 c1 < 0 with c1 < 0) -> lambda_min.
    assert clipped_noise_ratio_estimate(1.5, -1.0, lambda_min, lambda_max) == lambda_min
    # c1 >= 0 with c0 > 0 -> lambda_max, including c1 = 0 exactly and a huge c0.
    for c0_value, c1_value in [(1.0, 0.0), (1.0, 0.3), (1e300, 0.0), (2.0, 1e-320)]:
        assert clipped_noise_ratio_estimate(c0_value, c1_value, lambda_min, lambda_max) == lambda_max, (c0_value, c1_value)
    # A constant gradient (all statistics zero) -> lambda_min.
    assert clipped_noise_ratio_estimate(0.0, 0.0, lambda_min, lambda_max) == lambda_min
    # Interior: the exact ratio q_hat / r_hat of section 1.
    rng = np.random.default_rng(41)
    r_values = np.exp(rng.uniform(np.log(1e-6), np.log(1e6), 1000))
    lam_values = np.exp(rng.uniform(np.log(lambda_min) + 1e-9, np.log(lambda_max) - 1e-9, 1000))
    c0_values, c1_values = lam_values * r_values + 2 * r_values, -r_values
    q_est, r_est = noise_estimates_fn(c0_values, c1_values)
    np.testing.assert_allclose(clipped_noise_ratio_estimate(c0_values, c1_values, lambda_min, lambda_max), q_est / r_est, rtol=1e-13)
    # c0 + 2 c1 cancels ~log10(2/lambda) digits: at lambda_min ~ 1e-6 that leaves ~1e-10 relative accuracy.
    np.testing.assert_allclose(q_est / r_est, lam_values, rtol=1e-8)
    # float32 in, float32 out, and the same edge behaviour (tiny is float32's).
    out32 = clipped_noise_ratio_estimate(np.float32([1.0, 1.5, 1.0, 2.25]), np.float32([0.0, -1.0, -1e-30, -1.0]), lambda_min, lambda_max)
    assert out32.dtype == np.float32
    np.testing.assert_array_equal(out32, np.float32([lambda_max, lambda_min, lambda_max, 0.25]))
    # Arbitrary statistics (c0 >= 0, c1 of either sign): beta_hat always within [beta_min, beta_max].
    c0_any = np.exp(rng.uniform(-30, 30, 100_000))
    c1_any = rng.normal(size=100_000) * c0_any * rng.uniform(0, 1, 100_000)
    beta_hat_any = beta_of_noise_ratio_fn(clipped_noise_ratio_estimate(c0_any, c1_any, lambda_min, lambda_max))
assert beta_hat_any.min() >= beta_min * (1 - 1e-12) and beta_hat_any.max() <= beta_max * (1 + 1e-12)
assert abs(beta_of_noise_ratio_fn(lambda_min) - beta_max) < 1e-12 and abs(beta_of_noise_ratio_fn(lambda_max) - beta_min) < 1e-12
print(f"beta in [{beta_min}, {beta_max}] <-> lambda in [{lambda_min:.3e}, {lambda_max:.3f}]; "
      f"random statistics gave beta_hat in [{beta_hat_any.min():.6f}, {beta_hat_any.max():.6f}]")

# %% [markdown]
# ## 5. Monte-Carlo: recovering $q$ and $r$
#
# **Standard errors.** For a Gaussian stationary series the sample mean of $y_t$ over $n$ steps has variance
# $\sigma^2_y / n$ with the long-run variance $\sigma^2_y = \sum_h \operatorname{Cov}(y_0, y_h)$ (finitely many terms here).
# For $\hat r$ take $y_t = -d_t d_{t-1}$, for $\hat q$ take $y_t = d_t^2 + 2 d_t d_{t-1}$; the fourth moments follow from
# Isserlis' theorem (the helper above). Pooling $N$ independent coordinates of $T$ steps, the standard error is
# $\sigma_y/\sqrt{NT}$. For the EWMA version at the end of the run, each coordinate's statistic has variance
# $\frac{1-\beta_s}{1+\beta_s}\big(\gamma_y(0) + 2\sum_{h \ge 1} \beta_s^h \gamma_y(h)\big)$ (the start-up weight
# $\beta_s^T$ is negligible), averaged over $N$ coordinates. Tolerances are 5 standard errors.
#
# Note what this says about small $\lambda$: $\sigma^2_{\hat q} \to 8r^2$ as $q \to 0$, so the relative error of $\hat q$ is
# $\approx \sqrt{8/n}/\lambda$; at $\lambda = 10^{-3}$ even $n = 4\cdot 10^7$ samples leave a relative error of ~45%,
# and a single coordinate's $\hat q$ from $2000$ steps is negative about half the time (section 4's clipping).

# %%
def long_run_variance(series_at, lags):
    """sum_h Cov(y_0, y_h) over the given lags, for y_t = series_at(t offset)."""
    return sp.expand(sum(covariance(series_at(0), series_at(h)) for h in lags))


def r_series(i):
    """y_t whose mean is r_hat."""
    return -d(i) * d(i - 1)


def q_series(i):
    """y_t whose mean is q_hat."""
    return d(i) ** 2 + 2 * d(i) * d(i - 1)


r_autocov = [covariance(r_series(0), r_series(-h)) for h in range(5)]
q_autocov = [covariance(q_series(0), q_series(-h)) for h in range(5)]
assert r_autocov[3] == 0 and r_autocov[4] == 0 and q_autocov[3] == 0 and q_autocov[4] == 0  # finite memory
r_long_run = long_run_variance(r_series, range(-2, 3))
q_long_run = long_run_variance(q_series, range(-2, 3))
# Bartlett's formula for an MA(1) (Gaussian): n Var(gamma1_hat) -> gamma0^2 + 3 gamma1^2 -- an independent check.
assert_identity(r_long_run - (difference_variance**2 + 3 * difference_lag1_covariance**2), "Bartlett: gamma0^2 + 3 gamma1^2")
assert_identity(q_long_run.subs(q, 0) - 8 * r**2, "sigma^2 of q_hat -> 8 r^2 as q -> 0")


def ewma_variance(autocov):
    """Variance of a stationary EWMA (coefficient beta_s) of a series with these autocovariances (zero beyond lag 2)."""
    return (1 - beta_s) / (1 + beta_s) * (autocov[0] + 2 * sum(beta_s**h * autocov[h] for h in (1, 2)))


r_long_run_fn = sp.lambdify((q, r), r_long_run, "numpy")
q_long_run_fn = sp.lambdify((q, r), q_long_run, "numpy")
r_ewma_variance_fn = sp.lambdify((q, r, beta_s), ewma_variance(r_autocov), "numpy")
q_ewma_variance_fn = sp.lambdify((q, r, beta_s), ewma_variance(q_autocov), "numpy")
show_equation(r"\sigma^2_{\hat r}", sp.factor(r_long_run))
show_equation(r"\sigma^2_{\hat q}", sp.factor(q_long_run))

# %% [markdown]
# The run: four $(q, r)$ pairs with $\lambda$ from $10^{-3}$ to $1$, $N = 20\,000$ coordinates, $T = 2000$ steps, simulated
# from the model itself (walk plus noise, then differenced). Checks: pooled sample moments and the EWMA version
# ($\beta_s = 0.99$, bias-corrected, averaged over coordinates at the end) recover $q$ and $r$ within 5 standard errors;
# the per-coordinate spread of $\hat q$ matches $\sigma_{\hat q}/\sqrt T$ (which justifies the tolerances); the fraction of
# coordinates with $\hat q < 0$ matches the normal approximation $\Phi(-q\sqrt T/\sigma_{\hat q})$; and the sign matters:
# reading the lag-1 covariance as $+r$ would give a negative $\hat r$.

# %%
rng = np.random.default_rng(42)
n_coords, n_steps, beta_s_value = 20_000, 2_000, 0.99
pairs = [(1e-3, 1.0), (4e-2, 4.0), (2.5e-2, 0.25), (2.0, 2.0)]  # (q, r): lambda = 1e-3, 1e-2, 0.1, 1
rows = []
for q_value, r_value in pairs:
    x = np.zeros(n_coords)
    g_last = x + rng.normal(size=n_coords) * np.sqrt(r_value)
    d_last = None
    sum_d2, sum_d1 = np.zeros(n_coords), np.zeros(n_coords)
    c0, c1 = np.zeros(n_coords), np.zeros(n_coords)
    n0 = n1 = 0
    for step in range(n_steps):
        x = x + rng.normal(size=n_coords) * np.sqrt(q_value)
        g_new = x + rng.normal(size=n_coords) * np.sqrt(r_value)
        diff = g_new - g_last
        sum_d2 += diff**2
        c0 = beta_s_value * c0 + (1 - beta_s_value) * diff**2
        n0 += 1
        if d_last is not None:
            sum_d1 += diff * d_last
            c1 = beta_s_value * c1 + (1 - beta_s_value) * diff * d_last
            n1 += 1
        g_last, d_last = g_new, diff
    gamma0_coord, gamma1_coord = sum_d2 / n0, sum_d1 / n1
    q_coord, r_coord = noise_estimates_fn(gamma0_coord, gamma1_coord)
    q_pooled, r_pooled = noise_estimates_fn(gamma0_coord.mean(), gamma1_coord.mean())
    q_ewma, r_ewma = noise_estimates_fn((c0 / (1 - beta_s_value**n0)).mean(), (c1 / (1 - beta_s_value**n1)).mean())

    se_q = np.sqrt(q_long_run_fn(q_value, r_value) / (n_coords * n_steps))
    se_r = np.sqrt(r_long_run_fn(q_value, r_value) / (n_coords * n_steps))
    se_q_ewma = np.sqrt(q_ewma_variance_fn(q_value, r_value, beta_s_value) / n_coords)
    se_r_ewma = np.sqrt(r_ewma_variance_fn(q_value, r_value, beta_s_value) / n_coords)
    for name, estimate, truth, se in [
        ("q pooled", q_pooled, q_value, se_q), ("r pooled", r_pooled, r_value, se_r),
        ("q EWMA", q_ewma, q_value, se_q_ewma), ("r EWMA", r_ewma, r_value, se_r_ewma),
    ]:
        assert abs(estimate - truth) < 5 * se, (q_value, r_value, name, estimate, truth, se)
    assert se_r < 1e-3 * r_value and se_r_ewma < 3e-3 * r_value  # r is always well determined

    # The per-coordinate spread of q_hat matches sigma / sqrt(T): SE of a sample SD is about SD / sqrt(2N).
    spread_ratio = q_coord.std(ddof=1) / np.sqrt(q_long_run_fn(q_value, r_value) / n_steps)
    assert abs(spread_ratio - 1) < 5 / np.sqrt(2 * n_coords), spread_ratio
    # Fraction of coordinates with q_hat < 0 vs the normal approximation (SE of a proportion sqrt(p(1-p)/N)).
    predicted_negative = NormalDist().cdf(-q_value / np.sqrt(q_long_run_fn(q_value, r_value) / n_steps))
    negative = np.mean(q_coord < 0)
    assert abs(negative - predicted_negative) < 5 * np.sqrt(max(predicted_negative * (1 - predicted_negative), 1e-4) / n_coords)
    # The sign matters: Cov(d_t, d_{t-1}) = +r would read r_hat = +gamma1_hat, which is negative here.
    assert gamma1_coord.mean() + 5 * se_r < 0
    rows.append((q_value / r_value, q_value, q_pooled, 5 * se_q / q_value, q_ewma, 5 * se_q_ewma / q_value,
                 r_value, r_pooled, r_ewma, 5 * se_r_ewma / r_value, negative, predicted_negative))

print(f"{'lambda':>7} {'q':>8} {'q pooled':>9} {'(tol)':>7} {'q EWMA':>9} {'(tol)':>7} {'r':>5} {'r pooled':>8} "
      f"{'r EWMA':>7} {'(tol)':>6} {'P(q^<0)':>8} {'pred.':>6}")
for row in rows:
    print("{:7.0e} {:8.1e} {:9.2e} {:7.0%} {:9.2e} {:7.0%} {:5.2f} {:8.4f} {:7.4f} {:6.1%} {:8.3f} {:6.3f}".format(*row))
print("(tol) = 5 standard errors relative to the true value; for r pooled it is below 0.5% at every lambda (asserted).")

# %% [markdown]
# ## Exports

# %%
difference_variance_oracle = sp.lambdify((q, r), difference_variance, "numpy")
difference_lag1_covariance_oracle = sp.lambdify(r, difference_lag1_covariance, "numpy")
noise_estimates_oracle = noise_estimates_fn  # (gamma0, gamma1) -> (q_hat, r_hat)
noise_ratio_estimate_oracle = sp.lambdify((gamma0, gamma1), noise_ratio_estimate, "numpy")
beta_from_autocorrelation_oracle = sp.lambdify(rho1, beta_from_autocorrelation, "numpy")
innovation_difference_covariance_oracle = sp.lambdify(r, innovation_difference_covariance, "numpy")  # -r
residual_difference_covariance_oracle = sp.lambdify((k_prev, r), residual_difference_covariance, "numpy")
noise_estimate_long_run_variance_oracle = sp.lambdify((q, r), (q_long_run, r_long_run), "numpy")

export_latex("DifferenceModel", r"d_t = g_t - g_{t-1} = w_t + v_t - v_{t-1}")
export_latex("DifferenceVariance", r"\gamma_0 = \operatorname{Var}(d_t) = q + 2r")
export_latex("DifferenceLagOneCovariance", r"\gamma_1 = \operatorname{Cov}(d_t, d_{t-1}) = -r")
export_latex("NoiseEstimators", r"\hat r = -\hat\gamma_1,\quad \hat q = \hat\gamma_0 + 2\hat\gamma_1")
export_latex("NoiseRatioEstimator", r"\hat\lambda = " + sp.latex(noise_ratio_estimate))
export_latex("DifferenceInnovationForm", r"d_t = \nu_t - (1 - k_{t-1})\,\nu_{t-1}")
export_latex("DifferenceAutocorrelation", r"\rho_1 = \frac{\gamma_1}{\gamma_0} = -\frac{1}{\lambda + 2} = -\frac{\beta}{1 + \beta^2}")
export_latex("BetaFromAutocorrelation", beta_from_autocorrelation)
export_latex("RunningDifferenceStatistics", r"c_0 \leftarrow \beta_s c_0 + (1-\beta_s)\, d_t^2,\quad c_1 \leftarrow \beta_s c_1 + (1-\beta_s)\, d_t d_{t-1}")
export_latex("InnovationDifferenceCovariance", r"\mathbb{E}[d_t\,\nu_{t-1}] = -r")
export_latex("ResidualDifferenceCovariance", r"\mathbb{E}[d_t\,(g_{t-1} - m_{t-1})] = -(1 - k_{t-1})\, r")
export_latex(
    "ClippedNoiseRatio",
    r"\hat\lambda = \operatorname{clip}\Big(\frac{\max(c_0 + 2c_1, 0)}{\max(-c_1, \epsilon)}, \lambda_{\min}, \lambda_{\max}\Big)",
)
export_latex("NoiseRatioBounds", r"\lambda_{\min} = \frac{(1-\beta_{\max})^2}{\beta_{\max}},\quad \lambda_{\max} = \frac{(1-\beta_{\min})^2}{\beta_{\min}}")
export_latex("NoiseEstimateLongRunVarianceR", sp.factor(r_long_run))
export_latex("NoiseEstimateLongRunVarianceQ", sp.factor(q_long_run))
