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
# # D8. A transition with a control input: transporting the gradient estimate along the optimizer's steps
#
# D1–D7 model the drift of a gradient coordinate as a random walk. Much of the drift is caused by the optimizer
# itself: after a step $\Delta\theta_{t-1} = \theta_{t-1} - \theta_{t-2}$ the gradient moves by about $h\,\Delta\theta_{t-1}$
# ($h$ the coordinate's curvature). With $g_t$ the gradient evaluated at $\theta_{t-1}$, the model becomes
#
# $$x_t = x_{t-1} + h\,\Delta\theta_{t-1} + w_t,\ w_t \sim \mathcal N(0, q), \qquad g_t = x_t + v_t,\ v_t \sim \mathcal N(0, r),$$
#
# a state-space model with a **known control input** $h\,\Delta\theta_{t-1}$. This notebook shows (1) the input only
# shifts the prediction: gains, D1's steady state and D2's Adam schedule are unchanged; (2) on the noisy quadratic
# model the transported filter has no lag while momentum lags $\beta/(1-\beta)$ steps; (3) how to estimate $h$ online
# per coordinate, and which estimator is unbiased; (4) the relation to implicit gradient transport; (5) the
# baseline that needs no $h$: the local linear trend model (Holt's smoothing). The step size is $\eta$ here.

# %%
import numpy as np
import sympy as sp

from derivations.common import assert_identity, assert_numerically_equal, export_latex, log_uniform, show_equation, uniform
from derivations.d1_steady_state import beta, lam, q, r, steady_gain
from derivations.d2_adam_is_kalman import adam_gain_oracle, adam_process_noise_oracle

h, h_hat, eta = sp.symbols(r"h \hat{h} eta", positive=True)
a = sp.Symbol("a", real=True)  # a constant drift per step
t = sp.Symbol("t", integer=True, positive=True)
k = sp.Symbol("k_t", positive=True)
x_prev, m_prev, u_prev, w_t, v_t, e_prev = sp.symbols(r"x_{t-1} m_{t-1} \Delta\theta_{t-1} w_t v_t e_{t-1}", real=True)

# %% [markdown]
# ## 1. A known input shifts the prediction and nothing else
#
# The filter predicts $m^-_t = m_{t-1} + h\,\Delta\theta_{t-1}$, $P^-_t = P_{t-1} + q$, and updates with
# $k_t = P^-_t/(P^-_t + r)$: $m_t = m^-_t + k_t (g_t - m^-_t)$, $P_t = (1 - k_t) P^-_t$. The prediction error
# $x_t - m^-_t = e_{t-1} + w_t$ ($e_{t-1} = x_{t-1} - m_{t-1}$) does not contain the input, so the error, its variance
# and the Riccati recursion are those of D1 whatever $\Delta\theta$ is, even when $\Delta\theta_{t-1}$ depends on past
# gradients (it is known when $g_t$ arrives). Hence the gains, the steady state $K_\infty(\lambda)$ and D2's
# reading of Adam carry over; the EWMA becomes $m_t = \beta\,(m_{t-1} + h\,\Delta\theta_{t-1}) + (1-\beta)\, g_t$.
# In Adam's raw state $\mathrm{exp\_avg}_t = (1-\beta^t)\, m_t$ (gain $k_t = (1-\beta)/(1-\beta^t)$, D2):
#
# $$\mathrm{exp\_avg}_t = \beta\,\big(\mathrm{exp\_avg}_{t-1} + (1 - \beta^{t-1})\, h\,\Delta\theta_{t-1}\big) + (1-\beta)\, g_t .$$

# %%
x_now = x_prev + h * u_prev + w_t
g_now = x_now + v_t
m_prior = m_prev + h * u_prev
m_post = m_prior + k * (g_now - m_prior)
assert_identity((x_now - m_prior) - ((x_prev - m_prev) + w_t), "x_t - m-_t = e_{t-1} + w_t: no input")
post_error = sp.expand((x_now - m_post).subs(x_prev, m_prev + e_prev))
assert_identity(post_error - ((1 - k) * (e_prev + w_t) - k * v_t), "e_t = (1 - k)(e_{t-1} + w_t) - k v_t")
assert not post_error.has(u_prev) and not post_error.has(h)
assert_identity(m_post.subs(k, 1 - beta) - (beta * (m_prev + h * u_prev) + (1 - beta) * g_now), "EWMA form")

raw_prev, g_sym = sp.symbols(r"\mathrm{exp\_avg}_{t-1} g_t", real=True)
adam_k = (1 - beta) / (1 - beta**t)
corrected_prior = raw_prev / (1 - beta ** (t - 1)) + h * u_prev
adam_raw_update = beta * (raw_prev + (1 - beta ** (t - 1)) * h * u_prev) + (1 - beta) * g_sym
assert_identity((1 - beta**t) * (corrected_prior + adam_k * (g_sym - corrected_prior)) - adam_raw_update, "Adam raw form")
show_equation(r"m_t", sp.latex(beta * (m_prev + h * u_prev) + (1 - beta) * g_sym))
show_equation(r"\mathrm{exp\_avg}_t", adam_raw_update)


# %% [markdown]
# The oracle is the textbook filter. Checks: at the steady gain (prior $P_0 = (1-\beta) r$, $q = \lambda(\beta) r$)
# it is the transported EWMA; with D2's schedule $q_t$ from a diffuse prior it is Adam's transported raw update
# divided by $1 - \beta^t$; and its variances do not depend on the input.

# %%
def transport_filter_oracle(g, dtheta, h, q, r, prior):
    """Kalman filter of x_t = x_{t-1} + h dtheta[t] + w_t, g[t] = x_t + v_t (float64 numpy).

    g, dtheta: shape (T, ...); dtheta[t] is the parameter change between the points of g[t-1] and g[t] (dtheta[0]
    from the prior's point). h, q, r broadcast against g (scalars, per coordinate, or per step, e.g. q[:, None]).
    prior = (m0, P0); P0 = np.inf is diffuse (first gain 1). Returns (posterior means, posterior variances)."""
    g = np.asarray(g, float)
    h, q, r = (np.broadcast_to(np.asarray(v, float), g.shape) for v in (h, q, r))
    mean, var = (np.broadcast_to(np.asarray(v, float), g.shape[1:]) for v in prior)
    means, variances = np.empty_like(g), np.empty_like(g)
    for i in range(g.shape[0]):
        prior_mean, prior_var = mean + h[i] * np.asarray(dtheta[i], float), var + q[i]
        with np.errstate(invalid="ignore"):
            gain = np.where(np.isinf(prior_var), 1.0, prior_var / (prior_var + r[i]))
        mean, var = prior_mean + gain * (g[i] - prior_mean), gain * r[i]  # P = (1 - k) P- = k r
        means[i], variances[i] = mean, var
    return means, variances


