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
# # D2. Adam's bias-corrected moments are Kalman filters
#
# Adam keeps $m_t = \beta m_{t-1} + (1-\beta) g_t$ with $m_0 = 0$ and uses the bias-corrected
# $\hat m_t = m_t / (1 - \beta^t)$. Written as a correction of the previous estimate,
# $\hat m_t = \hat m_{t-1} + k_t (g_t - \hat m_{t-1})$, its gain is
#
# $$k_t = \frac{1 - \beta}{1 - \beta^t}.$$
#
# We show this is *exactly* the gain of the local-level Kalman filter of D1 started from a diffuse prior
# ($k_1 = 1$) with the time-varying process noise
#
# $$\frac{q_t}{r} = \frac{(1-\beta)^2}{\beta\,(1 - \beta^{t-1})}, \quad t \ge 2,$$
#
# which decreases to the steady-state $\lambda = (1-\beta)^2/\beta$ of D1. Consequences: $\hat m_t$ is a
# posterior mean; its posterior variance $P_t = k_t r$ is data-independent; $q = 0$ gives the running mean.
# The same holds for the second moment.

# %%
import numpy as np
import sympy as sp
import sympy.stats as stats

from derivations.common import (
    assert_identity,
    assert_numerically_equal,
    export_latex,
    integers,
    show_equation,
    uniform,
)
from derivations.d1_steady_state import gain_map, k, lam, noise_ratio_of_beta

beta = sp.Symbol("beta", positive=True)
t = sp.Symbol("t", integer=True, positive=True)
g, m_prev, r = sp.symbols("g_t m_{t-1} r", real=True)

adam_gain = (1 - beta) / (1 - beta**t)
show_equation("k_t", adam_gain)

# %% [markdown]
# ## The bias-corrected EWMA is a filter update with gain $k_t$
# Induction step: if $\hat m_{t-1} = m_{t-1}/(1-\beta^{t-1})$, then
# $\hat m_{t-1} + k_t (g_t - \hat m_{t-1}) = (\beta m_{t-1} + (1-\beta) g_t)/(1-\beta^t) = m_t / (1 - \beta^t)$.
# At $t = 1$ the gain is 1: the first estimate is the first gradient, as a diffuse prior gives.

# %%
raw_prev = sp.Symbol("m^{raw}_{t-1}", real=True)  # Adam's uncorrected EWMA
corrected_prev = raw_prev / (1 - beta ** (t - 1))
filter_update = corrected_prev + adam_gain * (g - corrected_prev)
adam_update = (beta * raw_prev + (1 - beta) * g) / (1 - beta**t)
assert_identity(filter_update - adam_update, "bias-corrected EWMA = filter update with gain k_t")
assert sp.simplify(adam_gain.subs(t, 1)) == 1

# Numerically on random gradient sequences: the filter recursion reproduces Adam's corrected moment.
rng = np.random.default_rng(2)
worst = 0.0
for b in [0.5, 0.9, 0.99, 0.999]:
    grads = rng.normal(size=(500, 8)) * rng.uniform(0.1, 10.0, size=8)
    raw = np.zeros(8)
    posterior_mean = np.zeros(8)  # any value: the first gain is 1
    for step, gt in enumerate(grads, start=1):
        raw = b * raw + (1 - b) * gt
        posterior_mean = posterior_mean + (1 - b) / (1 - b**step) * (gt - posterior_mean)
        worst = max(worst, float(np.max(np.abs(posterior_mean - raw / (1 - b**step)) / (np.abs(raw / (1 - b**step)) + 1e-300))))
assert worst < 1e-9, worst
print(f"filter recursion vs Adam's bias-corrected moment: max relative error {worst:.1e}")

# %% [markdown]
# ## The process noise that produces Adam's gain
# D1's normalized recursion $k_t = f(k_{t-1}, \lambda_t) = (k_{t-1} + \lambda_t)/(k_{t-1} + \lambda_t + 1)$
# solved for the noise ratio gives $\lambda_t = k_t/(1-k_t) - k_{t-1}$. With Adam's gain:

# %%
k_prev, k_next, lam_t = sp.symbols("k_{t-1} k_t lambda_t", positive=True)
solved = sp.solve(sp.Eq(gain_map.subs({k: k_prev, lam: lam_t}), k_next), lam_t)
assert len(solved) == 1
assert_identity(solved[0] - (k_next / (1 - k_next) - k_prev), "lambda_t = k_t / (1 - k_t) - k_{t-1}")

adam_process_noise = (1 - beta) ** 2 / (beta * (1 - beta ** (t - 1)))
derived = (k_next / (1 - k_next) - k_prev).subs({k_next: adam_gain, k_prev: adam_gain.subs(t, t - 1)})
assert_identity(derived - adam_process_noise, "q_t / r = (1 - beta)^2 / (beta (1 - beta^(t-1)))")
# And the filter with that noise reproduces Adam's gain exactly (the forward direction).
assert_identity(
    gain_map.subs({k: adam_gain.subs(t, t - 1), lam: adam_process_noise}) - adam_gain,
    "f(k_{t-1}, q_t / r) = k_t",
)
show_equation(r"q_t / r", adam_process_noise)

# %% [markdown]
# The schedule starts high ($q_2/r = (1-\beta)/\beta$), decreases monotonically, and tends to D1's
# steady-state ratio: Adam is the Kalman filter that assumes the gradient drifts fast at first.
# Consequently its gain approaches $1-\beta$ only like $\beta^t$, slower than the constant-noise filter's
# $\beta^{2t}$ (D1).

