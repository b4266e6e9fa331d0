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
# # D1. The steady-state Kalman filter of a random walk is an EWMA
#
# **Model (local level).** A gradient coordinate has a true value $x_t$ that drifts as a random walk,
# and we observe it with noise:
#
# $$x_t = x_{t-1} + w_t,\quad w_t \sim \mathcal N(0, q), \qquad g_t = x_t + v_t,\quad v_t \sim \mathcal N(0, r),$$
#
# with noise ratio $\lambda = q / r$. The Kalman filter keeps a posterior mean $m_t$ and variance
# $P_t$. Each step predicts ($P^-_t = P_{t-1} + q$, mean unchanged) and updates with the gain
# $K_t = P^-_t / (P^-_t + r)$:
#
# $$m_t = m_{t-1} + K_t (g_t - m_{t-1}), \qquad P_t = (1 - K_t) P^-_t .$$
#
# The mean update is an EWMA step with coefficient $\beta_t = 1 - K_t$. This notebook derives the
# fixed point of the variance recursion (the steady state), shows that the gain converges to it from
# any prior, and how fast, with an exact closed form. Everything the optimizer relies on is asserted.

# %%
import numpy as np
import sympy as sp

from derivations.common import (
    assert_identity,
    assert_numerically_equal,
    export_latex,
    log_uniform,
    show_equation,
    simplify_radicals,
    uniform,
)

q, r, P = sp.symbols("q r P", positive=True)
lam = sp.Symbol("lambda", positive=True)
beta = sp.Symbol("beta", positive=True)
k = sp.Symbol("k", nonnegative=True)

# %% [markdown]
# ## The Riccati recursion and its fixed point
#
# Substituting the update into the next prediction gives the Riccati recursion for the prior variance,
# $P^-_{t+1} = \dfrac{P^-_t\, r}{P^-_t + r} + q$. A steady state solves $P = \dfrac{P r}{P + r} + q$,
# i.e. the quadratic $P^2 - qP - qr = 0$.

# %%
riccati_map = P * r / (P + r) + q
fixed_point_roots = sp.solve(sp.Eq(riccati_map, P), P)
prior_variance_steady = (q + sp.sqrt(q**2 + 4 * q * r)) / 2
rejected_root = (q - sp.sqrt(q**2 + 4 * q * r)) / 2

assert len(fixed_point_roots) == 2
assert any(sp.simplify(x - prior_variance_steady) == 0 for x in fixed_point_roots)
assert any(sp.simplify(x - rejected_root) == 0 for x in fixed_point_roots)
assert_identity(sp.expand(prior_variance_steady**2 - q * prior_variance_steady - q * r), "P- solves P^2 - qP - qr = 0")
show_equation(r"P^-_\infty", prior_variance_steady)

# %% [markdown]
# **The other root is negative and is rejected.** The product of the two roots is $-qr < 0$ and the first
# is positive, so $(q - \sqrt{q^2 + 4qr})/2 < 0$: not a variance. Moreover the Riccati map sends $[0, \infty)$ into
# $[q, \infty)$ (its first term is non-negative), so from any valid prior the iterates never approach it;
# it is the unstable fixed point of the map's extension to negative values.

# %%
assert prior_variance_steady.is_positive
assert_identity(sp.expand(prior_variance_steady * rejected_root) + q * r, "product of the roots is -q r")
assert (-q * r).is_negative  # so the second root has the opposite sign of the first
assert_numerically_equal(
    sp.Max(rejected_root, 0), sp.Integer(0), {q: log_uniform(1e-8, 1e3), r: log_uniform(1e-8, 1e3)},
    "the rejected root is negative", atol=0.0,
)
# The map's image of [0, oo) lies in [q, oo): R(P) - q = P r / (P + r) >= 0.
assert (riccati_map - q).is_nonnegative

# %% [markdown]
# ## Gain, EWMA coefficient and posterior variance at the steady state
#
# With $p = P^-_\infty / r$ the gain is $K_\infty = p / (p + 1)$. In terms of $\lambda$ alone:

# %%
prior_variance_ratio = sp.simplify((prior_variance_steady / r).subs(q, lam * r))
steady_gain_from_prior = prior_variance_ratio / (prior_variance_ratio + 1)
steady_gain = (-lam + sp.sqrt(lam**2 + 4 * lam)) / 2
# Algebraically equal, free of cancellation for large lambda and finite at lambda -> 0 (used by the library).
steady_gain_stable = 2 / (1 + sp.sqrt(1 + 4 / lam))