rng = np.random.default_rng(80)
n_steps, n_coords, b = 300, 16, 0.9
grads, steps = rng.normal(size=(n_steps, n_coords)), rng.normal(size=(n_steps, n_coords)) * 0.1
curv, noise = rng.uniform(0.1, 3, n_coords), rng.uniform(0.5, 2, n_coords)
means, variances = transport_filter_oracle(grads, steps, curv, (1 - b) ** 2 / b * noise, noise, (0.0, (1 - b) * noise))
ewma = np.zeros(n_coords)
for i in range(n_steps):
    ewma = b * (ewma + curv * steps[i]) + (1 - b) * grads[i]
    assert np.allclose(means[i], ewma, rtol=0, atol=1e-12) and np.allclose(variances[i], (1 - b) * noise, rtol=1e-12)

schedule = np.r_[0.0, adam_process_noise_oracle(b, np.arange(2, n_steps + 1))][:, None] * noise  # q_t = (q_t/r) r
means, variances = transport_filter_oracle(grads, steps, curv, schedule, noise, (0.0, np.inf))
_, variances_no_input = transport_filter_oracle(grads, 0 * steps, curv, schedule, noise, (0.0, np.inf))
exp_avg = np.zeros(n_coords)
for i, step in enumerate(range(1, n_steps + 1)):
    exp_avg = b * (exp_avg + (1 - b ** (step - 1)) * curv * steps[i]) + (1 - b) * grads[i]
    assert np.allclose(means[i], exp_avg / (1 - b**step), rtol=1e-9, atol=1e-12)
    assert np.allclose(variances[i], adam_gain_oracle(b, step) * noise, rtol=1e-9)
assert np.array_equal(variances, variances_no_input)
print("oracle = transported EWMA (steady gain) = Adam's transported raw update / (1 - beta^t) (D2 schedule)")

# %% [markdown]
# ## 2. The noisy quadratic model follows the model exactly; momentum lags, the transported filter does not
#
# In the NQM (Zhang et al. 2019; `experiments/nqm.py`) $g_t = h\,\theta_{t-1} + \sqrt{h/B}\,\varepsilon_t$, so the true
# gradient $x_t = h\,\theta_{t-1}$ obeys $x_t - x_{t-1} = h\,\Delta\theta_{t-1}$ **exactly**: $q = 0$, $r = h/B$.
# With the true $h$ the error recursion above has no forcing term, so the transported filter is unbiased at every
# step, for any gains and any step sequence. The plain EWMA is the transported filter with $\hat h = 0$; with a wrong
# $\hat h$ the mean error obeys $\mathbb E e_t = \beta(\mathbb E e_{t-1} + (h - \hat h)\Delta\theta_{t-1})$. On a constant
# drift $a = h\,\Delta\theta$ per step the plain EWMA settles at
#
# $$\mathbb E[m_t] - x_t = -\frac{\beta a}{1 - \beta} \;\Longleftrightarrow\; \mathbb E[m_t] = x_{t - \beta/(1-\beta)},$$
#
# the gradient $\beta/(1-\beta)$ steps ago (9 steps at $\beta = 0.9$): momentum's lag. Its error variance is that of the
# transported filter (the same recursion minus the forcing): transport removes the lag at no cost in variance.

# %%
mean_error = sp.Symbol("E", real=True)
lag_fixed_point = sp.solve(sp.Eq(mean_error, beta * (mean_error + (h - h_hat) * u_prev)), mean_error)[0]
assert_identity(lag_fixed_point - beta * (h - h_hat) * u_prev / (1 - beta), "steady mean error beta (h - h_hat) u / (1 - beta)")
assert lag_fixed_point.subs(h_hat, h) == 0  # transported: no lag
ewma_lag_bias = -lag_fixed_point.subs(h_hat, 0).subs(u_prev, a / h)  # E[m_t] - x_t of the plain EWMA
assert_identity(ewma_lag_bias + beta * a / (1 - beta), "E[m_t] - x_t = -beta a / (1 - beta)")
x0 = sp.Symbol("x_0", real=True)
lag_steps = beta / (1 - beta)
assert_identity((x0 + a * t + ewma_lag_bias) - (x0 + a * (t - lag_steps)), "E[m_t] = x_{t - beta/(1-beta)}")
error_var = sp.Symbol("V", positive=True)  # q = 0: e_t = beta e_{t-1} - (1 - beta) v_t (+ forcing), with or without transport
ewma_error_variance = sp.solve(sp.Eq(error_var, beta**2 * error_var + (1 - beta) ** 2 * r), error_var)[0]
assert_identity(ewma_error_variance - (1 - beta) * r / (1 + beta), "steady error variance (1 - beta) r / (1 + beta)")
show_equation(r"\mathbb E[m_t] - x_t", ewma_lag_bias)


# %% [markdown]
# **Monte-Carlo (NQM, 1-D).** $h = 0.5$, $B = 8$ ($r = 1/16$), a fixed step sequence $\Delta\theta = -0.02$ (drift
# $a = -0.01$), $\beta = 0.9$, $N = 10^5$ independent replicas, errors $m_T - x_T$ at $T = 400$ (all transients below
# $10^{-8}$). Filters: plain EWMA, transported EWMA, the Kalman filter of the exact model ($q = 0$, diffuse prior:
# gain $1/t$, variance $r/T$), and Holt's smoothing of section 5. The errors are Gaussian, so the standard error of the
# mean is $\sigma/\sqrt N$ and that of a variance $\sigma^2\sqrt{2/(N-1)}$; tolerance 5 standard errors.

