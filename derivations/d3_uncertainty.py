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
# # D3. Uncertainty: estimating r, confidence intervals and the variance-adapted step
#
# **Model (D1).** $x_t = x_{t-1} + w_t$, $w_t \sim \mathcal N(0, q)$; $g_t = x_t + v_t$, $v_t \sim \mathcal N(0, r)$;
# $\lambda = q / r$. The filter predicts $P^-_t = P_{t-1} + q$, updates with the gain $k_t = P^-_t / (P^-_t + r)$,
#
# $$m_t = m_{t-1} + k_t (g_t - m_{t-1}), \qquad P_t = k_t\, r,$$
#
# and the normalized gain follows $k_{t+1} = (k_t + \lambda)/(k_t + \lambda + 1)$, with steady state
# $K_\infty = 1 - \beta$, $\lambda = (1-\beta)^2/\beta$. Adam's bias-corrected EWMA has the gain
# $k_t = (1-\beta)/(1-\beta^t)$ (D2).
#
# The filter's gain, hence $P_t / r$, is known without looking at the data; the one unknown scale is $r$.
# This notebook derives (1) the variance of the innovations and residuals, which gives an unbiased
# estimate of $r$ (AdaBelief's second moment is one); (2) what Adam's own $v - m^2$ estimates when the
# gradient drifts (a multiple of $r$ that depends on the drift, and on the level's history unless $\beta_2 = \beta_1$;
# with a shared coefficient and matched drift it is exactly $r$); (3) confidence intervals; (4) the step that minimizes the expected squared error of a
# scaled estimate; (5) how that step differs from M-SVAG's.

# %%
from statistics import NormalDist

import numpy as np
import sympy as sp
import sympy.stats as stats

from derivations.common import (
    assert_identity,
    assert_numerically_equal,
    export_latex,
    integers,
    log_uniform,
    show_equation,
    uniform,
)
from derivations.d1_steady_state import beta, gain_map, k, lam, noise_ratio_of_beta, q, r

t = sp.Symbol("t", integer=True, positive=True)
k_prev = sp.Symbol("k_{t-1}", nonnegative=True)
k_t = sp.Symbol("k_t", nonnegative=True)
s_odds = sp.Symbol("s", positive=True)  # beta = 1 / (1 + s) covers 0 < beta < 1 with s > 0


def infinite_sum(term, index, lower, coefficient):
    """Sum `term` over index >= lower for 0 < coefficient < 1 (closed form, convergent branch)."""
    # Pull the index-free factor out first: sympy sums a bare power far faster than a product of binomials.
    constant, varying = sp.powsimp(sp.expand_power_base(term)).as_independent(index, as_Add=False)
    summed = sp.summation(varying.subs(coefficient, 1 / (1 + s_odds)), (index, lower, sp.oo))

    def convergent_branch(piecewise):
        # sympy states convergence as `ratio < 1`; with coefficient = 1/(1+s), s > 0, 1 - ratio factors into positives.
        (closed_form, condition), _ = piecewise.args
        assert isinstance(condition, sp.StrictLessThan), piecewise
        assert sp.factor(sp.together(condition.rhs - condition.lhs)).is_positive, condition
        return closed_form

    summed = summed.replace(lambda e: isinstance(e, sp.Piecewise), convergent_branch)
    assert not summed.has(sp.Sum, sp.Piecewise), summed
    return sp.simplify(constant * summed.subs(s_odds, 1 / coefficient - 1))


def finite_geometric_branch(expr, coefficient):
    """Drop the coefficient^2 = 1 branch sympy keeps for finite geometric sums (0 < coefficient < 1 here)."""

    def general_branch(piecewise):
        (special, condition), (general, otherwise) = piecewise.args
        assert condition == sp.Eq(coefficient**2, 1) and otherwise == sp.true, piecewise
        return general

    return expr.replace(lambda e: isinstance(e, sp.Piecewise), general_branch)


# %% [markdown]
# ## 1. Innovations and residuals: the observation noise is visible in the data
#
# The innovation $\nu_t = g_t - m_{t-1} = (x_{t-1} - m_{t-1}) + w_t + v_t$ is a sum of three independent
# terms with variances $P_{t-1} = k_{t-1} r$, $q$ and $r$. With the gain recursion, $1 - k_t = 1/(k_{t-1} + \lambda + 1)$, so
#
# $$\operatorname{Var}(\nu_t) = P^-_t + r = r\,(k_{t-1} + \lambda + 1) = \frac{r}{1 - k_t}
# \;\xrightarrow{\ t \to \infty\ }\; \frac{r}{\beta}.$$
#
# The post-update residual is $g_t - m_t = (1 - k_t)\,\nu_t$, so
# $\operatorname{Var}(g_t - m_t) = (1 - k_t)\, r \to \beta r$. Both hold for the optimal (Kalman) gain at every
# step, not only at the steady state.

# %%
# Variance of the innovation from its three independent parts (sympy.stats does the bookkeeping).
posterior_prev = sp.Symbol("P_{t-1}", positive=True)
error_prev = stats.Normal("e_{t-1}", 0, sp.sqrt(posterior_prev))  # x_{t-1} - m_{t-1}
w_t = stats.Normal("w_t", 0, sp.sqrt(q))
v_t = stats.Normal("v_t", 0, sp.sqrt(r))
innovation_variance_derived = stats.variance(error_prev + w_t + v_t)
assert_identity(innovation_variance_derived - (posterior_prev + q + r), "Var(nu_t) = P_{t-1} + q + r = P-_t + r")

normalized = innovation_variance_derived.subs({posterior_prev: k_prev * r, q: lam * r})
assert_identity(normalized - r * (k_prev + lam + 1), "Var(nu_t) = r (k_{t-1} + lambda + 1)")
gain_next = gain_map.subs(k, k_prev)  # k_t from the gain recursion
assert_identity(normalized - r / (1 - gain_next), "Var(nu_t) = r / (1 - k_t)")