assert_identity(sp.radsimp(steady_gain_from_prior - steady_gain), "K_inf = (-lambda + sqrt(lambda^2 + 4 lambda)) / 2")
assert_identity(sp.radsimp(steady_gain_stable - steady_gain), "stable form 2 / (1 + sqrt(1 + 4/lambda))")
# The library's form: every term positive, so no cancellation for any lambda, in float32 or float64.
steady_gain_robust = 2 * sp.sqrt(lam) / (sp.sqrt(lam) + sp.sqrt(lam + 4))
beta_robust = 4 / (sp.sqrt(lam) + sp.sqrt(lam + 4)) ** 2
assert_identity(sp.radsimp(steady_gain_robust - steady_gain), "robust form 2 sqrt(lambda) / (sqrt(lambda) + sqrt(lambda + 4))")
assert_identity(sp.radsimp(beta_robust - (1 - steady_gain)), "1 - K_inf = 4 / (sqrt(lambda) + sqrt(lambda + 4))^2")
# K_inf is the positive root of K^2 + lambda K - lambda = 0.
gain_quadratic = k**2 + lam * k - lam
assert_identity(sp.expand(gain_quadratic.subs(k, steady_gain)), "K^2 + lambda K - lambda = 0")
show_equation(r"K_\infty", steady_gain)

# %% [markdown]
# The EWMA coefficient is $\beta = 1 - K_\infty$. Inverting (substitute $K = 1 - \beta$ in the quadratic)
# gives the noise ratio that a given $\beta$ is optimal for, and the posterior variance is
# $P_\infty = (1 - K_\infty) P^-_\infty = K_\infty r = (1 - \beta) r$.

# %%
beta_of_noise_ratio = 1 - steady_gain
noise_ratio_of_beta = sp.solve(gain_quadratic.subs(k, 1 - beta), lam)[0]
assert_identity(noise_ratio_of_beta - (1 - beta) ** 2 / beta, "lambda = (1 - beta)^2 / beta")

# Round trip lambda -> beta -> lambda is exact; beta -> lambda -> beta holds on 0 < beta < 1.
assert_identity(sp.radsimp(noise_ratio_of_beta.subs(beta, beta_of_noise_ratio) - lam), "lambda(beta(lambda)) = lambda")
s_odds = sp.Symbol("s", positive=True)  # beta = 1 / (1 + s) covers 0 < beta < 1 with s > 0
assert_identity(
    beta_of_noise_ratio.subs(lam, noise_ratio_of_beta).subs(beta, 1 / (1 + s_odds)) - 1 / (1 + s_odds),
    "beta(lambda(beta)) = beta",
    simplifier=simplify_radicals,
)
# In float64 the textbook form loses digits to cancellation when lambda is large (beta small); the stable
# form does not. Tolerances say so.
assert_numerically_equal(
    beta_of_noise_ratio.subs(lam, noise_ratio_of_beta), beta, {beta: uniform(1e-3, 1 - 1e-3)},
    "beta(lambda(beta)) = beta numerically (textbook form)", rtol=1e-9,
)
assert_numerically_equal(
    (1 - steady_gain_stable).subs(lam, noise_ratio_of_beta), beta, {beta: uniform(1e-3, 1 - 1e-3)},
    "beta(lambda(beta)) = beta numerically (stable form)", rtol=1e-13,
)

posterior_variance_steady = sp.simplify((prior_variance_steady * r / (prior_variance_steady + r)))
assert_identity(
    sp.radsimp(posterior_variance_steady.subs(q, lam * r) - steady_gain * r), "posterior variance P_inf = K_inf r"
)
assert_numerically_equal(
    (posterior_variance_steady / r).subs(q, lam * r).subs(lam, noise_ratio_of_beta), 1 - beta,
    {beta: uniform(1e-3, 1 - 1e-3), r: log_uniform(1e-6, 1e6)}, "P_inf / r = 1 - beta", rtol=1e-9,
)
show_equation(r"\beta", beta_of_noise_ratio)
show_equation(r"\lambda", noise_ratio_of_beta)
show_equation(r"P_\infty", r"K_\infty r = (1 - \beta) r")

# %% [markdown]
# **Numeric anchor.** $\lambda = 0.01$ gives $K_\infty = 0.0951249$ (to 7 digits), i.e. $\beta \approx 0.905$:
# Adam's default $\beta_1 = 0.9$ is the steady-state filter of a random walk whose step variance is about
# one percent of the observation noise.

# %%
anchor_gain = sp.N(steady_gain.subs(lam, sp.Rational(1, 100)), 30)
assert abs(anchor_gain - sp.Float("0.0951249")) < 5e-8, anchor_gain
assert round(float(anchor_gain), 7) == 0.0951249
adam_beta1_noise_ratio = noise_ratio_of_beta.subs(beta, sp.Rational(9, 10))
assert adam_beta1_noise_ratio == sp.Rational(1, 90)
show_equation(r"K_\infty(\lambda = 0.01)", sp.N(anchor_gain, 10))