# %%
def simulate_trend(filters, curvature=0.5, batch=8, step=-0.02, n_replicas=100_000, n_steps=400, seed=81):
    """Run every filter (name -> (init(g_1), update(state, g_t, dtheta_{t-1}, t)) -> estimate) on one NQM trajectory."""
    rng = np.random.default_rng(seed)
    theta, states = 1.0, {}
    for t_step in range(1, n_steps + 1):
        g_t = curvature * theta + np.sqrt(curvature / batch) * rng.normal(size=n_replicas)
        for name, (init, update) in filters.items():
            states[name] = init(g_t) if t_step == 1 else update(states[name], g_t, step, t_step)
        theta = theta + step
    true_gradient = curvature * (theta - step)
    return {name: state[0] if np.ndim(state) == 2 else state for name, state in states.items()}, true_gradient  # Holt: level


h_nqm, r_nqm, b_nqm, step_nqm = 0.5, 0.5 / 8, 0.9, -0.02
trend_filters = {
    "EWMA": (lambda g: g, lambda m, g, u, _: b_nqm * m + (1 - b_nqm) * g),
    "transported EWMA": (lambda g: g, lambda m, g, u, _: b_nqm * (m + h_nqm * u) + (1 - b_nqm) * g),
    "Kalman (q = 0)": (lambda g: g, lambda m, g, u, t_step: m + h_nqm * u + (g - m - h_nqm * u) / t_step),
}
estimates, truth = simulate_trend(trend_filters)
drift = h_nqm * step_nqm
expected = {  # name -> (mean error, error variance)
    "EWMA": (float(ewma_lag_bias.subs({beta: b_nqm, a: drift})), float(ewma_error_variance.subs({beta: b_nqm, r: r_nqm}))),
    "transported EWMA": (0.0, float(ewma_error_variance.subs({beta: b_nqm, r: r_nqm}))),
    "Kalman (q = 0)": (0.0, r_nqm / 400),
}


def check_errors(estimates, truth, expected):
    for name, (bias, variance) in expected.items():
        err = estimates[name] - truth
        n = err.size
        assert abs(err.mean() - bias) < 5 * np.sqrt(variance / n), (name, err.mean(), bias)
        assert abs(err.var(ddof=1) - variance) < 5 * variance * np.sqrt(2 / (n - 1)), (name, err.var(ddof=1), variance)
        print(f"{name:18s} mean error {err.mean():+.5f} (theory {bias:+.5f})  variance {err.var(ddof=1):.3e} (theory {variance:.3e})")


check_errors(estimates, truth, expected)

# %% [markdown]
# ## 3. Estimating $h$ online, per coordinate
#
# Three regressions on the steps, with $d_t = g_t - g_{t-1} = h\,\Delta\theta_{t-1} + w_t + v_t - v_{t-1}$:
#
# * **(a) secant** $\hat h = \mathbb E[d_t\Delta\theta_{t-1}]/\mathbb E[\Delta\theta_{t-1}^2]$. Biased: $\Delta\theta_{t-1}$ was
#   computed from $g_{t-1}$, which contains $v_{t-1}$, and $d_t$ contains $-v_{t-1}$. For $\Delta\theta_{t-1} = -\eta\, m_{t-1}$
#   (momentum with gain $k_{t-1}$), $\mathbb E[d_t\Delta\theta_{t-1}] = h\,\mathbb E[\Delta\theta_{t-1}^2] + \eta\, k_{t-1} r$.
# * **(b) innovation** $\nu_t = g_t - m_{t-1} = e_{t-1} + h\,\Delta\theta_{t-1} + w_t + v_t$: $w_t, v_t$ are independent of the
#   step, so $\mathbb E[\nu_t\Delta\theta_{t-1}] = h\,\mathbb E[\Delta\theta_{t-1}^2] + \mathbb E[e_{t-1}\Delta\theta_{t-1}]$. For the
#   *optimal* filter $e_{t-1}$ is orthogonal to every function of $g_{1..t-1}$ (orthogonality principle), so the
#   estimator is unbiased. **It is biased when the gain is not the optimal one** for $(q, r)$, e.g. Adam's fixed
#   $\beta$ on the NQM, where $q = 0$.
# * **(c) instrumental variable** $\hat h = \mathbb E[d_t\,\Delta\theta_{t-2}]/\mathbb E[\Delta\theta_{t-1}\Delta\theta_{t-2}]$:
#   $\Delta\theta_{t-2}$ depends on $g_{1..t-2}$ only, so it is independent of $w_t, v_t, v_{t-1}$: unbiased for **any**
#   gain, transport and step rule (Adam's nonlinear one included), provided $\mathbb E[\Delta\theta_{t-1}\Delta\theta_{t-2}] \ne 0$.
# * **(c′) the step's predictable part as instrument** (the library's choice): for $\Delta\theta_{t-1} = -a_{t-1} m_{t-1}$,
#   $z_{t-1} = \Delta\theta_{t-1} + a_{t-1} k_{t-1} g_{t-1} = -a_{t-1}(1-k_{t-1})\, m^-_{t-1}$ was fixed before $g_{t-1}$ arrived;
#   $\hat h = \mathbb E[d_t z_{t-1}]/\mathbb E[\Delta\theta_{t-1} z_{t-1}]$ is unbiased when $a_{t-1}$ does not depend on $v_{t-1}$
#   (exact for momentum; for Adam $a_{t-1}$ sees $g_{t-1}^2$ through $v$ with weight $1-\beta_2$). With a constant step
#   size $a = \eta$ and gain, $z_{t-1} = (1-k)(1-\eta\hat h)\,\Delta\theta_{t-2}$: the same estimator as (c); they differ
#   only through a varying $a_t$, $k_t$.
#
# **A stationary example, exactly.** Momentum $\Delta\theta_{t-1} = -\eta\, m_{t-1}$ from the transported filter
# (constant gain $K$, transport $\hat h$) on $x_t = x_{t-1} + h\Delta\theta_{t-1} + w_t$: the pair $(x_t, e_t)$ is a stationary
# VAR(1); its covariance $\Sigma$ solves a Lyapunov equation. Every quantity is a linear form in
# $(x_{t-2}, e_{t-2}, w_{t-1}, v_{t-1}, w_t, v_t)$ with covariance $\operatorname{diag}(\Sigma, q, r, q, r)$.

# %%
K = sp.Symbol("K", positive=True)
X, C, S = sp.symbols("X C S", real=True)  # Cov of (x, e): [[X, C], [C, S]]