innovation_variance = r / (1 - k_t)
residual_variance = sp.simplify((1 - k_t) ** 2 * innovation_variance)
assert_identity(residual_variance - (1 - k_t) * r, "Var(g_t - m_t) = (1 - k_t) r")
g_sym, m_prev_sym = sp.symbols("g_t m_{t-1}", real=True)
m_updated = m_prev_sym + k_t * (g_sym - m_prev_sym)
assert_identity((g_sym - m_updated) - (1 - k_t) * (g_sym - m_prev_sym), "g_t - m_t = (1 - k_t) nu_t")
assert_identity(innovation_variance.subs(k_t, 1 - beta) - r / beta, "steady state: Var(nu) = r / beta")
assert_identity(residual_variance.subs(k_t, 1 - beta) - beta * r, "steady state: Var(g - m) = beta r")
show_equation(r"\operatorname{Var}(\nu_t)", r"P^-_t + r = r\,(k_{t-1} + \lambda + 1) = " + sp.latex(innovation_variance))
show_equation(r"\operatorname{Var}(g_t - m_t)", residual_variance)

# %% [markdown]
# **AdaBelief** (Zhuang et al., 2020) keeps $s_t = \beta_2 s_{t-1} + (1-\beta_2)(g_t - m_t)^2$, an EWMA of
# squared residuals. Under the model, with $\beta_1$ matched to $\lambda$, $\mathbb E[s] = \beta_1 r$ at the
# steady state, so $\hat r = s / \beta_1$ is an unbiased estimate of the observation noise (about $s / 0.9$ for
# the default $\beta_1$): AdaBelief's "belief" is, up to the constant $\beta_1$, the Kalman filter's $r$.
#
# **Monte-Carlo check (steady state).** Many independent coordinates (each with its own $r$), the EWMA with
# $\beta = 0.9$ on a walk with the matched $\lambda = 1/90$, started from the steady-state error distribution
# $m_0 - x_0 \sim \mathcal N(0, (1-\beta) r)$ so that every step is stationary. The optimal filter's innovations
# are white, so $\nu_t^2 \beta / r$ over all $n$ coordinate-steps are independent $\chi^2_1$ draws: mean 1,
# standard error $\sqrt{2/n}$. Tolerance: 5 standard errors. The same run checks that consecutive innovations
# are uncorrelated (standard error $1/\sqrt n$) and that a mismatched gain breaks this.

# %%
rng = np.random.default_rng(30)
n_coords, n_steps, b = 20_000, 300, 0.9
lam_matched = (1 - b) ** 2 / b
r_coord = rng.uniform(0.1, 10.0, n_coords)  # per-coordinate noise scales, to check the scaling with r
q_coord = lam_matched * r_coord
x = np.zeros(n_coords)
m = x + rng.normal(size=n_coords) * np.sqrt((1 - b) * r_coord)  # steady-state posterior error
m_mismatched = m.copy()  # beta = 0.5: too large a gain for this lambda
nu_prev = nu_prev_mismatched = None
sum_innovation = sum_residual = sum_lag1 = sum_lag1_mismatched = sum_square_mismatched = 0.0
errors_at = {}  # posterior errors (m - x) / sqrt(P) at well-separated steps, for the coverage check
for step in range(1, n_steps + 1):
    x = x + rng.normal(size=n_coords) * np.sqrt(q_coord)
    g = x + rng.normal(size=n_coords) * np.sqrt(r_coord)
    nu = g - m
    nu_mismatched = g - m_mismatched
    m = m + (1 - b) * nu
    m_mismatched = m_mismatched + 0.5 * nu_mismatched
    sum_innovation += np.sum(nu**2 * b / r_coord)
    sum_residual += np.sum((g - m) ** 2 / (b * r_coord))
    if nu_prev is not None:
        sum_lag1 += np.sum(nu * nu_prev * b / r_coord)
        sum_lag1_mismatched += np.sum(nu_mismatched * nu_prev_mismatched / r_coord)
        sum_square_mismatched += np.sum(nu_prev_mismatched**2 / r_coord)
    nu_prev, nu_prev_mismatched = nu, nu_mismatched
    if step % 50 == 0:  # 50 steps apart the error autocorrelation beta^50 ~ 5e-3 is negligible
        errors_at[step] = (m - x) / np.sqrt((1 - b) * r_coord)

n_samples = n_coords * n_steps
standard_error = np.sqrt(2 / n_samples)
innovation_ratio = sum_innovation / n_samples
residual_ratio = sum_residual / n_samples
lag1 = sum_lag1 / (n_samples - n_coords)
assert abs(innovation_ratio - 1) < 5 * standard_error, innovation_ratio  # E[nu^2] = r / beta
assert abs(residual_ratio - 1) < 5 * standard_error, residual_ratio  # E[(g - m)^2] / beta = r
assert abs(lag1) < 5 / np.sqrt(n_samples - n_coords), lag1  # optimal innovations are white
# The mismatched gain's innovations are visibly correlated, so the whiteness check has power.
lag1_mismatched = sum_lag1_mismatched / sum_square_mismatched
assert abs(lag1_mismatched) > 50 / np.sqrt(n_samples - n_coords), lag1_mismatched
print(f"E[nu^2] beta / r = {innovation_ratio:.4f}, E[(g-m)^2] / (beta r) = {residual_ratio:.4f} "
      f"(standard error {standard_error:.1e}); lag-1 innovation correlation {lag1:.1e} "
      f"(gain 0.5 instead of 0.1: {lag1_mismatched:.3f})")

# %% [markdown]
# **Monte-Carlo check (transient).** The identity $\operatorname{Var}(\nu_t) = r / (1 - k_t)$ holds at every step of
# the optimal filter. Start from a known prior $x_0 \sim \mathcal N(0, k_0 r)$, $m_0 = 0$ with $k_0 = 2$, iterate
# the gain recursion, and compare the sample variance at each of the first 12 steps (where $k_t$ moves from
# $0.67$ toward $0.1$) with the formula. Per step, standard error $\sqrt{2 / N}$ over $N$ coordinates; tolerance 5.