# %%
assert_identity(adam_process_noise.subs(t, 2) - (1 - beta) / beta, "q_2 / r = (1 - beta) / beta")
x = sp.Symbol("x", positive=True)  # x = beta^(t-1) in (0, 1), decreasing in t
noise_in_x = (1 - beta) ** 2 / (beta * (1 - x))
# d(noise)/dx = (1 - beta)^2 / (beta (1 - x)^2) > 0: larger beta^(t-1) (earlier t) -> more process noise.
assert_identity(sp.diff(noise_in_x, x) - (1 - beta) ** 2 / (beta * (1 - x) ** 2), "derivative of q_t/r in beta^(t-1)")
b_num = sp.Rational(9, 10)
assert sp.limit(adam_process_noise.subs(beta, b_num), t, sp.oo) == noise_ratio_of_beta.subs(beta, b_num)
assert_numerically_equal(
    adam_process_noise.subs(t, 10_000), noise_ratio_of_beta, {beta: uniform(0.05, 0.99)},
    "q_t/r -> lambda(beta)", rtol=1e-12,
)
gain_error = sp.simplify(adam_gain - (1 - beta))
assert_identity(gain_error - (1 - beta) * beta**t / (1 - beta**t), "k_t - (1 - beta) = (1 - beta) beta^t / (1 - beta^t)")

# %% [markdown]
# ## Posterior variance, memory, and the running mean
# Every posterior variance is the gain times $r$ (D1): $P_t = k_t r$. The gain sequence depends only on
# $\beta$ and $t$, never on the gradients, so with a noise ratio shared by a parameter group the normalized
# covariance $P_t / r$ is **one scalar per group**. The per-coordinate scale $r_i$ is estimated from moments
# the optimizer already keeps (D3). *Is the memory the same as an EWMA?* Yes: the Kalman reading of Adam
# needs no state beyond Adam's own $m$ and $v$.
#
# With no process noise ($q = 0$) from a diffuse prior, the gain is $1/t$: the running mean.

# %%
posterior_variance = adam_gain * r
running_mean_gain = 1 / t
assert_identity(gain_map.subs({k: running_mean_gain, lam: 0}) - running_mean_gain.subs(t, t + 1), "q = 0: k_{t+1} = 1/(t+1)")
assert running_mean_gain.subs(t, 1) == 1
# Adam's gain always exceeds the running mean's: it forgets.
assert_numerically_equal(
    sp.Min(adam_gain - running_mean_gain, 0), sp.Integer(0),
    {beta: uniform(0.01, 0.999), t: integers(1, 5000)}, "k_t >= 1/t", atol=1e-15,
)

# %% [markdown]
# ## The second moment
# Adam's $\hat v_t$ is the same filter applied to the observations $g_t^2$ with coefficient $\beta_2$:
# the state is the drifting second moment $s_t = \mathbb E[g_t^2]$, the gain is
# $(1-\beta_2)/(1-\beta_2^t)$, the process noise $q^{(2)}_t / r^{(2)}$ follows the same schedule with $\beta_2$, and
# the observation noise is $r^{(2)} = \operatorname{Var}(g_t^2)$. For Gaussian $g_t \sim \mathcal N(\mu, \sigma^2)$:
# $r^{(2)} = 2\sigma^4 + 4\mu^2\sigma^2$, and the posterior variance of $\hat v_t$ is $k^{(2)}_t r^{(2)}$.

# %%
mu = sp.Symbol("mu", real=True)
sigma = sp.Symbol("sigma", positive=True)
gradient = stats.Normal("g", mu, sigma)
second_moment_noise = sp.simplify(stats.variance(gradient**2))
assert_identity(second_moment_noise - (2 * sigma**4 + 4 * mu**2 * sigma**2), "Var(g^2) = 2 sigma^4 + 4 mu^2 sigma^2")
raw_v_prev = sp.Symbol("v^{raw}_{t-1}", positive=True)
beta2 = sp.Symbol("beta_2", positive=True)
corrected_v_prev = raw_v_prev / (1 - beta2 ** (t - 1))
assert_identity(
    corrected_v_prev + adam_gain.subs(beta, beta2) * (g**2 - corrected_v_prev)
    - (beta2 * raw_v_prev + (1 - beta2) * g**2) / (1 - beta2**t),
    "bias-corrected second moment = filter update with gain (1 - beta2)/(1 - beta2^t)",
)
# Monte-Carlo check of Var(g^2): 3% is about 5 standard errors of a sample variance of g^2 at n = 4e5.
rng = np.random.default_rng(3)
for mu_v, sigma_v in [(0.0, 1.0), (1.5, 0.5), (-2.0, 3.0)]:
    samples = rng.normal(mu_v, sigma_v, 400_000) ** 2
    expected = 2 * sigma_v**4 + 4 * mu_v**2 * sigma_v**2
    assert abs(samples.var() - expected) / expected < 0.03, (mu_v, sigma_v, samples.var(), expected)

# %% [markdown]
# ## Exports

# %%
adam_gain_oracle = sp.lambdify((beta, t), adam_gain, "numpy")
adam_process_noise_oracle = sp.lambdify((beta, t), adam_process_noise, "numpy")
adam_posterior_variance_oracle = sp.lambdify((beta, t, r), posterior_variance, "numpy")
second_moment_noise_oracle = sp.lambdify((mu, sigma), second_moment_noise, "numpy")

export_latex("AdamGain", adam_gain)
export_latex("AdamProcessNoise", adam_process_noise)
export_latex("AdamPosteriorVariance", posterior_variance)
export_latex("AdamGainError", (1 - beta) * beta**t / (1 - beta**t))
export_latex("SecondMomentNoise", second_moment_noise)
export_latex("RunningMeanGain", running_mean_gain)