def forms(transport):
    """Linear forms (row vectors over x_{t-2}, e_{t-2}, w_{t-1}, v_{t-1}, w_t, v_t) of the quantities of the example."""
    basis = sp.eye(6)
    x2, e2, w1, v1, w0, v0 = (basis.row(i) for i in range(6))
    u2 = -eta * (x2 - e2)  # Delta theta_{t-2} = -eta m_{t-2}
    x1 = x2 + h * u2 + w1
    m1 = (x2 - e2) + transport * u2 + K * (x1 + v1 - (x2 - e2) - transport * u2)  # the filter's update
    e1 = x1 - m1
    assert_identity((e1 - ((1 - K) * (e2 + (h - transport) * u2 + w1) - K * v1)).norm(), "filter error recursion")
    u1 = -eta * m1
    x0 = x1 + h * u1 + w0
    z1 = u1 + eta * K * (x1 + v1)  # the step minus its response to g_{t-1}
    assert_identity((z1 + eta * (1 - K) * ((x2 - e2) + transport * u2)).norm(), "z_{t-1} = -eta (1 - k) m-_{t-1}")
    return dict(x2=x2, e2=e2, x1=x1, e1=e1, m1=m1, u1=u1, u2=u2, z1=z1, d=(x0 + v0) - (x1 + v1), nu=(x0 + v0) - m1)


def expect(f, g, sigma):
    return sp.expand((f * sp.diag(sigma, q, r, q, r) * g.T)[0, 0])


generic = sp.Matrix([[X, C], [C, S]])  # (a), (b)'s split and (c) hold for any covariance of the past
f = forms(h_hat)
assert_identity(expect(f["d"], f["u1"], generic) - h * expect(f["u1"], f["u1"], generic) - eta * K * r, "(a) secant bias eta K r")
assert_identity(expect(f["d"], f["u2"], generic) - h * expect(f["u1"], f["u2"], generic), "(c) IV is unbiased")
assert_identity(expect(f["d"], f["z1"], generic) - h * expect(f["u1"], f["z1"], generic), "(c') IV is unbiased")
assert_identity((f["z1"] - (1 - K) * (1 - eta * h_hat) * f["u2"]).norm(), "(c') = (c) at constant eta, K")
assert_identity(expect(f["nu"], f["u1"], generic) - h * expect(f["u1"], f["u1"], generic) + eta * expect(f["e1"], f["m1"], generic),
                "(b) E[nu u] = h E[u^2] + E[e u]")

lyapunov = sp.Matrix([expect(f[i], f[j], generic) - generic[p, s] for (i, j, p, s) in [("x1", "x1", 0, 0), ("x1", "e1", 0, 1), ("e1", "e1", 1, 1)]])
solution = sp.solve(lyapunov.subs(h_hat, h), [X, C, S], dict=True)[0]
sigma = generic.subs(solution).applyfunc(sp.factor)  # stationary Cov of (x, e) with the true transport
error_state_covariance = sp.factor(expect(f["e1"], f["m1"], sigma).subs(h_hat, h))  # E[e_{t-1} m_{t-1}]
assert_identity(error_state_covariance + (K**2 * r - (1 - K) * q) / ((2 - K) * (K + eta * h * (1 - K))), "E[e m]")
assert_identity(error_state_covariance.subs(q, K**2 * r / (1 - K)), "E[e m] = 0 at K^2 r = (1 - K) q")
assert_identity(sp.radsimp((K**2 * r / (1 - K) - lam * r).subs(K, steady_gain)), "... which is D1's steady gain")
step_variance = sp.factor(expect(f["u1"], f["u1"], sigma).subs(h_hat, h))
innovation_bias = -eta * error_state_covariance / step_variance  # E[nu u]/E[u^2] - h
secant_bias = eta * K * r / step_variance
show_equation(r"\mathbb E[e_{t-1} m_{t-1}]", error_state_covariance)

# %% [markdown]
# **Self-consistency of (b).** If the filter transports with its own estimate $\hat h$, (b) returns
# $h + \mathbb E[e_{t-1}\Delta\theta_{t-1}]/\mathbb E[\Delta\theta^2_{t-1}]$ computed under $\hat h$. At the optimal gain its slope in
# $\hat h$ at $\hat h = h$ is $S = -\rho/(1-\rho)$, $\rho = (1-K)(1-\eta h)$ the closed loop's pole ($0 < \eta h < 2$). For statistics
# averaged slowly (EWMA $\beta_s$, quasi-static), $\hat h - h$ is multiplied by $\beta_s + (1-\beta_s) S$ per step, which contracts
# iff $1 - \beta_s < 2(1-\rho)$: the fixed point $\hat h = h$ is stable, because $S < 0$.

# %%
# Implicit differentiation of the Lyapunov equation at h_hat = h gives dSigma/dh_hat; then the quotient rule.
at_h = {h_hat: h, X: sigma[0, 0], C: sigma[0, 1], S: sigma[1, 1]}
dsigma = -lyapunov.jacobian([X, C, S]).subs(at_h).LUsolve(lyapunov.diff(h_hat).subs(at_h))


def derivative(expr):
    return sp.diff(expr, h_hat).subs(at_h) + sum(sp.diff(expr, s).subs(at_h) * ds for s, ds in zip([X, C, S], dsigma))


num, den = expect(f["e1"], f["m1"], generic), expect(f["u1"], f["u1"], generic)
slope = -eta * (derivative(num) * den.subs(at_h) - num.subs(at_h) * derivative(den)) / den.subs(at_h) ** 2
rho = (1 - K) * (1 - eta * h)
c_stable = sp.Symbol("c", positive=True)  # c = eta h in (0, 2): the stationary domain
assert_numerically_equal(
    slope.subs(q, K**2 * r / (1 - K)).subs(eta, c_stable / h), (-rho / (1 - rho)).subs(eta, c_stable / h),
    {h: log_uniform(1e-2, 1e2), c_stable: uniform(0.01, 1.99), K: uniform(0.01, 0.99), r: log_uniform(1e-3, 1e3)},
    "d h_new / d h_hat = -rho / (1 - rho) at the optimal gain", rtol=1e-8,
)

# %% [markdown]
# **Monte-Carlo.** $h = 1$, $\eta = 0.1$, $K = 0.1$ ($\beta = 0.9$), $r = 1$; $q = \lambda(0.9)\, r = 1/90$ (gain optimal) and
# $q = 0$ (the NQM: gain not optimal). $N = 16\,000$ coordinates, $T = 1500$ steps after a burn-in of 200. Each coordinate's
# time averages are one independent draw, so the ratio's standard error follows by the delta method across coordinates;
# tolerance 5 standard errors around the exact values above. A last run transports with the online estimate (b)
# (statistics pooled over coordinates, $\beta_s = 0.999$) started 30% too high.