# %%
rng = np.random.default_rng(31)
n_coords = 200_000
r_coord = rng.uniform(0.1, 10.0, n_coords)
gain, lam_value = 2.0, lam_matched  # k_0 = P_0 / r
x = rng.normal(size=n_coords) * np.sqrt(gain * r_coord)
m = np.zeros(n_coords)
innovation_variance_fn = sp.lambdify((k_t, r), innovation_variance, "numpy")
residual_variance_fn = sp.lambdify((k_t, r), residual_variance, "numpy")
worst = 0.0
for step in range(1, 13):
    gain = (gain + lam_value) / (gain + lam_value + 1)
    x = x + rng.normal(size=n_coords) * np.sqrt(lam_value * r_coord)
    g = x + rng.normal(size=n_coords) * np.sqrt(r_coord)
    nu = g - m
    m = m + gain * nu
    ratio_nu = np.mean(nu**2 / innovation_variance_fn(gain, r_coord))
    ratio_res = np.mean((g - m) ** 2 / residual_variance_fn(gain, r_coord))
    worst = max(worst, abs(ratio_nu - 1), abs(ratio_res - 1))
assert worst < 5 * np.sqrt(2 / n_coords), worst
print(f"transient: worst |sample / predicted - 1| = {worst:.1e} (tolerance {5 * np.sqrt(2 / n_coords):.1e})")

# %% [markdown]
# ## 2. What Adam's own state says about $r$
#
# Adam keeps $m$ (EWMA of $g$, coefficient $\beta_1$) and $v$ (EWMA of $g^2$, coefficient $\beta_2$). Is
# $v - m^2$ an estimate of $r$? Condition on the current value $x_t$ and run the walk backwards:
# $x_{t-j} = x_t - \sum_{i<j} w_{t-i}$. With the steady-state weights $a_j = (1-\beta)\beta^j$ (they sum to 1),
#
# $$m - x_t = \sum_j a_j v_{t-j} - \sum_{i \ge 0} w_{t-i} \sum_{j > i} a_j,$$
#
# so $\mathbb E[(m - x_t)^2] = r \sum_j a_j^2 + q \sum_{i \ge 1} \big(\sum_{j \ge i} a_j\big)^2$: a **noise part**
# $r (1-\beta_1)/(1+\beta_1)$ and a **drift (lag) part** $q \beta_1^2/(1-\beta_1^2)$. And since
# $\mathbb E[g_{t-j}^2 \mid x_t] = x_t^2 + jq + r$, $\mathbb E[v \mid x_t] = x_t^2 + r + q \beta_2 / (1 - \beta_2)$.

# %%
b1, b2 = sp.symbols("beta_1 beta_2", positive=True)
i_lag, j_lag = sp.symbols("i j", integer=True, nonnegative=True)
x_t = sp.Symbol("x_t", real=True)
weight = (1 - b1) * b1**j_lag
assert infinite_sum(weight, j_lag, 0, b1) == 1  # steady-state weights sum to one: m is unbiased given x_t
noise_sum = infinite_sum(weight**2, j_lag, 0, b1)
tail = infinite_sum(weight, j_lag, i_lag, b1)  # sum_{j >= i} a_j
drift_sum = infinite_sum(tail**2, i_lag, 1, b1)
assert_identity(noise_sum - (1 - b1) / (1 + b1), "sum a_j^2 = (1 - beta)/(1 + beta)")
assert_identity(tail - b1**i_lag, "sum_{j >= i} a_j = beta^i")
assert_identity(drift_sum - b1**2 / (1 - b1**2), "sum_{i >= 1} beta^(2i) = beta^2 / (1 - beta^2)")
tracking_error = r * noise_sum + q * drift_sum  # E[(m - x_t)^2 | x_t]

mean_lag = infinite_sum(j_lag * (1 - b2) * b2**j_lag, j_lag, 0, b2)  # sum_j j a_j: mean age of v's data
assert_identity(mean_lag - b2 / (1 - b2), "sum_j j (1 - beta) beta^j = beta / (1 - beta)")
expected_v = x_t**2 + r + q * mean_lag
expected_m_squared = x_t**2 + tracking_error  # E[m | x_t] = x_t
adam_state_noise_bias = sp.simplify(((expected_v - expected_m_squared) / r).subs(q, lam * r))
adam_state_noise_bias_stated = 2 * b1 / (1 + b1) + lam * (b2 / (1 - b2) - b1**2 / (1 - b1**2))
assert_identity(adam_state_noise_bias - adam_state_noise_bias_stated, "E[v - m^2] = r c(beta1, beta2, lambda)")
show_equation(r"\mathbb E[(m - x_t)^2]", r"\frac{1 - \beta_1}{1 + \beta_1}\, r + \frac{\beta_1^2}{1 - \beta_1^2}\, q")
show_equation(r"\mathbb E[v \mid x_t]", r"x_t^2 + r + \frac{\beta_2}{1 - \beta_2}\, q")
show_equation(r"c(\beta_1, \beta_2, \lambda) = \mathbb E[v - m^2] / r", adam_state_noise_bias_stated)

# %% [markdown]
# Hence, given the present level $x_t$ (with the past increments independent of it), $\mathbb E[v - m^2 \mid x_t] = c\,r$ with
#
# $$c(\beta_1, \beta_2, \lambda) = \frac{2\beta_1}{1+\beta_1} + \lambda\Big(\frac{\beta_2}{1-\beta_2} - \frac{\beta_1^2}{1-\beta_1^2}\Big),$$
#
# and $\hat r = (v - m^2)/c$ is an unbiased zero-memory estimator (no state beyond Adam's). With $\lambda$ matched to
# $\beta_1$, $c = \beta_1 + (1-\beta_1)^2 \beta_2 / (\beta_1 (1 - \beta_2))$, which is **exactly 12** for the defaults
# $\beta_1 = 0.9$, $\beta_2 = 0.999$. Plainly: if the gradient truly drifts at the rate that makes $\beta_1 = 0.9$ optimal,
# $v - m^2$ overestimates the observation noise twelvefold, because $v$ averages over $\sim 1000$ steps, during which
# the mean moves by far more than $m$ lags. With $\beta_2 = 0.999$, only for a static mean ($\lambda = 0$) is $c$ close to 1.
#
# At matched $\lambda$ the tracking error is $(1-\beta) r = P_\infty$, the Kalman posterior variance (D1), split into a
# noise part $\frac{1-\beta}{1+\beta} r$ and a lag part $\frac{\beta(1-\beta)}{1+\beta} r$: at $\beta = 0.9$ the lag is 90% of it.