# %% [markdown]
# ## Convergence of the gain from any prior, and how fast
#
# Measure variances in units of $r$. The posterior variance equals the gain times $r$ at every step
# ($P_t = (1-K_t)P^-_t = P^-_t r / (P^-_t + r) = K_t r$), so the normalized posterior variance is the
# gain itself, and the whole recursion is one Moebius map of the gain:
#
# $$k_{t+1} = f(k_t) = \frac{k_t + \lambda}{k_t + \lambda + 1}.$$
#
# A prior variance $P_0 \ge 0$ starts it at $k_0 = P_0 / r$; a diffuse prior ($P_0 \to \infty$) gives
# $k_1 = 1$: the first estimate is the first observation.

# %%
gain_map = (k + lam) / (k + lam + 1)
posterior_from_prior = (P + q) * r / (P + q + r)  # P_{t+1} from P_t
assert_identity(
    (posterior_from_prior / r).subs({P: k * r, q: lam * r}) - gain_map, "normalized posterior variance follows f"
)
assert sp.limit(gain_map.subs(k, P / r).subs(q, lam * r), P, sp.oo) == 1  # diffuse prior: k_1 = 1

# The fixed point of f is K_inf, and f'(K_inf) = beta^2.
assert_identity(sp.radsimp(gain_map.subs(k, steady_gain) - steady_gain), "f(K_inf) = K_inf")
derivative_at_fixed_point = sp.diff(gain_map, k).subs(k, steady_gain)
assert_identity(
    sp.radsimp(derivative_at_fixed_point - (1 - steady_gain) ** 2), "f'(K_inf) = (1 - K_inf)^2 = beta^2"
)

# %% [markdown]
# **Exact error recursion.** Write $e_t = k_t - K_\infty$. Using $K_\infty + \lambda + 1 = 1/\beta$,
#
# $$e_{t+1} = \frac{\beta\, e_t}{k_t + \lambda + 1}, \qquad \frac{1}{e_{t+1}} = \frac{1}{\beta^2 e_t} + \frac{1}{\beta}.$$
#
# The reciprocal error obeys a *linear* recursion, so the gain has a closed form from any prior:
#
# $$\frac{1}{e_t} = u^* + \Big(\frac{1}{e_0} - u^*\Big) \beta^{-2t}, \qquad u^* = -\frac{\beta}{1-\beta^2}.$$
#
# Hence $|e_t| = O(\beta^{2t})$: the gain error contracts by $\beta^2$ per step asymptotically, and by at most
# $\beta/(1 + \lambda) = \beta^2/(1 - \beta + \beta^2) < 1$ at every step from any $k_t \ge 0$.
# Compare Adam's bias correction (D2), whose gain error decays only like $\beta^t$.

# %%
e, e0 = sp.symbols("e e_0")
t = sp.Symbol("t", integer=True, nonnegative=True)
lam_b = noise_ratio_of_beta  # express everything through beta
gain_b = 1 - beta
assert_identity(gain_b + lam_b + 1 - 1 / beta, "K_inf + lambda + 1 = 1/beta")
error_step = gain_map.subs(lam, lam_b).subs(k, gain_b + e) - gain_b
assert_identity(error_step - beta * e / (gain_b + e + lam_b + 1), "e_{t+1} = beta e_t / (k_t + lambda + 1)")
assert_identity(1 / error_step - (1 / (beta**2 * e) + 1 / beta), "1/e_{t+1} = 1/(beta^2 e_t) + 1/beta")

reciprocal_error_fixed_point = -beta / (1 - beta**2)
reciprocal_error = reciprocal_error_fixed_point + (1 / e0 - reciprocal_error_fixed_point) * beta ** (-2 * t)
assert_identity(
    reciprocal_error.subs(t, t + 1) - (reciprocal_error / beta**2 + 1 / beta), "closed form solves the recursion"
)
assert_identity(reciprocal_error.subs(t, 0) - 1 / e0, "closed form starts at 1/e_0")
per_step_bound = beta / (1 + lam_b)
assert_identity(per_step_bound - beta**2 / (1 - beta + beta**2), "beta/(1+lambda) = beta^2/(1-beta+beta^2)")