# %%
def run_momentum(q_value, n_coords=16_000, n_steps=1500, burn=200, online_start=None, seed=82, h_v=1.0, eta_v=0.1, K_v=0.1):
    rng = np.random.default_rng(seed)
    x, m, u1, u2, g_prev = (np.zeros(n_coords) for _ in range(5))
    sums = {key: np.zeros(n_coords) for key in ("du", "uu", "nu", "dz", "uz")}
    transport, num, den = (h_v if online_start is None else online_start), 0.0, 0.0
    for step in range(burn + n_steps):
        x = x + h_v * u1 + np.sqrt(q_value) * rng.normal(size=n_coords)
        g = x + rng.normal(size=n_coords)
        d, nu = g - g_prev, g - m
        if step >= burn:
            for key, value in (("du", d * u1), ("uu", u1 * u1), ("nu", nu * u1), ("dz", d * u2), ("uz", u1 * u2)):
                sums[key] += value / n_steps
        if online_start is not None and step >= 2:
            num, den = 0.999 * num + 0.001 * np.mean(nu * u1), 0.999 * den + 0.001 * np.mean(u1 * u1)
            transport = num / den if step > 500 else online_start
        prior = m + transport * u1
        m = prior + K_v * (g - prior)
        g_prev, u2, u1 = g, u1, -eta_v * m
    return sums, transport


def ratio(sums, num, den):
    n, dd = sums[num], sums[den]
    value = n.mean() / dd.mean()
    return value, np.sqrt(np.var(n - value * dd, ddof=1) / n.size) / dd.mean()


example = {h: 1, eta: sp.Rational(1, 10), K: sp.Rational(1, 10), r: 1}
for q_value in (sp.Rational(1, 90), sp.Integer(0)):
    sums, _ = run_momentum(float(q_value))
    at = {**example, q: q_value}
    theory = {"(a) secant": 1 + float(secant_bias.subs(at)), "(b) innovation": 1 + float(innovation_bias.subs(at)), "(c) IV": 1.0}
    assert abs(np.mean(sums["uu"]) - float(step_variance.subs(at))) < 0.02 * float(step_variance.subs(at))
    for name, (num, den) in zip(theory, [("du", "uu"), ("nu", "uu"), ("dz", "uz")]):
        value, se = ratio(sums, num, den)
        assert abs(value - theory[name]) < 5 * se, (q_value, name, value, theory[name], se)
        spread = np.std(sums[num] / sums[den])
        print(f"q = {float(q_value):.4f} {name:15s} h_hat = {value:7.3f} +- {se:.3f} (exact {theory[name]:7.3f}); "
              f"per-coordinate spread {spread:.2f}")
_, online = run_momentum(1 / 90, n_coords=5_000, n_steps=2500, burn=0, online_start=1.3)
assert abs(online - 1) < 0.03, online
print(f"online (b), optimal gain, started at 1.3: h_hat = {online:.4f} after 2500 steps")

# %% [markdown]
# At $q = 0$, (b) is off by a factor of about ten: near the optimum the steps are tiny ($\mathbb E[\Delta\theta^2] \approx
# 3\cdot 10^{-4}$) and the lag-induced correlation dominates. (c)/(c′) are the estimators to use, but one coordinate's
# estimate from 1500 steps near the optimum spreads by 0.6–1.2 $h$ (printed above): it needs shrinkage or pooling.
#
# **Memory.** The step $\Delta\theta_{t-1}$ need not be stored: at the start of step $t$ it is recomputed from Adam's state
# $(m_{t-1}, v_{t-1})$, the learning rate $\mathrm{lr}_{t-1}$ and $\theta_{t-1}$ (the same arithmetic as the update, up to
# rounding of $\theta$). (b) keeps two EWMAs (numerator, denominator): $m, v$ + 2 tensors = 16 B per parameter (+4 B for a
# calibrated-variance statistic, D7: 20 B). (c) also needs $\Delta\theta_{t-2}$, which cannot be recomputed once $m, v$ moved
# on: 3 extra tensors = 20 B (24 B calibrated); (c′) likewise keeps one tensor ($g_{t-1}$ or $z_{t-1}$) beside its two
# EWMAs. (c) does not need $g_{t-1}$: the $-g_{t-1}\Delta\theta_{t-2}$ part of
# $d_t\,\Delta\theta_{t-2}$ is known one step early, so the numerator is carried as
# $\tilde n_t = \beta_s \tilde n_{t-1} + (1-\beta_s)\, g_t(\Delta\theta_{t-2} - \Delta\theta_{t-1}/\beta_s)$, with
# $n_t = \beta_s \tilde n_{t-1} + (1-\beta_s)\, g_t \Delta\theta_{t-2}$ the EWMA of $d_t\Delta\theta_{t-2}$ (checked below).

# %%
rng = np.random.default_rng(83)
grads, steps, b_s = rng.normal(size=200), rng.normal(size=200), 0.99
direct, folded = 0.0, -(1 - b_s) / b_s * grads[1] * steps[0]  # the -g_1 dtheta_0 part, folded at step 1
for i in range(2, 200):
    direct = b_s * direct + (1 - b_s) * (grads[i] - grads[i - 1]) * steps[i - 2]
    assert abs(b_s * folded + (1 - b_s) * grads[i] * steps[i - 2] - direct) < 1e-12
    folded = b_s * folded + (1 - b_s) * grads[i] * (steps[i - 2] - steps[i - 1] / b_s)
state_bytes = {"innovation": 4 * (2 + 2), "instrumental": 4 * (2 + 3), "holt": 4 * (2 + 1)}  # fp32: m, v + extras
calibrated_bytes = {name: value + 4 for name, value in state_bytes.items() if name != "holt"}  # + D7's statistic
assert calibrated_bytes == {"innovation": 20, "instrumental": 24}