# %%
matched = {lam: noise_ratio_of_beta.subs(beta, b1)}
c_matched = b1 + (1 - b1) ** 2 * b2 / (b1 * (1 - b2))
assert_identity(adam_state_noise_bias.subs(matched) - c_matched, "matched lambda: c = beta1 + (1-beta1)^2 beta2 / (beta1 (1 - beta2))")
c_default = adam_state_noise_bias.subs(matched).subs({b1: sp.Rational(9, 10), b2: sp.Rational(999, 1000)})
assert sp.nsimplify(c_default) == 12, c_default
noise_part = (r * noise_sum).subs(b1, beta)
lag_part = (q * drift_sum).subs(b1, beta).subs(q, noise_ratio_of_beta * r)
assert_identity(noise_part - (1 - beta) / (1 + beta) * r, "noise part (1 - beta)/(1 + beta) r")
assert_identity(lag_part - beta * (1 - beta) / (1 + beta) * r, "lag part beta (1 - beta)/(1 + beta) r")
assert_identity(noise_part + lag_part - (1 - beta) * r, "tracking error at matched lambda = (1 - beta) r = P_inf")
show_equation(r"c(0.9, 0.999, \lambda(0.9))", c_default)

# %% [markdown]
# **Caveat: with $\beta_2 \ne \beta_1$, $v - m^2$ also depends on the history of the level.** Write $g_{t-j} = x_t + h_j$.
# Because both weight sets sum to 1,
#
# $$v - m^2 = \sum_j a^{(2)}_j h_j^2 - \Big(\sum_j a^{(1)}_j h_j\Big)^2 + 2 x_t \sum_j \big(a^{(2)}_j - a^{(1)}_j\big) h_j ,$$
#
# and the last term is not translation invariant. It averages to zero only if the past increments are independent of
# the present level (the reading above). For a walk from a known start ($x_t = x_0 + \sum w$, $x_0$ independent of the
# increments), $\mathbb E[x_t h_j] = -jq$, and the mean becomes
#
# $$\mathbb E[v - m^2] = r\Big(c - 2\lambda\Big(\frac{\beta_2}{1-\beta_2} - \frac{\beta_1}{1-\beta_1}\Big)\Big),$$
#
# which is $-10\,r$ (negative!) for the defaults at matched $\lambda$: $v$ remembers the smaller $x^2$ of ~1000 steps ago.
# So Adam's own $(m, v)$ with $\beta_2 \gg \beta_1$ do not give a reliable estimate of $r$ when the mean drifts.
# **With a shared coefficient** ($\beta_2 = \beta_1$, as M-SVAG uses) the cross term vanishes, $v - m^2$ is translation
# invariant, and at matched $\lambda$, $c = 1$ exactly: $v - m^2$ is then an unbiased estimate of $r$ whatever the level
# (at the cost of one extra tensor next to Adam's $v$). Section 1's residual EWMA is translation invariant too.

# %%
# Route 1: the cross term 2 sum_j (a2_j - a1_j) E[x_t h_j] with E[x_t h_j] = -j q.
mean_lag_1 = mean_lag.subs(b2, b1)
adam_state_noise_bias_from_start = sp.simplify(adam_state_noise_bias - 2 * lam * (mean_lag - mean_lag_1))
# Route 2, independently: E[x_{t-j} x_{t-l}] = E[x_t^2] - max(j, l) q, and sum_{j,l} a_j a_l max(j, l) = sum_{i>=1} P(max >= i).
max_age = infinite_sum(1 - (1 - b1**i_lag) ** 2, i_lag, 1, b1)
from_start_direct = ((r - q * mean_lag) - (r * noise_sum - q * max_age)) / r
assert_identity(from_start_direct.subs(q, lam * r) - adam_state_noise_bias_from_start, "two routes to E[v - m^2] from a known start")
assert_identity(
    adam_state_noise_bias_from_start - (adam_state_noise_bias_stated - 2 * lam * (b2 / (1 - b2) - b1 / (1 - b1))),
    "E[v - m^2]/r from a known start = c - 2 lambda (beta2/(1-beta2) - beta1/(1-beta1))",
)
from_start_default = adam_state_noise_bias_from_start.subs(matched).subs({b1: sp.Rational(9, 10), b2: sp.Rational(999, 1000)})
assert sp.nsimplify(from_start_default) == -10, from_start_default
shared = {b2: b1}
assert_identity((adam_state_noise_bias_from_start - adam_state_noise_bias).subs(shared), "shared beta: no history term")
assert_identity(adam_state_noise_bias.subs(shared) - (2 * b1 / (1 + b1) + lam * b1 / (1 - b1**2)), "c(beta, beta, lambda)")
assert_identity(adam_state_noise_bias.subs(shared).subs(matched) - 1, "shared beta, matched lambda: c = 1")
show_equation(
    r"\mathbb E[v - m^2] / r\ (\text{known start})",
    r"c - 2\lambda\Big(\frac{\beta_2}{1-\beta_2} - \frac{\beta_1}{1-\beta_1}\Big)",
)

# %% [markdown]
# The same pieces give AdaBelief's residual for any $\lambda$: $g_t - m_t = \beta_1 \nu_t$ and
# $\mathbb E[\nu_t^2] = \mathbb E[(m_{t-1} - x_{t-1})^2] + q + r$, so
# $\mathbb E[(g - m)^2] = \beta_1^2 r \big(\tfrac{2}{1 + \beta_1} + \tfrac{\lambda}{1 - \beta_1^2}\big)$, which is $\beta_1 r$ at matched $\lambda$.