# Gain after t steps from a prior k_0 (closed form), and from the diffuse prior (k_1 = 1, i.e. e_1 = beta).
k0 = sp.Symbol("k_0", nonnegative=True)
constant_noise_gain_from_prior = gain_b + 1 / reciprocal_error.subs(e0, k0 - gain_b)
constant_noise_gain_diffuse = (1 - beta) * (1 + beta ** (2 * t - 1)) / (1 - beta ** (2 * t))
assert_identity(
    gain_b + 1 / reciprocal_error.subs({e0: beta, t: t - 1}) - constant_noise_gain_diffuse,
    "diffuse-prior gain k_t = (1 - beta)(1 + beta^(2t-1)) / (1 - beta^(2t))",
)
assert sp.simplify(constant_noise_gain_diffuse.subs(t, 1)) == 1
show_equation(r"k_t\ (\text{diffuse prior})", constant_noise_gain_diffuse)

# %% [markdown]
# Numeric check: iterate the recursion from several priors (including $k_0 = 0$, a known initial value, and
# the diffuse prior) and compare with the closed form, to float64 precision.

# %%
rng = np.random.default_rng(1)
constant_gain_from_prior_fn = sp.lambdify((beta, k0, t), constant_noise_gain_from_prior, "numpy")
constant_gain_diffuse_fn = sp.lambdify((beta, t), constant_noise_gain_diffuse, "numpy")
worst = 0.0
for b in [0.5, 0.9, 0.99, 0.999]:
    lam_value = (1 - b) ** 2 / b
    for prior in [0.0, 0.3, 1.0, 5.0, float(rng.uniform(0, 10))]:
        gain = prior
        for step in range(1, 60):
            gain = (gain + lam_value) / (gain + lam_value + 1)
            closed = constant_gain_from_prior_fn(b, prior, step)
            worst = max(worst, abs(closed - gain) / gain)
    gain = 1.0  # diffuse prior: k_1 = 1
    for step in range(1, 60):
        if step > 1:
            gain = (gain + lam_value) / (gain + lam_value + 1)
        worst = max(worst, abs(constant_gain_diffuse_fn(b, step) - gain) / gain)
    # Convergence: within 1e-6 of 1 - beta after enough steps for beta^(2t) to be small.
    assert abs(constant_gain_diffuse_fn(b, 20 * int(1 / (1 - b))) - (1 - b)) < 1e-6
assert worst < 1e-10, worst
print(f"closed form vs iterated recursion: max relative error {worst:.1e}")

# %% [markdown]
# ## Exports
# Oracles (float64 numpy functions built with `sympy.lambdify`) for the test-suite, and LaTeX for the paper.

# %%
steady_state_gain_oracle = sp.lambdify(lam, steady_gain, "numpy")
noise_ratio_to_beta_oracle = sp.lambdify(lam, beta_of_noise_ratio, "numpy")
beta_to_noise_ratio_oracle = sp.lambdify(beta, noise_ratio_of_beta, "numpy")
prior_variance_steady_oracle = sp.lambdify((q, r), prior_variance_steady, "numpy")
constant_noise_gain_oracle = constant_gain_from_prior_fn  # (beta, k_0, t) -> k_t
constant_noise_gain_diffuse_oracle = constant_gain_diffuse_fn  # (beta, t) -> k_t, k_1 = 1
gain_map_oracle = sp.lambdify((k, lam), gain_map, "numpy")  # one Riccati step of the normalized gain

P_minus = sp.Symbol(r"P^{-}_{\infty}")
export_latex("LocalLevelModel", r"x_t = x_{t-1} + w_t,\ w_t \sim \mathcal{N}(0, q),\quad g_t = x_t + v_t,\ v_t \sim \mathcal{N}(0, r)")
export_latex("RiccatiRecursion", r"P^-_{t+1} = \frac{P^-_t\, r}{P^-_t + r} + q")
export_latex("SteadyPriorVariance", prior_variance_steady)
export_latex("RejectedRoot", rejected_root)
export_latex("SteadyGain", steady_gain)
export_latex("SteadyGainStable", steady_gain_stable)
export_latex("SteadyGainRobust", steady_gain_robust)
export_latex("BetaOfNoiseRatioRobust", beta_robust)
export_latex("BetaOfNoiseRatio", beta_of_noise_ratio)
export_latex("NoiseRatioOfBeta", noise_ratio_of_beta)
export_latex("SteadyPosteriorVariance", r"K_\infty r = (1 - \beta)\, r")
export_latex("GainMap", gain_map)
export_latex("GainErrorRecursion", r"\frac{1}{e_{t+1}} = \frac{1}{\beta^2 e_t} + \frac{1}{\beta}")
export_latex("GainErrorClosedForm", sp.Eq(sp.Symbol("1/e_t"), reciprocal_error))
export_latex("ConstantNoiseGainDiffuse", constant_noise_gain_diffuse)
export_latex("AnchorGain", f"{float(anchor_gain):.7f}")