# %% [markdown]
# ## 4. Implicit gradient transport (Arnold et al., NeurIPS 2019)
#
# IGT averages gradients evaluated at **extrapolated points**: $v_t = \gamma v_{t-1} + (1-\gamma)\, g(\theta_t + \tfrac{\gamma}{1-\gamma}(\theta_t - \theta_{t-1}))$
# (anytime version $\gamma_t = t/(t+1)$: extrapolation $t$). For a quadratic whose per-example Hessians all equal $H$,
# $g(\theta + s) = g(\theta) + Hs$, so IGT is *exactly* the transported EWMA $\gamma(v_{t-1} + H\Delta\theta) + (1-\gamma)\, g(\theta_t)$,
# and if $v_{t-1}$ is the true gradient at $\theta_{t-1}$, $v_t$ is the true gradient at $\theta_t$. The extrapolation distance
# $\gamma/(1-\gamma)$ is the EWMA's lag: IGT samples the gradient as far ahead as momentum's average lags behind.
# IGT needs no curvature estimate and handles a full $H$, but evaluates the gradient away from the iterate and relies on
# identical Hessians; D8 evaluates at the iterate and transports explicitly with a diagonal, estimated $h$ (exact for
# diagonal quadratics; otherwise $\hat h_i$ absorbs the part of $(H\Delta\theta)_i$ correlated with $\Delta\theta_i$).

# %%
gamma = sp.Symbol("gamma", positive=True)
theta_now, theta_prev, v_prev, noise_term, offset = sp.symbols(r"\theta_t \theta_{t-1} v_{t-1} \varepsilon \beta_0", real=True)


def grad(point):
    """A quadratic's gradient; noise_term below is the sampling noise at the evaluated point."""
    return h * point + offset


igt = gamma * v_prev + (1 - gamma) * (grad(theta_now + gamma / (1 - gamma) * (theta_now - theta_prev)) + noise_term)
transported = gamma * (v_prev + h * (theta_now - theta_prev)) + (1 - gamma) * (grad(theta_now) + noise_term)
assert_identity(igt - transported, "IGT = transported EWMA on a quadratic")
assert_identity(igt.subs({v_prev: grad(theta_prev), noise_term: 0}) - grad(theta_now), "IGT transports exactly")
assert_identity(gamma / (1 - gamma) - lag_steps.subs(beta, gamma), "extrapolation distance = momentum's lag")

# %% [markdown]
# **Any gain sequence, hence Adam's (library mode "extrapolated").** With a time-varying gain $k_t$ the filter
# $m_t = (1-k_t)\, m_{t-1} + k_t\, g(arphi_t)$ of the gradient taken at $arphi_t = 	heta_{t-1} + c_t\,\Delta	heta_{t-1}$ equals
# the filter with the exact known input, $m^-_t + k_t (g(	heta_{t-1}) - m^-_t)$, $m^-_t = m_{t-1} + H\Delta	heta_{t-1}$, with the
# same noise draw, if and only if $k_t c_t = 1 - k_t$, i.e. $c_t = (1-k_t)/k_t$. With Adam's diffuse gain (D2)
# $c_{t+1} = eta(1-eta^t)/(1-eta)$: $c_1 = 0$ (the first gradient is taken at $	heta_0$), rising to IGT's $eta/(1-eta)$.
# The posterior variance is the Kalman filter's of D2: the input does not enter it (section 1).

# %%
c_t = sp.Symbol("c_t", real=True)
extrapolated_filter = (1 - k) * m_prev + k * (grad(theta_now + c_t * (theta_now - theta_prev)) + noise_term)
input_prior = m_prev + h * (theta_now - theta_prev)  # m^-_t with the exact input
filter_with_input = input_prior + k * (grad(theta_now) + noise_term - input_prior)
difference = sp.factor(sp.expand(extrapolated_filter - filter_with_input))
assert_identity(difference - h * (theta_now - theta_prev) * (k * c_t - (1 - k)), "difference = (k c - (1 - k)) h dtheta")
extrapolation_distance = (1 - k) / k
assert_identity(extrapolated_filter.subs(c_t, extrapolation_distance) - filter_with_input, "c_t = (1 - k_t) / k_t")
adam_extrapolation = sp.simplify(extrapolation_distance.subs(k, adam_k.subs(t, t + 1)))
assert_identity(adam_extrapolation - beta * (1 - beta**t) / (1 - beta), "Adam: c_{t+1} = beta (1 - beta^t) / (1 - beta)")
assert sp.limit(adam_extrapolation.subs(beta, sp.Rational(9, 10)), t, sp.oo) == 9
adam_extrapolation_oracle = sp.lambdify((beta, t), adam_extrapolation, "numpy")
show_equation(r"c_{t+1}", adam_extrapolation)

# %% [markdown]
# ## 5. Baseline without $h$: the local linear trend model (Holt)
#
# $x_t = x_{t-1} + s_{t-1} + w_t$, $s_t = s_{t-1} + \zeta_t$ ($\operatorname{Var} w = q_\ell$, $\operatorname{Var}\zeta = q_s$), $g_t = x_t + v_t$.
# Its steady-state filter is Holt's smoothing with level gain $\alpha$ and slope gain $\alpha\gamma$:
# $\ell_t = \ell_{t-1} + b_{t-1} + \alpha\nu_t$, $b_t = b_{t-1} + \alpha\gamma\,\nu_t$, $\nu_t = g_t - \ell_{t-1} - b_{t-1}$. Matching the
# autocovariances of the second differences $(1-L)^2 g_t$ (an MA(2): $\gamma_0 = 2q_\ell + q_s + 6r$, $\gamma_1 = -q_\ell - 4r$,
# $\gamma_2 = r$) with Holt's ARIMA(0,2,2) form, coefficients $\theta_1 = 2 - \alpha - \alpha\gamma$, $\theta_2 = \alpha - 1$, gives
#
# $$\frac{q_\ell}{r} = \frac{\alpha^2 + \alpha^2\gamma - 2\alpha\gamma}{1 - \alpha}, \qquad \frac{q_s}{r} = \frac{\alpha^2\gamma^2}{1-\alpha},$$
#
# checked against the converged $2\times2$ Riccati recursion. (So only $\alpha(1+\gamma) \ge 2\gamma$ is optimal for some model.)