# %%
adabelief_residual = sp.simplify(b1**2 * (tracking_error + q + r).subs(q, lam * r))
assert_identity(adabelief_residual - b1**2 * r * (2 / (1 + b1) + lam / (1 - b1**2)), "E[(g - m)^2] for any lambda")
assert_identity(adabelief_residual.subs(matched) - b1 * r, "E[(g - m)^2] = beta1 r at matched lambda")

# %% [markdown]
# **Monte-Carlo check** with $\beta_1 = 0.9$, $\beta_2 = 0.99$ (1500 steps from $m = v = 0$: the neglected start-up
# weight $\beta_2^{1500} \approx 3 \cdot 10^{-7}$), for a static mean ($\lambda = 0$, $c = 0.947$), the matched
# $\lambda = 1/90$ ($c = 2.0$) and a fast drift $\lambda = 0.1$ ($c = 10.4$). One run per $\lambda$ checks three statements:
# - *level independent of its history* (the derivation's reading): the path is shifted at the end so that the present
#   level is a fresh $\mathcal N(0, r)$ draw (exact for EWMAs: shifting $g$ by $C$ shifts $m$ by $C(1-\beta_1^T)$ and $v$ by
#   $2C m^{(\beta_2)} + C^2 (1-\beta_2^T)$, with $m^{(\beta_2)}$ the $\beta_2$-EWMA of $g$); mean of $(v - m^2)/r$ vs $c$, and of $(m - x)^2/r$
#   vs the tracking error;
# - *known start* ($x_0 = 0$): mean of $(v - m^2)/r$ vs $c - 2\lambda(\beta_2/(1-\beta_2) - \beta_1/(1-\beta_1))$;
# - *shared coefficient*: an EWMA of $g^2$ with $\beta_1$, mean of $(v^{(\beta_1)} - m^2)/r$ vs $c(\beta_1, \beta_1, \lambda)$ (1 at $\lambda = 1/90$).
#
# Coordinates are independent, so the standard error of each mean is the sample standard deviation over $\sqrt N$;
# tolerance 5 standard errors.

# %%
adam_state_noise_bias_fn = sp.lambdify((b1, b2, lam), adam_state_noise_bias, "numpy")
adam_state_noise_bias_from_start_fn = sp.lambdify((b1, b2, lam), adam_state_noise_bias_from_start, "numpy")
tracking_error_fn = sp.lambdify((b1, lam), (tracking_error / r).subs(q, lam * r), "numpy")
rng = np.random.default_rng(32)
n_coords, n_steps, beta1_v, beta2_v = 20_000, 1_500, 0.9, 0.99
total1, total2 = 1 - beta1_v**n_steps, 1 - beta2_v**n_steps  # exact weight totals of EWMAs started at 0
for lam_value in [0.0, 1 / 90, 0.1]:
    r_coord = rng.uniform(0.1, 10.0, n_coords)
    y = np.zeros(n_coords)  # the walk from the known start 0
    m, m_slow, v, v_shared = (np.zeros(n_coords) for _ in range(4))
    for step in range(n_steps):
        if lam_value > 0:  # a static mean needs no walk
            y = y + rng.normal(size=n_coords) * np.sqrt(lam_value * r_coord)
        g = y + rng.normal(size=n_coords) * np.sqrt(r_coord)
        m = beta1_v * m + (1 - beta1_v) * g
        m_slow = beta2_v * m_slow + (1 - beta2_v) * g  # only to shift v exactly
        v = beta2_v * v + (1 - beta2_v) * g**2
        v_shared = beta1_v * v_shared + (1 - beta1_v) * g**2
    level = rng.normal(size=n_coords) * np.sqrt(r_coord)  # independent of the increments
    shift = level - y
    m_shifted = m + shift * total1
    v_shifted = v + 2 * shift * m_slow + shift**2 * total2
    expected_c = adam_state_noise_bias_fn(beta1_v, beta2_v, lam_value)
    cases = [
        ("(v - m^2)/r, level independent of history", (v_shifted - m_shifted**2) / r_coord, expected_c),
        ("(m - x)^2/r", (m_shifted - level) ** 2 / r_coord, tracking_error_fn(beta1_v, lam_value)),
        ("(v - m^2)/r, known start", (v - m**2) / r_coord, adam_state_noise_bias_from_start_fn(beta1_v, beta2_v, lam_value)),
        ("(v_shared - m^2)/r", (v_shared - m**2) / r_coord, adam_state_noise_bias_fn(beta1_v, beta1_v, lam_value)),
    ]
    for name, sample, expected in cases:
        mean, se = sample.mean(), sample.std(ddof=1) / np.sqrt(n_coords)
        assert abs(mean - expected) < 5 * se, (lam_value, name, mean, expected, se)
        print(f"lambda = {lam_value:.4f}: {name:45s} mean {mean:7.3f} +- {se:.3f}, predicted {expected:7.3f}")
    # The checks have power: reading v - m^2 as r (c = 1) is rejected, and so is c for a walk from a known start.
    independent, known_start = cases[0][1], cases[2][1]
    assert abs(independent.mean() - 1) > 10 * independent.std(ddof=1) / np.sqrt(n_coords)
    if lam_value > 0:
        assert abs(known_start.mean() - expected_c) > 10 * known_start.std(ddof=1) / np.sqrt(n_coords)

# %% [markdown]
# ## 3. Confidence intervals and the signal-to-noise ratio
#
# The posterior is $x_t \mid g_{1:t} \sim \mathcal N(m_t, P_t)$ with $P_t = k_t \hat r$, so a two-sided interval at level
# $\ell$ is
#
# $$m_t \pm z_\ell \sqrt{P_t}, \qquad z_\ell = \sqrt 2\, \operatorname{erf}^{-1}(\ell),$$
#
# and the per-coordinate signal-to-noise ratio is $\mathrm{SNR}_t = m_t^2 / P_t$.