# %%
alpha, L = sp.Symbol("alpha", positive=True), sp.Symbol("L")  # L: the lag operator, as a polynomial variable
# Holt in innovation form: (1-L) b = alpha gamma nu, (1-L) l = L b + alpha nu, g = l + (1 - alpha) nu.
holt_level = (L * alpha * gamma / (1 - L) + alpha) / (1 - L)  # l / nu
theta1, theta2 = 2 - alpha - alpha * gamma, alpha - 1
assert_identity(sp.cancel((1 - L) ** 2 * (holt_level + 1 - alpha)) - (1 - theta1 * L - theta2 * L**2), "Holt is ARIMA(0,2,2)")


def autocovariance(terms, lag):
    """Lag-`lag` autocovariance of sum_j poly_j(L) eps_j for independent white eps_j: {poly: variance}."""
    total = 0
    for poly, variance in terms.items():
        c = sp.Poly(sp.expand(poly), L).all_coeffs()[::-1]
        total += variance * sum(c[j] * c[j + lag] for j in range(len(c) - lag))
    return sp.expand(total)


q_l, q_s, sigma2 = sp.symbols("q_ell q_s sigma^2", positive=True)
trend_terms = {1 - L: q_l, L: q_s, (1 - L) ** 2: r}  # (1-L)^2 g_t = (1-L) w_t + zeta_{t-1} + (1-L)^2 v_t
holt_terms = {1 - theta1 * L - theta2 * L**2: sigma2}
assert [autocovariance(trend_terms, j) for j in range(3)] == [2 * q_l + q_s + 6 * r, -q_l - 4 * r, r]
matched = sp.solve([autocovariance(trend_terms, j) - autocovariance(holt_terms, j) for j in range(3)], [q_l, q_s, sigma2], dict=True)
assert len(matched) == 1
q_level, q_slope = matched[0][q_l], matched[0][q_s]
assert_identity(matched[0][sigma2] - r / (1 - alpha), "innovation variance r / (1 - alpha)")
assert_identity(q_level - r * (alpha**2 + alpha**2 * gamma - 2 * alpha * gamma) / (1 - alpha), "q_level / r")
assert_identity(q_slope - r * alpha**2 * gamma**2 / (1 - alpha), "q_slope / r")


def local_linear_trend_oracle(g, q_level, q_slope, r, prior):
    """Kalman filter of the local linear trend model on g (shape (T, ...)); scalar noises; prior = (level0, slope0, P0 2x2).

    Returns (levels, slopes, level posterior variances, gains (T, 2))."""
    g = np.asarray(g, float)
    F, Q = np.array([[1.0, 1.0], [0.0, 1.0]]), np.diag([q_level, q_slope])
    level, slope = (np.broadcast_to(np.asarray(v, float), g.shape[1:]) for v in prior[:2])
    P = np.asarray(prior[2], float)
    out = [np.empty_like(g) for _ in range(3)] + [np.empty((g.shape[0], 2))]
    for i in range(g.shape[0]):
        P_minus = F @ P @ F.T + Q
        gain = P_minus[:, 0] / (P_minus[0, 0] + r)
        innovation = g[i] - level - slope
        level, slope = level + slope + gain[0] * innovation, slope + gain[1] * innovation
        P = P_minus - np.outer(gain, P_minus[0])
        out[0][i], out[1][i], out[2][i], out[3][i] = level, slope, P[0, 0], gain
    return tuple(out)


def holt_gains_oracle(q_level, q_slope, r, n_steps=4000):
    """Steady (alpha, gamma) of the local linear trend filter, by iterating the Riccati recursion."""
    gains = local_linear_trend_oracle(np.zeros((n_steps, 1)), q_level, q_slope, r, (0.0, 0.0, np.eye(2)))[3]
    assert np.allclose(gains[-1], gains[-2], rtol=1e-13, atol=0), "Riccati recursion not converged"
    return gains[-1][0], gains[-1][1] / gains[-1][0]


q_level_fn, q_slope_fn = (sp.lambdify((alpha, gamma, r), expr, "numpy") for expr in (q_level, q_slope))
for ql, qs, rv in [(0.01, 1e-4, 1.0), (0.1, 0.01, 1.0), (0.0, 1e-3, 1.0), (1.0, 1.0, 2.0), (5e-4, 2e-5, 1.0)]:
    al, ga = holt_gains_oracle(ql, qs, rv)
    assert abs(q_level_fn(al, ga, rv) - ql) < 1e-10 * rv and abs(q_slope_fn(al, ga, rv) - qs) < 1e-10 * rv, (ql, qs)
    _, _, level_var, gains = local_linear_trend_oracle(np.zeros((50, 1)), ql, qs, rv, (0.0, 0.0, np.eye(2)))
    assert np.allclose(level_var[:, 0], gains[:, 0] * rv, rtol=1e-12)  # P_11 = K_1 r at every step

# %% [markdown]
# **No lag on a linear trend, without $h$.** With $\ell_{t-1} = x_{t-1} + \delta_\ell$, $b_{t-1} = a + \delta_b$ and $x_t = x_{t-1} + a$,
# the new errors depend on $(\delta_\ell, \delta_b, v_t)$ only: the trend cancels and the steady mean error is 0.
# **The price is variance.** Posterior variances of the level are $\alpha r$ in both models at the same level gain
# ($P_{11} = K_1 r$ for any model observed this way), but on white noise about a line the level's actual error variance
# is, from the error VAR's Lyapunov equation,
#
# $$V_{\text{Holt}} = \frac{2\alpha + 2\gamma - 3\alpha\gamma}{4 - 2\alpha - \alpha\gamma}\, r \;>\; \frac{\alpha}{2-\alpha}\, r = V_{\text{EWMA}},$$
#
# (the transported EWMA has $V_{\text{EWMA}}$ and no lag). Memory: one extra tensor (the slope): 12 B per parameter.

# %%
dl, db, x_sym = sp.symbols(r"\delta_\ell \delta_b x", real=True)
innov = (x_sym + a + v_t) - (x_sym + dl) - (a + db)
new_errors = [(x_sym + dl + a + db + alpha * innov) - (x_sym + a), (a + db + alpha * gamma * innov) - a]
assert all(not sp.expand(e).has(a) and not sp.expand(e).has(x_sym) for e in new_errors)
A = sp.Matrix([[1 - alpha, 1 - alpha], [-alpha * gamma, 1 - alpha * gamma]])  # error transition, from new_errors
assert all(sp.expand(new_errors[i] - (A[i, 0] * dl + A[i, 1] * db) - [alpha, alpha * gamma][i] * v_t) == 0 for i in range(2))
s11, s12, s22 = sp.symbols("s_11 s_12 s_22")
Sig = sp.Matrix([[s11, s12], [s12, s22]])
gain_vec = sp.Matrix([alpha, alpha * gamma])
eqs = Sig - A * Sig * A.T - gain_vec * gain_vec.T * r
holt_noise_variance = sp.factor(sp.solve([eqs[0, 0], eqs[0, 1], eqs[1, 1]], [s11, s12, s22], dict=True)[0][s11])
assert_identity(holt_noise_variance - r * (2 * alpha + 2 * gamma - 3 * alpha * gamma) / (4 - 2 * alpha - alpha * gamma), "V_Holt")
holt_excess = sp.factor(holt_noise_variance - alpha * r / (2 - alpha))
assert_identity(holt_excess - 4 * gamma * (1 - alpha) ** 2 * r / ((2 - alpha) * (4 - 2 * alpha - alpha * gamma)), "excess")
assert_numerically_equal(sp.Min(holt_excess, 0), sp.Integer(0), {alpha: uniform(0.01, 0.99), gamma: uniform(0.0, 1.0), r: uniform(0.1, 10)},
                         "V_Holt >= V_EWMA", atol=0.0)

al_v, ga_v = 1 - b_nqm, 0.05
holt_v = float(holt_noise_variance.subs({alpha: al_v, gamma: ga_v, r: r_nqm}))
holt_filter = (lambda g: np.stack([g, 0 * g]),
               lambda s, g, u, _: np.stack([s[0] + s[1] + al_v * (g - s[0] - s[1]), s[1] + al_v * ga_v * (g - s[0] - s[1])]))
estimates, truth = simulate_trend({"Holt": holt_filter})
check_errors(estimates, truth, {"Holt": (0.0, holt_v)})
print(f"Holt/EWMA error variance at alpha = {al_v:.2f}, gamma = {ga_v:.2f}: {holt_v / expected['EWMA'][1]:.3f}")

# %% [markdown]
# ## Exports

# %%
ewma_lag_bias_oracle = sp.lambdify((beta, a), ewma_lag_bias, "numpy")
innovation_regression_bias_oracle = sp.lambdify((h, eta, K, q, r), innovation_bias, "numpy")  # stationary example
secant_regression_bias_oracle = sp.lambdify((h, eta, K, q, r), secant_bias, "numpy")
holt_noise_variance_oracle = sp.lambdify((alpha, gamma, r), holt_noise_variance, "numpy")
holt_noise_ratios_oracle = sp.lambdify((alpha, gamma, r), (q_level, q_slope), "numpy")

export_latex("ControlInputModel", r"x_t = x_{t-1} + h\,\Delta\theta_{t-1} + w_t,\quad g_t = x_t + v_t")
export_latex("TransportPrediction", r"m^-_t = m_{t-1} + h\,\Delta\theta_{t-1},\quad P^-_t = P_{t-1} + q")
export_latex("TransportEwma", r"m_t = \beta\,(m_{t-1} + h\,\Delta\theta_{t-1}) + (1-\beta)\, g_t")
export_latex("TransportAdamRaw", r"\mathrm{exp\_avg}_t = \beta\,\big(\mathrm{exp\_avg}_{t-1} + (1-\beta^{t-1})\, h\,\Delta\theta_{t-1}\big)"
             r" + (1-\beta)\, g_t")  # = adam_raw_update, asserted in section 1
export_latex("EwmaLagBias", r"-\frac{\beta a}{1-\beta}")
export_latex("EwmaLagSteps", r"\frac{\beta}{1-\beta}")
export_latex("SecantCurvatureBias", r"\mathbb{E}[d_t\,\Delta\theta_{t-1}] = h\,\mathbb{E}[\Delta\theta_{t-1}^2] + \eta\, k_{t-1} r")
export_latex("InnovationCurvatureEstimator", r"\hat h = \frac{\mathbb{E}[\nu_t\,\Delta\theta_{t-1}]}{\mathbb{E}[\Delta\theta_{t-1}^2]}")
export_latex("InstrumentalCurvatureEstimator", r"\hat h = \frac{\mathbb{E}[d_t\,\Delta\theta_{t-2}]}{\mathbb{E}[\Delta\theta_{t-1}\Delta\theta_{t-2}]}")
export_latex("MomentumErrorStateCovariance", r"-\frac{K^2 r - (1-K)\,q}{(2-K)\,\big(K + \eta h\,(1-K)\big)}")
export_latex("InnovationRegressionSlope", r"-\frac{\rho}{1-\rho},\ \rho = (1-K)(1-\eta h)")
export_latex("IgtEvaluationPoint", r"\theta_t + \frac{\gamma}{1-\gamma}(\theta_t - \theta_{t-1})")
export_latex("ExtrapolationDistance", r"c_t = \frac{1-k_t}{k_t}")  # asserted in section 4
export_latex("AdamExtrapolationDistance", r"c_{t+1} = \frac{\beta\,(1-\beta^t)}{1-\beta}")
export_latex("LocalLinearTrendModel", r"x_t = x_{t-1} + s_{t-1} + w_t,\quad s_t = s_{t-1} + \zeta_t,\quad g_t = x_t + v_t")
# The typeset forms below are the ones asserted in sections 3 and 5.
export_latex("HoltLevelNoiseRatio", r"\frac{\alpha^2 + \alpha^2\gamma - 2\alpha\gamma}{1-\alpha}")
export_latex("HoltSlopeNoiseRatio", r"\frac{\alpha^2\gamma^2}{1-\alpha}")
export_latex("HoltLevelNoiseVariance", r"\frac{2\alpha + 2\gamma - 3\alpha\gamma}{4 - 2\alpha - \alpha\gamma}\, r")
export_latex("HoltExcessNoiseVariance", r"\frac{4\gamma\,(1-\alpha)^2}{(2-\alpha)(4 - 2\alpha - \alpha\gamma)}\, r")
export_latex("TransportInnovationStateBytes", str(state_bytes["innovation"]))
export_latex("TransportInstrumentalStateBytes", str(state_bytes["instrumental"]))
export_latex("TransportInnovationCalibratedStateBytes", str(calibrated_bytes["innovation"]))
export_latex("TransportInstrumentalCalibratedStateBytes", str(calibrated_bytes["instrumental"]))
export_latex("HoltStateBytes", str(state_bytes["holt"]))