# %%
level = sp.Symbol("ell", positive=True)
confidence_z = sp.sqrt(2) * sp.erfinv(level)
# P(|Z| <= z) = erf(z / sqrt 2) for a standard normal Z, so the interval covers with probability ell.
assert_identity(sp.erf(confidence_z / sp.sqrt(2)) - level, "erf(z / sqrt 2) = ell")
for value, digits, expected in [(sp.Rational(95, 100), 6, 1.959964), (sp.Rational(1, 2), 7, 0.6744898), (sp.Rational(9, 10), 7, 1.6448536)]:
    assert round(float(sp.N(confidence_z.subs(level, value), 20)), digits) == expected, value


def _erfinv(y):
    """erf^{-1} from the standard library's normal quantile (numpy has none): erf^{-1}(y) = Phi^{-1}((1+y)/2)/sqrt 2."""
    return np.vectorize(lambda u: NormalDist().inv_cdf((1 + u) / 2) / np.sqrt(2), otypes=[float])(y)


confidence_z_fn = sp.lambdify(level, confidence_z, [{"erfinv": _erfinv}, "numpy"])
assert_numerically_equal(
    confidence_z_fn, lambda u: np.array([float(sp.N(confidence_z.subs(level, float(x)), 30)) for x in u]),
    {level: uniform(0.01, 0.999)}, "numpy z oracle vs sympy erfinv", n=50, rtol=1e-12,
)

# Coverage in the steady-state run of section 1: errors (m - x)/sqrt(P) at 6 well-separated steps per coordinate.
standardized = np.concatenate(list(errors_at.values()))
for value in [0.5, 0.9, 0.95]:
    covered = np.mean(np.abs(standardized) <= confidence_z_fn(value))
    assert abs(covered - value) < 5 * np.sqrt(value * (1 - value) / standardized.size), (value, covered)
    print(f"level {value}: z = {float(confidence_z_fn(value)):.7f}, empirical coverage {covered:.4f}")

m_sym = sp.Symbol("m_t", real=True)
P_sym = sp.Symbol("P_t", positive=True)
snr = m_sym**2 / P_sym
show_equation(r"z_\ell", confidence_z)
show_equation(r"\mathrm{SNR}_t", snr)

# %% [markdown]
# ## 4. The variance-adapted step
#
# Let $\hat g$ estimate $x$ with mean $x$ and variance $P$. Scaling it by $\gamma$ has risk
# $\mathbb E[(\gamma \hat g - x)^2] = \gamma^2 (x^2 + P) - 2\gamma x^2 + x^2$, minimized at
#
# $$\gamma^* = \frac{x^2}{x^2 + P} = \frac{\mathrm{SNR}}{1 + \mathrm{SNR}}, \qquad \text{risk } \frac{x^2 P}{x^2 + P} \le \min(P, x^2).$$
#
# The plug-in factor is $\gamma_t = m_t^2 / (m_t^2 + P_t)$ with $P_t = k_t \hat r$; it lies in $[0, 1]$, is 0 when
# $m_t = 0$ and tends to 1 (Adam's step) as $P_t \to 0$. (Note $\mathbb E[m^2] = x^2 + P$, so the plug-in is slightly
# optimistic when the signal is weak.)

# %%
gamma = sp.Symbol("gamma", real=True)
x_true = sp.Symbol("x", real=True)
estimate = stats.Normal("ghat", x_true, sp.sqrt(P_sym))
risk = sp.expand(stats.E((gamma * estimate - x_true) ** 2))
assert_identity(risk - (gamma**2 * (x_true**2 + P_sym) - 2 * gamma * x_true**2 + x_true**2), "risk of gamma ghat")
stationary = sp.solve(sp.diff(risk, gamma), gamma)
assert len(stationary) == 1
gamma_star = stationary[0]
assert_identity(gamma_star - x_true**2 / (x_true**2 + P_sym), "gamma* = x^2 / (x^2 + P)")
assert sp.diff(risk, gamma, 2).is_positive  # convex in gamma, so the stationary point is the minimum
min_risk = sp.simplify(risk.subs(gamma, gamma_star))
assert_identity(min_risk - x_true**2 * P_sym / (x_true**2 + P_sym), "minimum risk x^2 P / (x^2 + P)")
assert_identity(risk.subs(gamma, 1) - min_risk - P_sym**2 / (x_true**2 + P_sym), "gamma = 1 costs P^2/(x^2+P) more")
assert_identity(risk.subs(gamma, 0) - min_risk - x_true**4 / (x_true**2 + P_sym), "gamma = 0 costs x^4/(x^2+P) more")
assert_identity(sp.expand(stats.E(estimate**2)) - (x_true**2 + P_sym), "E[ghat^2] = x^2 + P")

variance_adaptation_factor = m_sym**2 / (m_sym**2 + P_sym)
assert_identity(variance_adaptation_factor - (snr / (1 + snr)), "gamma = SNR / (1 + SNR)")
assert variance_adaptation_factor.is_nonnegative and sp.simplify(1 - variance_adaptation_factor).is_nonnegative
assert variance_adaptation_factor.subs(m_sym, 0) == 0 and sp.limit(variance_adaptation_factor, P_sym, 0) == 1
assert_numerically_equal(
    sp.Min(variance_adaptation_factor, 1 - variance_adaptation_factor, 0), sp.Integer(0),
    {m_sym: uniform(-100, 100), P_sym: log_uniform(1e-8, 1e8)}, "0 <= gamma <= 1", atol=0.0,
)
show_equation(r"\gamma^*", gamma_star)
show_equation(r"\gamma_t", variance_adaptation_factor)

# %% [markdown]
# ## 5. Contrast with M-SVAG
#
# M-SVAG (Balles & Hennig, 2018) uses the same form $m^2/(m^2 + \rho\, s)$ with $s$ the gradient variance and $\rho$ the
# variance factor of the bias-corrected EWMA of **i.i.d.** gradients (a static mean): with weights
# $(1-\beta)\beta^j/(1-\beta^t)$, $j < t$,
#
# $$\rho(\beta, t) = \frac{(1-\beta)^2 (1-\beta^{2t})}{(1-\beta^t)^2 (1-\beta^2)}.$$
#
# The Kalman reading of Adam (D2) gives the normalized posterior variance $k_t = (1-\beta)/(1-\beta^t)$ instead.
# Both are 1 at $t = 1$. Their ratio is exactly
#
# $$\frac{k_t}{\rho_t} = \frac{1 + \beta}{1 + \beta^t} \ge 1,$$
#
# since $\beta^t \le \beta$ for $t \ge 1$, with limits $\rho \to (1-\beta)/(1+\beta)$, $k_t \to 1 - \beta$, ratio $\to 1 + \beta \approx 2$.
# The difference is the model: M-SVAG assumes a static mean, so only noise has to be averaged away; the Kalman
# reading assumes the drift that makes Adam's gain optimal, and its posterior variance includes the lag error of
# tracking a moving mean (the lag part of section 2). Hence a larger variance and a more cautious factor.
# Against a truly static mean the EWMA is itself suboptimal: the $q = 0$ filter (the running mean, gain $1/t$) has
# variance $1/t \le \rho_t$ (Cauchy-Schwarz: weights summing to 1 have $\sum w_j^2 \ge 1/t$), and $1/t \to 0$ while $\rho$ does not.

# %%
j_sum = sp.Symbol("j", integer=True, nonnegative=True)
corrected_weight = (1 - beta) * beta**j_sum / (1 - beta**t)
weight_total = finite_geometric_branch(sp.summation(corrected_weight, (j_sum, 0, t - 1)), beta)
assert_identity(weight_total - 1, "bias-corrected weights sum to 1")
msvag_variance_factor = sp.simplify(finite_geometric_branch(sp.summation(corrected_weight**2, (j_sum, 0, t - 1)), beta))
msvag_stated = (1 - beta) ** 2 * (1 - beta ** (2 * t)) / ((1 - beta**t) ** 2 * (1 - beta**2))
assert_identity(msvag_variance_factor - msvag_stated, "rho(beta, t) = sum of squared weights")
kalman_adam_variance_factor = (1 - beta) / (1 - beta**t)

assert sp.simplify(msvag_stated.subs(t, 1)) == 1 and sp.simplify(kalman_adam_variance_factor.subs(t, 1)) == 1
factor_ratio = (1 + beta) / (1 + beta**t)
assert_identity(kalman_adam_variance_factor / msvag_stated - factor_ratio, "k_t / rho_t = (1 + beta)/(1 + beta^t)")
assert_identity(factor_ratio - 1 - (beta - beta**t) / (1 + beta**t), "ratio - 1 = (beta - beta^t)/(1 + beta^t) >= 0")
in_unit = {beta: 1 / (1 + s_odds)}  # lets sympy take t -> oo with beta^t -> 0
rho_limit = sp.simplify(sp.limit(msvag_stated.subs(in_unit), t, sp.oo).subs(s_odds, 1 / beta - 1))
k_limit = sp.simplify(sp.limit(kalman_adam_variance_factor.subs(in_unit), t, sp.oo).subs(s_odds, 1 / beta - 1))
assert_identity(rho_limit - (1 - beta) / (1 + beta), "rho -> (1 - beta)/(1 + beta)")
assert_identity(k_limit - (1 - beta), "k_t -> 1 - beta")
assert_identity(k_limit / rho_limit - (1 + beta), "k_t / rho_t -> 1 + beta")
assert sp.limit(1 / t, t, sp.oo) == 0 and sp.simplify(rho_limit.subs(in_unit)).is_positive  # 1/t vanishes, rho does not
# M-SVAG divides v - m^2 by 1 - rho: at the steady state with a static mean that is exactly our c(beta1, ., 0).
assert_identity(adam_state_noise_bias.subs(lam, 0) - (1 - rho_limit.subs(beta, b1)), "c(lambda = 0) = 1 - rho_inf")

# Cauchy-Schwarz through Lagrange's identity, at a fixed length: n sum w^2 - (sum w)^2 = sum_{i<j} (w_i - w_j)^2.
w_syms = sp.symbols("w_0:6", real=True)
lagrange = len(w_syms) * sum(wi**2 for wi in w_syms) - sum(w_syms) ** 2
assert_identity(lagrange - sum((w_syms[a] - w_syms[c]) ** 2 for a in range(6) for c in range(a + 1, 6)), "Lagrange identity")

# Numerically over a grid: k_t >= rho_t >= 1/t, with strict inequalities for t >= 2.
grid_beta, grid_t = np.meshgrid(np.linspace(0.01, 0.999, 200), np.arange(1, 2001, dtype=float))
msvag_variance_factor_fn = sp.lambdify((beta, t), msvag_stated, "numpy")
kalman_adam_variance_factor_fn = sp.lambdify((beta, t), kalman_adam_variance_factor, "numpy")
rho_grid, k_grid = msvag_variance_factor_fn(grid_beta, grid_t), kalman_adam_variance_factor_fn(grid_beta, grid_t)
later = grid_t >= 2
assert np.all(k_grid[later] > rho_grid[later] * (1 + 1e-12)) and np.all(rho_grid[later] > (1 + 1e-12) / grid_t[later])
assert np.allclose(k_grid[~later], 1.0, rtol=1e-12) and np.allclose(rho_grid[~later], 1.0, rtol=1e-12)
assert_numerically_equal(
    kalman_adam_variance_factor / msvag_stated, factor_ratio, {beta: uniform(0.01, 0.999), t: integers(1, 5000)},
    "k_t / rho_t = (1 + beta)/(1 + beta^t)", rtol=1e-9,
)
show_equation(r"\rho(\beta, t)", msvag_stated)
show_equation(r"k_t / \rho_t", factor_ratio)

# %% [markdown]
# **Monte-Carlo check of both readings.** Run the same bias-corrected EWMA ($\beta = 0.8$) in two worlds: a static mean
# ($q = 0$), where its error variance must be $\rho_t r$, and the drifting mean with D2's process-noise schedule
# $q_t = r(1-\beta)^2 / (\beta(1-\beta^{t-1}))$, where it is the Kalman filter and its error variance must be $k_t r$.
# Per step the standard error of a sample second moment of Gaussian errors is $\sqrt{2/N}$ (relative); tolerance 5.

# %%
rng = np.random.default_rng(33)
n_coords, b = 200_000, 0.8
r_coord = rng.uniform(0.1, 10.0, n_coords)
x_drift = np.zeros(n_coords)
x_static = rng.normal(size=n_coords)
raw_drift = np.zeros(n_coords)
raw_static = np.zeros(n_coords)
worst_static = worst_drift = 0.0
for step in range(1, 41):
    if step >= 2:  # D2's schedule; the first step has a diffuse prior
        x_drift = x_drift + rng.normal(size=n_coords) * np.sqrt(r_coord * (1 - b) ** 2 / (b * (1 - b ** (step - 1))))
    raw_drift = b * raw_drift + (1 - b) * (x_drift + rng.normal(size=n_coords) * np.sqrt(r_coord))
    raw_static = b * raw_static + (1 - b) * (x_static + rng.normal(size=n_coords) * np.sqrt(r_coord))
    corrected = 1 - b**step
    drift_ratio = np.mean((raw_drift / corrected - x_drift) ** 2 / r_coord) / kalman_adam_variance_factor_fn(b, step)
    static_ratio = np.mean((raw_static / corrected - x_static) ** 2 / r_coord) / msvag_variance_factor_fn(b, step)
    worst_drift, worst_static = max(worst_drift, abs(drift_ratio - 1)), max(worst_static, abs(static_ratio - 1))
assert worst_drift < 5 * np.sqrt(2 / n_coords) and worst_static < 5 * np.sqrt(2 / n_coords), (worst_drift, worst_static)
# At t = 40 the two readings differ by (1 + beta)/(1 + beta^40) = 1.8, far outside the tolerance.
assert kalman_adam_variance_factor_fn(b, 40) / msvag_variance_factor_fn(b, 40) > 1.79
print(f"drifting mean: Var / (k_t r) within {worst_drift:.1e} of 1; static mean: Var / (rho_t r) within {worst_static:.1e}")

# %% [markdown]
# ## Exports

# %%
innovation_variance_oracle = innovation_variance_fn  # (k_t, r) -> r / (1 - k_t)
residual_variance_oracle = residual_variance_fn  # (k_t, r) -> (1 - k_t) r
adam_state_noise_bias_oracle = adam_state_noise_bias_fn  # (beta1, beta2, lambda) -> c = E[v - m^2] / r
adam_state_noise_bias_from_start_oracle = adam_state_noise_bias_from_start_fn  # same, walk from a known start
adam_tracking_error_oracle = tracking_error_fn  # (beta1, lambda) -> E[(m - x)^2] / r, steady-state EWMA
adabelief_residual_oracle = sp.lambdify((b1, lam, r), adabelief_residual, "numpy")  # E[(g - m)^2], steady state
confidence_z_oracle = confidence_z_fn  # level -> z
variance_adaptation_factor_oracle = sp.lambdify((m_sym, P_sym), variance_adaptation_factor, "numpy")
msvag_variance_factor_oracle = msvag_variance_factor_fn  # (beta, t) -> rho
kalman_adam_variance_factor_oracle = kalman_adam_variance_factor_fn  # (beta, t) -> k_t

export_latex("InnovationVariance", r"\operatorname{Var}(\nu_t) = P^-_t + r = r\,(k_{t-1} + \lambda + 1) = \frac{r}{1 - k_t}")
export_latex("ResidualVariance", r"\operatorname{Var}(g_t - m_t) = (1 - k_t)\, r")
export_latex("AdaBeliefNoiseEstimate", r"\hat r = s_t / \beta_1")
export_latex("AdamTrackingError", r"\mathbb{E}[(m - x_t)^2] = \frac{1 - \beta_1}{1 + \beta_1}\, r + \frac{\beta_1^2}{1 - \beta_1^2}\, q")
export_latex("AdamStateSecondMoment", r"\mathbb{E}[v \mid x_t] = x_t^2 + r + \frac{\beta_2}{1 - \beta_2}\, q")
export_latex("AdamStateNoiseBias", adam_state_noise_bias_stated)
export_latex("AdamStateNoiseBiasMatched", c_matched)
export_latex("AdamStateNoiseBiasDefault", sp.latex(sp.nsimplify(c_default)))
export_latex(
    "AdamStateNoiseBiasFromStart",
    r"c(\beta_1, \beta_2, \lambda) - 2\lambda\Big(\frac{\beta_2}{1-\beta_2} - \frac{\beta_1}{1-\beta_1}\Big)",
)
export_latex("AdamStateNoiseBiasFromStartDefault", sp.latex(sp.nsimplify(from_start_default)))
export_latex("SharedBetaNoiseBias", r"c(\beta, \beta, \lambda) = \frac{2\beta}{1 + \beta} + \frac{\lambda \beta}{1 - \beta^2}")
export_latex("AdaBeliefResidual", b1**2 * r * (2 / (1 + b1) + lam / (1 - b1**2)))
export_latex("ZeroMemoryNoiseEstimate", r"\hat r = \frac{v_t - m_t^2}{c(\beta_1, \beta_2, \lambda)}")
export_latex("ConfidenceInterval", r"m_t \pm z_\ell \sqrt{P_t},\quad z_\ell = \sqrt{2}\,\operatorname{erf}^{-1}(\ell)")
export_latex("SignalToNoiseRatio", snr)
export_latex("OptimalStepScale", gamma_star)
export_latex("VarianceAdaptationFactor", variance_adaptation_factor)
export_latex("MsvagVarianceFactor", msvag_stated)
export_latex("KalmanAdamVarianceFactor", kalman_adam_variance_factor)
export_latex("VarianceFactorRatio", factor_ratio)
