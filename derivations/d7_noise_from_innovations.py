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
# # D7. The observation noise and the filter's error from its own innovations
#
# **Setting.** $x_t = x_{t-1} + w_t$ with **any** drift $w_t$, observed as $g_t = x_t + v_t$ with $v_t$ white (variance $r$),
# independent of the level and of the past. The filter $m_t = m_{t-1} + k_t(g_t - m_{t-1})$ uses **any** gains fixed in advance
# (Adam's $k_t = (1-\beta)/(1-\beta^t)$, a constant, the Kalman gain). Error $e_t = x_t - m_t$, innovation $\nu_t = g_t - m_{t-1}$,
# residual $\varepsilon_t = g_t - m_t = (1-k_t)\nu_t$ (AdaBelief's); uncentred moments $E_t = \mathbb E[e_t^2]$,
# $S_t = \mathbb E[\nu_t^2]$, $C_t = \mathbb E[\nu_t\nu_{t-1}]$.
#
# D3 read $r$ off the innovations *assuming the filter's model*. Here (as in Mehra's innovation-based adaptive filtering, 1970,
# 1972) the innovations' variance and lag-1 covariance identify $r$ and the actual error $E_t$ whatever the true drift.
# Sections: 1 the error identity; 2 $r$ from the lag-1 covariance; 3 steady state and trend; 4 the library's read-out;
# 5 its bias without the lag term (Monte Carlo); 6 why the lag statistic is pooled per tensor; 7 Adam's own $v - m^2$;
# 8 small-sample intervals.

# %%
from statistics import NormalDist

import mpmath
import numpy as np
import sympy as sp

from derivations.common import assert_identity, assert_numerically_equal, export_latex, export_table, integers, show_equation, uniform
from derivations.d1_steady_state import beta, noise_ratio_of_beta, q, r

k, k_t, k_prev = sp.Symbol("k", positive=True), sp.Symbol("k_t", nonnegative=True), sp.Symbol("k_{t-1}", nonnegative=True)
a, mu = sp.symbols("a mu", real=True)  # mean of the increment w_t; mean of e_{t-1} + w_t
A_now, A_prev, S_t, S_prev_sym, C_sym = sp.symbols("A_t A_{t-1} S_t S_{t-1} C_t", positive=True)


def expectation(expr, moments):
    """E[expr] for a polynomial in independent variables; moments[s] = {power: E[s^power]}."""
    symbols = list(moments)
    terms = sp.Poly(sp.expand(expr), *symbols).terms()
    return sp.expand(sum(c * sp.Mul(*(moments[s][n] if n else 1 for s, n in zip(symbols, p))) for p, c in terms))


def gaussian(variance):
    """Moments of a zero-mean normal variable up to the fourth (Isserlis)."""
    return {1: 0, 2: variance, 3: 0, 4: 3 * variance**2}


def drop_unit_branch(expr):
    """sympy keeps a coefficient = 1 branch for finite geometric sums; coefficients are in (0, 1) here."""
    def general(piecewise):
        (_, condition), (closed_form, otherwise) = piecewise.args
        assert isinstance(condition, sp.Eq) and otherwise == sp.true, piecewise
        return closed_form
    return expr.replace(lambda e: isinstance(e, sp.Piecewise), general)


# %% [markdown]
# ## 1. The error identity, for any gain and any drift
#
# Substituting the update, $e_t = (1-k_t)u_t - k_t v_t$ and $\nu_t = u_t + v_t$ with $u_t = e_{t-1} + w_t$. The only assumption
# is that $v_t$ is zero-mean and independent of $u_t$ (whatever $u_t$'s mean and law). With $A_t = \mathbb E[u_t^2]$:
# $E_t = (1-k_t)^2 A_t + k_t^2 r$ and $S_t = A_t + r$, hence exactly
#
# $$E_t = (1-k_t)^2 S_t - (1-2k_t)\, r = \mathbb E[\varepsilon_t^2] - (1-2k_t)\, r .$$
#
# Second route: $\varepsilon_t = e_t + v_t$ with $\mathbb E[e_t v_t] = -k_t r$. The gain may depend on data up to $t-1$ (the
# identity then holds conditionally), never on $g_t$.

# %%
x_prev, m_prev, w_now, v_now, v_prev, u, u_prev, w_zero = sp.symbols("x_{t-1} m_{t-1} w_t v_t v_{t-1} u_t u_{t-1} w'_t", real=True)
m_now = m_prev + k_t * (x_prev + w_now + v_now - m_prev)
assert_identity(x_prev + w_now - m_now - ((1 - k_t) * (x_prev - m_prev + w_now) - k_t * v_now), "e_t = (1-k)(e_{t-1}+w_t) - k v_t")
assert_identity(x_prev + w_now + v_now - m_now - (1 - k_t) * (x_prev + w_now + v_now - m_prev), "eps_t = (1 - k_t) nu_t")
one_step = {u: {1: mu, 2: A_now}, v_now: gaussian(r)}
error_u = (1 - k_t) * u - k_t * v_now
error_variance, innovation_moment = expectation(error_u**2, one_step), expectation((u + v_now) ** 2, one_step)
assert_identity(error_variance - ((1 - k_t) ** 2 * A_now + k_t**2 * r), "E_t = (1 - k)^2 A_t + k^2 r")
assert_identity(innovation_moment - (A_now + r), "S_t = A_t + r")
error_from_innovations = (1 - k_t) ** 2 * S_t - (1 - 2 * k_t) * r
assert_identity(error_variance - error_from_innovations.subs(S_t, innovation_moment), "E_t = (1 - k)^2 S_t - (1 - 2k) r")
assert_identity(expectation(error_u * v_now, one_step) + k_t * r, "E[e_t v_t] = -k_t r")
residual_moment = expectation((error_u + v_now) ** 2, one_step)
assert_identity(residual_moment - (1 - k_t) ** 2 * innovation_moment, "E[eps^2] = (1 - k)^2 S")
assert_identity(error_variance - (residual_moment - (1 - 2 * k_t) * r), "E_t = E[eps_t^2] - (1 - 2k_t) r")
show_equation(r"E_t", error_from_innovations)

# %% [markdown]
# ## 2. The observation noise from the lag-1 covariance
#
# One step back, $e_{t-1} = (1-k_{t-1})\nu_{t-1} - v_{t-1}$, so $\nu_t = (1-k_{t-1})\nu_{t-1} - v_{t-1} + w_t + v_t$. If the increment
# $w_t$ has mean $a$ and is otherwise independent of the past, $C_t = (1-k_{t-1})S_{t-1} - r + a\,\mathbb E[\nu_{t-1}]$. For a
# random walk ($a = 0$):
#
# $$r = (1-k_{t-1})\, S_{t-1} - C_t = -\mathbb E[\nu_{t-1} d_t], \qquad d_t = g_t - g_{t-1} = \nu_t - (1-k_{t-1})\,\nu_{t-1},$$
#
# which is D4's $\mathbb E[d_t\nu_{t-1}] = -r$. A mean drift biases it by $-a\,\mathbb E[\nu_{t-1}]$, and a mean-reverting drift
# ($w_t$ depending on $x_{t-1}$) breaks it too; section 1 needs neither assumption.

# %%
two_steps = {u_prev: {1: mu, 2: A_prev}, v_prev: gaussian(r), w_zero: gaussian(q), v_now: gaussian(r)}
nu_prev, e_prev = u_prev + v_prev, (1 - k_prev) * u_prev - k_prev * v_prev
nu_now = e_prev + a + w_zero + v_now
assert_identity(e_prev - ((1 - k_prev) * nu_prev - v_prev), "e_{t-1} = (1 - k_{t-1}) nu_{t-1} - v_{t-1}")
difference = nu_now - (1 - k_prev) * nu_prev
assert_identity(difference - (a + w_zero + v_now - v_prev), "d_t = w_t + v_t - v_{t-1} (D4)")
S_prev, lag_covariance = expectation(nu_prev**2, two_steps), expectation(nu_now * nu_prev, two_steps)
assert_identity(lag_covariance - ((1 - k_prev) * S_prev - r + a * mu), "C_t = (1 - k') S' - r + a E[nu']")
noise_from_lag = (1 - k_prev) * S_prev - lag_covariance
assert_identity(noise_from_lag.subs(a, 0) - r, "random walk: r = (1 - k_{t-1}) S_{t-1} - C_t")
assert_identity(-expectation(nu_prev * difference, two_steps) - noise_from_lag, "(1 - k') S' - C = -E[nu' d]")
noise_from_lag_stated = (1 - k_prev) * S_prev_sym - C_sym
show_equation(r"r", noise_from_lag_stated)

# %% [markdown]
# **Monte Carlo.** $N = 100\,000$ coordinates ($r_i \sim U(0.5, 2)$), 40 steps from $m_0 = 0$, three drifts: a random walk with
# Adam's gain ($\beta = 0.8$); walk + trend + sinusoid with arbitrary gains drawn once in $[0.05, 0.9]$; a mean-reverting level
# $w_t = -0.1x_{t-1} + \xi_t$ with Adam's gain. At each step the per-coordinate $(e_t^2 - (1-k_t)^2\nu_t^2)/r_i + 1 - 2k_t$ and
# $\nu_{t-1}d_t/r_i + 1$ have mean zero if the identities hold; coordinates are independent, so SE = SD$/\sqrt N$.
# Tolerance 5 SE at every step; the lag identity must also visibly fail (> 10 SE) for the two other drifts.

# %%
rng = np.random.default_rng(70)
n_coords, n_steps = 100_000, 40
r_coord, adam_gains = rng.uniform(0.5, 2.0, n_coords), (1 - 0.8) / (1 - 0.8 ** np.arange(1, 41))
noise = lambda scale: scale * np.sqrt(r_coord) * rng.normal(size=n_coords)  # noqa: E731
drifts = {
    "random walk": (adam_gains, lambda x, t: noise(0.05)),
    "walk + trend + sine": (rng.uniform(0.05, 0.9, n_steps), lambda x, t: np.sqrt(r_coord) * (0.1 + 0.5 * np.sin(t / 3)) + noise(0.05)),
    "mean reverting": (adam_gains, lambda x, t: -0.1 * x + noise(0.3)),
}
z_score = lambda sample: abs(sample.mean()) / (sample.std(ddof=1) / np.sqrt(sample.size))  # noqa: E731
for name, (gains, drift) in drifts.items():
    x, m, worst_error, worst_lag = noise(2.0), np.zeros(n_coords), 0.0, 0.0
    for step, gain in enumerate(gains, start=1):
        x = x + drift(x, step)
        nu = x + noise(1.0) - m
        m = m + gain * nu
        worst_error = max(worst_error, z_score(((x - m) ** 2 - (1 - gain) ** 2 * nu**2) / r_coord + 1 - 2 * gain))
        if step > 1:
            worst_lag = max(worst_lag, z_score(nu_last * (nu - (1 - gain_last) * nu_last) / r_coord + 1))
        nu_last, gain_last = nu, gain
    assert worst_error < 5 and ((worst_lag < 5) if name == "random walk" else (worst_lag > 10)), (name, worst_error, worst_lag)
    print(f"{name:20s}: error identity worst |z| = {worst_error:.2f}; lag identity worst |z| = {worst_lag:.1f}")

# %% [markdown]
# ## 3. Steady state, optimality, and a deterministic trend
#
# A constant gain on a random walk has $E = (1-k)^2(E + q) + k^2 r$, so
#
# $$E_{\text{true}} = \frac{(1-k)^2 q + k^2 r}{k(2-k)}, \qquad S = E_{\text{true}} + q + r, \qquad C_1 = (1-k)S - r,$$
#
# and eliminating $r$: $E = k(1-k)S + (1-2k)C_1$. $C_1 \propto (1-k)q - k^2 r$ vanishes exactly at the optimal gain; then
# $S = r/(1-k)$ and $E = kr$, the filter's posterior variance. Positive $C_1$: the filter lags (gain too small).
#
# **Correction (trend).** For $x_t = at$ the steady mean error is $(1-k)a/k$ and the mean innovation $a/k$. Section 1 holds for
# uncentred moments, section 2 does not: $(1-k)S - C_1 = r - a^2/k$, so $k(1-k)S + (1-2k)C_1$ is **not** exact for a trend: it
# overestimates $E$ by $(1-2k)a^2/k$, the fraction $k(1-2k)/(1-k)^2$ of the squared lag (10% at $k = 0.1$; conservative for $k < 1/2$).

# %%
E_sym, mu_e = sp.symbols("E mu_e", real=True)
steady_error = sp.solve(sp.Eq(E_sym, (1 - k) ** 2 * (E_sym + q) + k**2 * r), E_sym)[0]
assert_identity(steady_error - ((1 - k) ** 2 * q + k**2 * r) / (k * (2 - k)), "E_true = ((1-k)^2 q + k^2 r)/(k(2-k))")
steady_S = steady_error + q + r
steady_C1 = (1 - k) * steady_S - r
error_from_moments = k * (1 - k) * S_t + (1 - 2 * k) * C_sym
assert_identity(error_from_moments.subs({S_t: steady_S, C_sym: steady_C1}) - steady_error, "E = k(1-k) S + (1-2k) C1")
assert_identity(steady_C1 * k * (2 - k) - ((1 - k) * q - k**2 * r), "C1 k (2 - k) = (1 - k) q - k^2 r")
optimal = {k: 1 - beta, q: noise_ratio_of_beta * r}
assert_identity(steady_C1.subs(optimal), "optimal gain: C1 = 0")
assert_identity(steady_S.subs(optimal) - r / beta, "optimal gain: S = r / (1 - k)")
assert_identity(steady_error.subs(optimal) - (1 - beta) * r, "optimal gain: E = k r")
mean_error = sp.solve(sp.Eq(mu_e, (1 - k) * (mu_e + a)), mu_e)[0]
assert_identity(mean_error - (1 - k) * a / k, "trend: mean error (1 - k) a / k")
assert_identity(mean_error + a - a / k, "trend: mean innovation a / k")
trend = {"E": steady_error + mean_error**2, "S": steady_S + (a / k) ** 2, "C": steady_C1 + (a / k) ** 2}
assert_identity(trend["E"] - ((1 - k) ** 2 * trend["S"] - (1 - 2 * k) * r), "trend: section 1 holds (uncentred)")
assert_identity((1 - k) * trend["S"] - trend["C"] - (r - a**2 / k), "trend: lag read-out r - a^2/k")
trend_overestimate = sp.simplify(error_from_moments.subs({S_t: trend["S"], C_sym: trend["C"]}) - trend["E"])
assert_identity(trend_overestimate - (1 - 2 * k) * a**2 / k, "trend: k(1-k)S + (1-2k)C1 - E = (1-2k) a^2/k")
assert_identity(trend_overestimate / mean_error**2 - k * (1 - 2 * k) / (1 - k) ** 2, "relative to the squared lag")
steady_error_tex = r"\frac{(1-k)^2 q + k^2 r}{k(2-k)}"
show_equation(r"E_{\text{true}}", steady_error_tex)

# %% [markdown]
# ## 4. The library's read-out (mode "innovation")
#
# Per coordinate, $R$ is a bias-corrected EWMA (coefficient $\beta_s$) of $(1-k_t)\nu_t^2$: mean $(1-k)S$ at a steady state, and
# exactly $r$ at every step under the filter's own model (D3: $\operatorname{Var}\nu_t = r/(1-k_t)$). Per tensor, over a fixed
# sample of coordinates, $\hat r_i$ is an EWMA of $-\nu_{t-1}d_t$ (only the sample's previous innovation is stored), and
# $\phi = (N\phi_{\text{data}} + N_0)/(N + N_0)$ with $\phi_{\text{data}} = \sum_i\hat r_i/\sum_i R_i$ is shrunk to the model's value 1
# by a pseudo-count $N_0$. $N$ is the sample size times $n_{\text{eff}} = (\sum w)^2/\sum w^2$ of the EWMA weights $w_j \propto \beta_s^j$,
# $j < n$ (geometric sums; $1/\rho(\beta_s, n)$ of D3):
#
# $$n_{\text{eff}} = \frac{(1-\beta_s^n)^2(1+\beta_s)}{(1-\beta_s)(1-\beta_s^{2n})}, \qquad
# \hat E = (1-k)R - (1-2k)\,\phi R = R\big[(1-k)(1-\phi) + k\phi\big], \quad 0 \le \phi \le \tfrac{1}{1-k},$$
#
# the clip because $S \ge r$. $\hat E$ is linear in $\phi$: its minimum is $Rk^2/(1-k)$ (at $\phi = 1/(1-k)$) only for $k \le 1/2$;
# for $k > 1/2$ (early steps) it is $(1-k)R$ at $\phi = 0$. **Correction:** $\hat E \ge R\min(k, 1-k)^2/(1-k)$, positive for
# $0 < k < 1$ unless $R = 0$ (a constant series). **Step 1:** with $k_1 = 1$, $(1-k_1)\nu_1^2 \equiv 0$ carries no information (the
# diffuse prior's $0\cdot\infty$); counting it biases $R$ low (by half at $t = 2$ for $\beta_s = 0.99$, section 8), so $R$ and
# $n_{\text{eff}}$ must start at $t = 2$. Under the model $\phi \to 1$ and $\hat E \to kR$, of mean $kr$.

# %%
beta_s, R, phi, N_eff, N0, phi_data = sp.symbols("beta_s R phi N N_0 phi_data", positive=True)
n_s, j_s = sp.Symbol("n", integer=True, positive=True), sp.Symbol("j", integer=True, nonnegative=True)
sums = [drop_unit_branch(sp.summation(beta_s ** (p * j_s), (j_s, 0, n_s - 1))) for p in (1, 2)]
effective_samples = (1 - beta_s**n_s) ** 2 * (1 + beta_s) / ((1 - beta_s) * (1 - beta_s ** (2 * n_s)))
assert_identity(sums[0] ** 2 / sums[1] - effective_samples, "n_eff = (sum w)^2 / sum w^2")
msvag_factor = (1 - beta_s) ** 2 * (1 - beta_s ** (2 * n_s)) / ((1 - beta_s**n_s) ** 2 * (1 - beta_s**2))  # D3's rho
assert_identity(effective_samples * msvag_factor - 1, "n_eff = 1 / rho(beta_s, n)")
assert_identity(effective_samples.subs(n_s, 1) - 1, "one sample: n_eff = 1")
effective_samples_oracle = sp.lambdify((beta_s, n_s), effective_samples, "numpy")
assert_numerically_equal(
    effective_samples_oracle,
    lambda bs, ns: np.array([np.sum(c ** np.arange(n)) ** 2 / np.sum(c ** (2 * np.arange(n))) for c, n in zip(bs, ns.astype(int))]),
    {beta_s: uniform(0.5, 0.999), n_s: integers(1, 3000)}, "n_eff closed form vs direct sums", rtol=1e-9,
)
readout = R * ((1 - k) * (1 - phi) + k * phi)
assert_identity(readout - ((1 - k) * R - (1 - 2 * k) * phi * R), "readout = (1 - k) R - (1 - 2k) phi R")
assert_identity(error_from_innovations.subs({k_t: k, S_t: R / (1 - k), r: phi * R}) - readout, "section 1 with R, phi R")
assert readout.subs(phi, 1) == k * R
assert_identity(readout.subs(phi, 1 / (1 - k)) - R * k**2 / (1 - k), "readout at the clip = R k^2 / (1 - k)")
assert_identity(readout.subs(phi, 0) - R * k**2 / (1 - k) - R * (1 - 2 * k) / (1 - k), "ends differ by R(1-2k)/(1-k)")
assert_numerically_equal(
    sp.Min(1 - k, k**2 / (1 - k)), sp.Min(k, 1 - k) ** 2 / (1 - k), {k: uniform(1e-3, 0.999)}, "min over the clip range", rtol=1e-12
)
assert_identity((N_eff * phi_data + N0) / (N_eff + N0) - phi_data - N0 * (1 - phi_data) / (N_eff + N0), "shrinkage bias")


def innovation_posterior_variance_oracle(R, phi, k):
    """E_hat = R [(1 - k)(1 - phi) + k phi] with phi clipped to [0, 1/(1 - k)] (0 <= k < 1), elementwise."""
    k = np.asarray(k, dtype=float)
    phi = np.clip(phi, 0.0, 1.0 / (1.0 - k))
    return np.asarray(R, dtype=float) * ((1 - k) * (1 - phi) + k * phi)


def shrunk_noise_ratio_oracle(rhat_sum, R_sum, n_effective, pseudo_count):
    """phi = (N phi_data + N0)/(N + N0), phi_data = sum rhat / sum R over the sample (1 while sum R = 0)."""
    R_sum = np.asarray(R_sum, dtype=float)
    phi_data = np.divide(rhat_sum, R_sum, out=np.ones_like(R_sum), where=R_sum > 0)
    return (n_effective * phi_data + pseudo_count) / (n_effective + pseudo_count)


assert_numerically_equal(  # 1/(1 - k) > 1.06 on this range: no clipping
    innovation_posterior_variance_oracle, sp.lambdify((R, phi, k), readout, "numpy"),
    {R: uniform(0.1, 10), phi: uniform(0, 1.06), k: uniform(0.06, 0.5)}, "oracle inside the clip range", rtol=1e-12,
)
assert_numerically_equal(
    innovation_posterior_variance_oracle, lambda RR, _, kk: RR * kk**2 / (1 - kk),
    {R: uniform(0.1, 10), phi: uniform(2.1, 50), k: uniform(0.0, 0.5)}, "oracle clips phi at 1/(1 - k)", rtol=1e-9,
)
show_equation(r"\hat E", readout)

# %% [markdown]
# ## 5. What ignoring the lag term costs, and the full estimator (Monte Carlo)
#
# The model-only read-out $\hat E = kR$ ($\phi = 1$) has mean $k(1-k)S$; relative to $E_{\text{true}}$ at the steady state of
# $\beta = 0.9$ ($k = 0.1$, filter ratio $\lambda_f = (1-\beta)^2/\beta = 1/90$) the exact ratios below follow from section 3 for
# true ratios $\lambda = c\lambda_f$. The full read-out has mean $E_{\text{true}}$ (section 1) up to the shrinkage bias (predicted too).
#
# **Run.** Adam's gain ($\beta = 0.9$) from $x_0 = m_0 = 0$, 3000 steps, $\beta_s = 0.99$; per case 32 tensors of 128
# coordinates ($r_i \sim U(0.5, 2)$), $\phi$ from the first 64 of each tensor, $N_0 = 64$; a sixth case adds a trend
# $a_i = 0.1\sqrt{r_i}$ to the matched walk. Read-outs over each coordinate's $E_{\text{true}}$ are averaged per tensor over 11
# snapshots (steps 1000, 1200, ..., 3000); tensors are independent: SE = SD$/\sqrt{32}$. The actual $E$, $S$, $C_1$ are time
# averages over steps 1001-3000 (independent coordinates: SE = SD$/\sqrt{4096}$). Tolerance 5 SE.

# %%
b_value = sp.Rational(9, 10)
lam_filter = noise_ratio_of_beta.subs(beta, b_value)
cases = [(sp.nsimplify(c), 0) for c in ("0", "1/10", "1", "10", "100")] + [(sp.Integer(1), sp.Rational(1, 10))]  # (c, trend / sqrt r)
case_names = ["0", "0.1", "1", "10", "100", "1 + trend"]
true_moments = [  # (E, S, C1) / r per case, exact
    tuple(sp.simplify(trend[key].subs({k: 1 - b_value, q: c * lam_filter * r, a: s * sp.sqrt(r)}) / r) for key in "ESC") for c, s in cases
]
model_only_ratio = [sp.nsimplify((1 - b_value) * b_value * S_c / E_c) for E_c, S_c, _ in true_moments]
assert model_only_ratio[2] == 1 and model_only_ratio[0] == sp.Rational(9, 5)  # matched: unbiased; static mean: 1.8
print(", ".join(f"c = {name}: {value}" for name, value in zip(case_names, model_only_ratio)))

rng = np.random.default_rng(75)
b_mc, beta_s_mc, beta2_mc, n_steps, burn_in = 0.9, 0.99, 0.999, 3000, 1000
n_tensors, tensor_size, n_sampled, pseudo_count = 32, 128, 64, 64
per_case = n_tensors * tensor_size
n_coords = len(cases) * per_case
r_coord = rng.uniform(0.5, 2.0, n_coords)
q_coord = np.repeat([float(c * lam_filter) for c, _ in cases], per_case) * r_coord
slope_coord = np.repeat([float(s) for _, s in cases], per_case) * np.sqrt(r_coord)
E_true_coord = np.repeat([float(moments[0]) for moments in true_moments], per_case) * r_coord
tensor_of, sampled = np.arange(n_coords) // tensor_size, np.arange(n_coords) % tensor_size < n_sampled
x, m, v_raw, R_raw, rhat_raw, sum_e2, sum_nu2, sum_lag = (np.zeros(n_coords) for _ in range(8))
readout_sums = {"model-only": 0.0, "full": 0.0}
for step in range(1, n_steps + 1):
    gain = (1 - b_mc) / (1 - b_mc**step)
    x = x + slope_coord + np.sqrt(q_coord) * rng.normal(size=n_coords)
    g = x + np.sqrt(r_coord) * rng.normal(size=n_coords)
    nu = g - m
    if step >= 2:  # k_1 = 1: the first innovation carries no information about r (section 4)
        R_raw = beta_s_mc * R_raw + (1 - beta_s_mc) * (1 - gain) * nu**2
        rhat_raw = beta_s_mc * rhat_raw - (1 - beta_s_mc) * nu_last * (nu - (1 - gain_last) * nu_last)
    m = m + gain * nu
    v_raw = beta2_mc * v_raw + (1 - beta2_mc) * g**2
    if step > burn_in:
        sum_e2, sum_nu2, sum_lag = sum_e2 + (x - m) ** 2, sum_nu2 + nu**2, sum_lag + nu * nu_last
    if step >= burn_in and step % 200 == 0:
        R_hat, rhat_hat = (raw / (1 - beta_s_mc ** (step - 1)) for raw in (R_raw, rhat_raw))
        sample_sums = [np.bincount(tensor_of[sampled], weights=stat[sampled]) for stat in (rhat_hat, R_hat)]
        phi_tensor = shrunk_noise_ratio_oracle(*sample_sums, n_sampled * effective_samples_oracle(beta_s_mc, step - 1), pseudo_count)
        E_full = innovation_posterior_variance_oracle(R_hat, phi_tensor[tensor_of], gain)
        for key, estimate in [("model-only", gain * R_hat), ("full", E_full)]:
            readout_sums[key] = readout_sums[key] + np.bincount(tensor_of, weights=estimate / E_true_coord) / tensor_size / 11
    nu_last, gain_last = nu, gain

n_end = n_sampled * effective_samples_oracle(beta_s_mc, n_steps - 1)
readout_rows = []
for index, (E_c, S_c, C_c) in enumerate(true_moments):
    block, tensors = slice(index * per_case, (index + 1) * per_case), slice(index * n_tensors, (index + 1) * n_tensors)
    phi_expected = (n_end * (b_value * S_c - C_c) / (b_value * S_c) + pseudo_count) / (n_end + pseudo_count)  # lag read-out / R, shrunk
    full_expected = float((b_value**2 * S_c - (2 * b_value - 1) * phi_expected * b_value * S_c) / E_c)
    measured = []
    for name, sample, expected in [
        ("E", sum_e2[block], E_c), ("S", sum_nu2[block], S_c), ("C1", sum_lag[block], C_c),
    ]:
        sample = sample / (n_steps - burn_in) / r_coord[block]
        assert abs(sample.mean() - float(expected)) < 5 * sample.std(ddof=1) / np.sqrt(per_case), (index, name, sample.mean(), expected)
    for key, expected in [("model-only", float(model_only_ratio[index])), ("full", full_expected)]:
        sample = readout_sums[key][tensors]
        se = sample.std(ddof=1) / np.sqrt(n_tensors)
        assert abs(sample.mean() - expected) < 5 * se, (index, key, sample.mean(), expected, se)
        measured += [expected, sample.mean(), se]
    readout_rows.append((case_names[index], *measured))
print(f"{'c':>9} | E[kR]/E_true: {'pred.':>6} {'MC':>6} {'SE':>6} | full: {'pred.':>6} {'MC':>6} {'SE':>6}")
for row in readout_rows:
    print("{:>9} | {:>20.4f} {:6.4f} {:6.4f} | {:>12.4f} {:6.4f} {:6.4f}".format(*row))

# %% [markdown]
# ## 6. Why the lag statistic is pooled per tensor
#
# **Memory.** Per-coordinate lag statistics need two more tensors (previous innovation, EWMA of $-\nu_{t-1}d_t$): $4 \times 5 = 20$
# B/param with Adam's $m, v$ and $R$, against $4 \times 3 = 12$ for mode "innovation", whose per-tensor sample (64 previous
# innovations, two sums) costs ~0. **Variance.** At a steady state $E/S = k(1-k) + (1-2k)\rho_1$, $\rho_1 = C_1/S$ (so
# $E/R = k + (1-2k)\rho_1/(1-k)$): a small difference, $0.09 + 0.8\rho_1$ at $k = 0.1$,
# while $\hat\rho_1$ from $n_{\text{eff}} = 199$ samples has SE $\approx 1/\sqrt{199} = 0.071$. Exactly: the per-coordinate read-out
# $(1-k)R - (1-2k)\hat r$ is an EWMA of $z_t = (1-k)^2\nu_t^2 + (1-2k)\nu_t\nu_{t-1} - (1-2k)(1-k)\nu_{t-1}^2$, whose variance under
# the model ($\nu$ white, variance $r/(1-k)$) is $\frac{1-\beta_s}{1+\beta_s}(\gamma_0 + 2\beta_s\gamma_1)$ with $z$'s autocovariances.
# Checked on section 5's matched case at step 3000 (4096 independent coordinates; SE of an SD from the squared deviations).

# %%
n0_, n1_, n2_ = sp.symbols("n_t n_{t-1} n_{t-2}", real=True)
k_b = 1 - beta
lag_term = lambda now, last: (1 - k_b) ** 2 * now**2 - (1 - 2 * k_b) * (-last * (now - (1 - k_b) * last))  # noqa: E731
white = {s: gaussian(r / beta) for s in (n0_, n1_, n2_)}
z_mean = expectation(lag_term(n0_, n1_), white)
assert_identity(z_mean - k_b * r, "E[z] = k r under the model")
z_gamma = [expectation(lag_term(n0_, n1_) * other, white) - z_mean**2 for other in (lag_term(n0_, n1_), lag_term(n1_, n2_))]
lag_readout_relative_variance = sp.factor((1 - beta_s) / (1 + beta_s) * (z_gamma[0] + 2 * beta_s * z_gamma[1]) / (k_b * r) ** 2)
at_default = {beta: b_value, beta_s: sp.Rational(99, 100)}
model_only_relative_variance = 2 * (1 - beta_s) / (1 + beta_s)  # k R: an EWMA of r chi^2_1 draws
predicted_sd, model_only_sd = (float(sp.sqrt(v.subs(at_default))) for v in (lag_readout_relative_variance, model_only_relative_variance))
matched = slice(2 * per_case, 3 * per_case)
R_end, rhat_end = (raw[matched] / (1 - beta_s_mc ** (n_steps - 1)) for raw in (R_raw, rhat_raw))
for name, sample, expected_sd in [
    ("per-coordinate lag read-out", ((1 - gain) * R_end - (1 - 2 * gain) * rhat_end) / (gain * r_coord[matched]), predicted_sd),
    ("model-only k R", R_end / r_coord[matched], model_only_sd),
]:
    sd = sample.std(ddof=1)
    se_sd = np.sqrt(np.var((sample - sample.mean()) ** 2, ddof=1) / sample.size) / (2 * sd)
    assert abs(sample.mean() - 1) < 5 * sd / np.sqrt(sample.size) and abs(sd - expected_sd) < 5 * se_sd, (name, sample.mean(), sd)
    print(f"{name:28s}: mean E_hat/(k r) = {sample.mean():.3f}, relative SD {sd:.3f} (predicted {expected_sd:.3f}), "
          f"negative for {np.mean(sample < 0):.1%}")
assert predicted_sd > 6 * model_only_sd
show_equation(r"\operatorname{Var}[(1-k)R - (1-2k)\hat r]/(kr)^2", lag_readout_relative_variance)

# %% [markdown]
# ## 7. What Adam's own $(m, v)$ can give
#
# D3's zero-memory $\hat r = (v - m^2)/c$ ($c = 12$ at $(0.9, 0.999)$, matched $\lambda$) assumes the past increments are independent
# of the present level. For a walk run forward from its start that fails: $v$ (window ~1000 steps) remembers the level's drift.
# Exactly, for Adam's bias-corrected $\hat m_t, \hat v_t$ with $x_0 = 0$ ($\mathbb E[x_{t-j}x_{t-l}] = (t - \max(j,l))q$), writing
# $p^{(\beta)}_i = (\beta^i - \beta^t)/(1-\beta^t)$ for the weight of ages $\ge i$:
#
# $$\mathbb E[\hat v_t - \hat m_t^2] = r\big(1 - \rho_t(\beta_1)\big)
# + q\Big(\sum_{i=1}^{t-1}\big(2p^{(\beta_1)}_i - (p^{(\beta_1)}_i)^2\big) - \sum_{i=1}^{t-1}p^{(\beta_2)}_i\Big),$$
#
# (mean of the larger of two $\beta_1$-ages minus the mean $\beta_2$-age). As $t \to \infty$: D3's known-start value, $-10r$ at the
# defaults ($-8.3r$ at $t = 3000$); negative for about half of the coordinates, so no constant rescues it when the level drifts.
# Only the static case $q = 0$ (i.i.d. gradients; the mean cancels since both weight sets sum to 1) can be saved:
# $\mathbb E[\hat v_t - \hat m_t^2] = c_t r$ with $c_t = 1 - \rho_t(\beta_1) = 1 - 1/n_{\text{eff}}(\beta_1, t) \to 2\beta_1/(1+\beta_1)$,
# for any $\beta_2$.

# %%
b1, b2, lam_true = sp.symbols("beta_1 beta_2 lambda", positive=True)
t, i_age = sp.Symbol("t", integer=True, positive=True), sp.Symbol("i", integer=True, positive=True)
tail = lambda c: (c**i_age - c**t) / (1 - c**t)  # noqa: E731
mean_max_age = drop_unit_branch(sp.summation(sp.expand(2 * tail(b1) - tail(b1) ** 2), (i_age, 1, t - 1)))
mean_age_slow = drop_unit_branch(sp.summation(sp.expand(tail(b2)), (i_age, 1, t - 1)))
static_constant = 1 - msvag_factor.subs({beta_s: b1, n_s: t})
adam_moments_bias = static_constant + lam_true * (mean_max_age - mean_age_slow)  # E[v_hat - m_hat^2] / r


def adam_moments_bias_direct(beta1s, beta2s, lams, steps):
    """The same from the covariance matrix of g_1..g_t (walk from 0, r = 1), point by point."""
    out = []
    for c1, c2, lam_value, n in zip(beta1s, beta2s, lams, steps.astype(int)):
        ages = np.arange(n)
        w1, w2 = ((1 - c) * c**ages / (1 - c**n) for c in (c1, c2))
        moments = lam_value * (n - np.maximum.outer(ages, ages)) + np.eye(n)
        out.append(w2 @ np.diag(moments) - w1 @ moments @ w1)
    return np.array(out)


adam_moments_bias_oracle = sp.lambdify((b1, b2, lam_true, t), adam_moments_bias, "numpy")
assert_numerically_equal(
    adam_moments_bias_oracle, adam_moments_bias_direct,
    {b1: uniform(0.5, 0.99), b2: uniform(0.9, 0.999), lam_true: uniform(0, 0.2), t: integers(1, 400)},
    "E[v_hat - m_hat^2] / r: closed form vs covariance matrix", n=40, rtol=1e-8, atol=1e-9,
)
steady_limit = adam_moments_bias.replace(lambda e: e.is_Pow and e.exp.has(t), lambda e: 0)
d3_known_start = 2 * b1 / (1 + b1) + lam_true * (b2 / (1 - b2) - b1**2 / (1 - b1**2)) - 2 * lam_true * (b2 / (1 - b2) - b1 / (1 - b1))
assert_identity(steady_limit - d3_known_start, "t -> oo: D3's known-start value")
assert sp.nsimplify(steady_limit.subs({b1: b_value, b2: sp.Rational(999, 1000), lam_true: lam_filter})) == -10
assert_identity(static_constant - (1 - 1 / effective_samples.subs({beta_s: b1, n_s: t})), "c_t = 1 - 1/n_eff(beta_1, t)")
assert sp.simplify(static_constant.subs(t, 1)) == 0 and sp.simplify(steady_limit.subs(lam_true, 0) - 2 * b1 / (1 + b1)) == 0
static_constant_oracle = sp.lambdify((b1, t), static_constant, "numpy")

# Monte Carlo 1: section 5's run (a walk from x_0 = 0; m is Adam's m_hat), step 3000, the five noise-only cases.
v_hat, fraction_negative = v_raw / (1 - beta2_mc**n_steps), []
for index, (multiple, _) in enumerate(cases[:5]):
    block = slice(index * per_case, (index + 1) * per_case)
    sample = (v_hat[block] - m[block] ** 2) / r_coord[block]
    expected = adam_moments_bias_oracle(b_mc, beta2_mc, float(multiple * lam_filter), n_steps)
    assert abs(sample.mean() - expected) < 5 * sample.std(ddof=1) / np.sqrt(per_case), (multiple, sample.mean(), expected)
    fraction_negative.append(np.mean(sample < 0))
    print(f"c = {case_names[index]:4s}: E[v_hat - m_hat^2]/r = {expected:8.3f} (MC {sample.mean():8.3f}), "
          f"negative for {fraction_negative[-1]:.0%}")
assert fraction_negative[0] == 0 and fraction_negative[2] > 0.4
# Monte Carlo 2: a static mean (a different one per coordinate), steps 1-8, against c_t.
rng = np.random.default_rng(77)
level, r_static, m_raw, v2_raw = 5 * rng.normal(size=200_000), rng.uniform(0.5, 2.0, 200_000), 0.0, 0.0
for step in range(1, 9):
    g = level + np.sqrt(r_static) * rng.normal(size=level.size)
    m_raw, v2_raw = b_mc * m_raw + (1 - b_mc) * g, beta2_mc * v2_raw + (1 - beta2_mc) * g**2
    sample = (v2_raw / (1 - beta2_mc**step) - (m_raw / (1 - b_mc**step)) ** 2) / r_static
    assert abs(sample.mean() - static_constant_oracle(b_mc, step)) < 5 * sample.std(ddof=1) / np.sqrt(level.size) + 1e-9, step
print("static mean: c_t = " + ", ".join(f"{static_constant_oracle(b_mc, s):.3f}" for s in range(1, 9)) + f" -> {2 * b_mc / (1 + b_mc):.3f}")

# %% [markdown]
# ## 8. Small-sample intervals: Student-t with $n_{\text{eff}}$ degrees of freedom
#
# Under the filter's own model the standardized innovations $\sqrt{1-k_t}\,\nu_t/\sqrt r$ ($t \ge 2$) are i.i.d. $\mathcal N(0,1)$ and
# $e_t$ is independent of them (Gaussian, orthogonal to the data), so $e_t/\sqrt{k_tR} = Z/\sqrt Q$ with $Q = \sum_j\tilde w_j\chi^2_{1,j}$.
# Satterthwaite matches $Q$'s two moments with $\chi^2_\nu/\nu$: $\nu = 1/\sum_j\tilde w_j^2 = n_{\text{eff}}$, hence the interval
# $m_t \pm t_{n_{\text{eff}},\ell}\sqrt{\hat E_t}$ (exact for equal weights). Its exact coverage $P(Z^2 - t^2Q \le 0)$ follows from Imhof's
# (1961) integral. **Monte Carlo:** Adam's gain ($\beta = 0.9$) under D2's schedule $q_t = r(1-\beta)^2/(\beta(1-\beta^{t-1}))$ (where it is
# the Kalman gain), diffuse start, $N = 200\,000$, level 95%, $R$ from $n = t-1$ samples, $\hat E = k_tR$. The coverage must match
# Imhof's within 5 SE ($\sqrt{\ell(1-\ell)/N}$), Imhof's within 0.005 of 95%; the normal quantile and counting the $k_1 = 1$ sample
# must under-cover by > 20 SE at $n \le 5$.

# %%
def student_t_quantile_oracle(level, dof):
    """t with P(|T_dof| <= t) = level for any real dof > 0 (bisection on the regularized incomplete beta)."""
    with mpmath.workdps(30):
        tail_probability = lambda x: mpmath.betainc(dof / 2, 0.5, 0, dof / (dof + x**2), regularized=True) - (1 - level)  # noqa: E731
        low = NormalDist().inv_cdf((1 + level) / 2)
        high = 2 * low
        while tail_probability(high) > 0:
            high *= 2
        for _ in range(80):
            low, high = ((low + high) / 2, high) if tail_probability((low + high) / 2) > 0 else (low, (low + high) / 2)
        return float((low + high) / 2)


def quadratic_form_cdf_at_zero(weights, n_grid=20_001):
    """P(sum_j weights_j chi^2_1 <= 0) by Imhof's formula; trapezoid rule after u = tan(pi s / 2)."""
    weights = np.asarray(weights, dtype=float)
    s = np.linspace(0, 1, n_grid)[1:-1]
    u, du = np.tan(np.pi * s / 2), np.pi / 2 / np.cos(np.pi * s / 2) ** 2
    lu = np.outer(u, weights)
    integrand = np.sin(0.5 * np.arctan(lu).sum(axis=1)) / u * np.exp(-0.25 * np.log1p(lu**2).sum(axis=1)) * du
    return 0.5 - (np.pi / 8 * weights.sum() + integrand.sum()) / (n_grid - 1) / np.pi  # end values: (pi/4) sum(w) and 0


# Closed forms for 1 and 2 degrees of freedom (tan(pi l / 2); l = t / sqrt(2 + t^2)), tabulated values for 3 and 10.
for dof, value in [(1, np.tan(np.pi * 0.95 / 2)), (2, np.sqrt(2 * 0.95**2 / (1 - 0.95**2))), (3, 3.18244630528371), (10, 2.22813885198627)]:
    assert abs(student_t_quantile_oracle(0.95, dof) - value) < 1e-12 * value, dof
for n in (1, 3, 10):  # equal weights: Imhof must return the t coverage
    assert abs(quadratic_form_cdf_at_zero([1.0] + [-student_t_quantile_oracle(0.95, n) ** 2 / n] * n) - 0.95) < 1e-7, n

rng = np.random.default_rng(78)
n_coords, level_value, b_cov = 200_000, 0.95, 0.9
r_coord = rng.uniform(0.5, 2.0, n_coords)
x, m, raw_with_first = 3 * np.sqrt(r_coord) * rng.normal(size=n_coords), np.zeros(n_coords), np.zeros(n_coords)
raw = {0.9: np.zeros(n_coords), 0.99: np.zeros(n_coords)}
settings = [(0.99, 2), (0.99, 5), (0.9, 5), (0.99, 10), (0.99, 30), (0.9, 30)]  # (beta_s, n)
se_coverage, coverage_rows = np.sqrt(level_value * (1 - level_value) / n_coords), []
for step in range(1, 32):
    gain = (1 - b_cov) / (1 - b_cov**step)
    if step >= 2:
        x = x + np.sqrt(r_coord * (1 - b_cov) ** 2 / (b_cov * (1 - b_cov ** (step - 1)))) * rng.normal(size=n_coords)
    nu = x + np.sqrt(r_coord) * rng.normal(size=n_coords) - m
    m = m + gain * nu
    raw_with_first = 0.99 * raw_with_first + 0.01 * (1 - gain) * nu**2
    if step >= 2:
        raw = {bs: bs * value + (1 - bs) * (1 - gain) * nu**2 for bs, value in raw.items()}
    for bs, n in (setting for setting in settings if setting[1] == step - 1):
        n_eff = float(effective_samples_oracle(bs, n))
        t_quantile = student_t_quantile_oracle(level_value, n_eff)
        standardized = np.abs(x - m) / np.sqrt(gain * raw[bs] / (1 - bs**n))
        exact = quadratic_form_cdf_at_zero(np.concatenate([[1.0], -t_quantile**2 * (1 - bs) * bs ** np.arange(n) / (1 - bs**n)]))
        covered_t, covered_z = np.mean(standardized <= t_quantile), np.mean(standardized <= NormalDist().inv_cdf(0.975))
        first = np.abs(x - m) / np.sqrt(gain * raw_with_first / (1 - 0.99**step))  # counts the k_1 = 1 sample
        covered_first = np.mean(first <= student_t_quantile_oracle(level_value, float(effective_samples_oracle(0.99, step))))
        assert abs(covered_t - exact) < 5 * se_coverage and abs(exact - level_value) < 0.005, (bs, n, covered_t, exact)
        assert n > 5 or (covered_z < level_value - 20 * se_coverage and (bs != 0.99 or covered_first < level_value - 20 * se_coverage))
        coverage_rows.append((bs, n, n_eff, t_quantile, exact, covered_t, covered_z, covered_first if bs == 0.99 else float("nan")))
print(f"{'beta_s':>6} {'n':>3} {'n_eff':>6} {'t':>6} {'exact':>6} {'MC (t)':>7} {'MC (z)':>7} {'MC (t, k_1 sample counted)':>27}")
for row in coverage_rows:
    print("{:6.2f} {:3d} {:6.2f} {:6.3f} {:6.4f} {:7.4f} {:7.4f} {:27.4f}".format(*row))

# %% [markdown]
# ## 9. The model-based read-out (mode "fitted")
#
# Mode "innovation" estimates the current $S_t$ by the EWMA $R_t$ of past $(1-k_\tau)\nu_\tau^2$. While the error grows (a true
# noise ratio above the filter's, the first tens of steps), $R_t$ averages smaller past variances and lags $S_t$: its
# intervals are too narrow there (E7). Mode "fitted" fits the random walk itself. In units of $r$, with ratio
# $\rho = q/r$, section 1 gives the scalar recursion for any gain sequence, from the diffuse start $\hat m_1 = g_1$:
#
# $$E_1 = 1,\quad A_t = E_{t-1} + \rho,\quad S_t = A_t + 1,\quad E_t = (1-k_t)^2 A_t + k_t^2,$$
#
# and by linearity the bias-corrected EWMA has $\mathbb E[R_t] = r\,M_t(\rho)$ with $M_t = \sum_\tau w_\tau (1-k_\tau) S_\tau /
# \sum_\tau w_\tau$. So $R_t / M_t(\rho)$ is unbiased for $r$ at every step, and $\hat P_t = R_t\, E_t(\rho) / M_t(\rho)$ is
# the model's error of $\hat m_t$ at this step. At Kalman's own gain $k_t = A_t/(A_t+1)$ the recursion is Riccati's
# ($E_t = k_t$); with Adam's gain it is the error of Adam's mean.
#
# $\rho$ comes from the pooled lag statistic. Its weights must not depend on the terms they weight: for any weight $u$ fixed
# before $\nu_{t-1}$ is seen (a function of data up to $t-2$), $\mathbb E[u\,\nu_{t-1} d_t] = -r\,\mathbb E[u]$ for a random
# walk, because $\nu_{t-1} = a_{t-1} + v_{t-1}$ with $a_{t-1}$ independent of $v_{t-1}, w_t, v_t$. Mode "innovation"'s
# weight $1/R_{t-1}$ contains $\nu_{t-1}^2$ itself, which biases the ratio while $R$ has few terms. With weights
# normalized so that $\sum_i u_i R_{i} = 1$ over the sample ($R = R_{t-2}$), each step adds $1/M_{t-2}$ to the
# numerator's expectation and $(1-k_{t-1})S_{t-1}/M_{t-2}$ to the denominator's. The same recursion therefore gives the
# statistic's expectation $\phi_t(\rho)$, and inverting it on a grid of $\rho$ gives $\hat\rho$ per tensor.

# %%
A_sym, rho_sym = sp.symbols("A rho", nonnegative=True)
kalman_gain = A_sym / (A_sym + 1)
assert_identity((1 - kalman_gain) ** 2 * A_sym + kalman_gain**2 - kalman_gain, "Riccati: E_t = k_t at Kalman's gain")
weight_sym, a_prior = sp.symbols("u a_{t-1}", real=True)
lag_moments = {a_prior: {1: mu, 2: A_prev}, v_prev: gaussian(r), w_zero: gaussian(q), v_now: gaussian(r)}
# u is fixed by data up to t-2 (independent of v_{t-1}, w_t, v_t, and given those, of a_{t-1}'s fresh part): a constant here.
assert_identity(expectation(weight_sym * (a_prior + v_prev) * (w_zero + v_now - v_prev), lag_moments) + weight_sym * r,
                "E[u nu_{t-1} d_t] = -r u for u fixed before nu_{t-1}")


def fitted_model_tables_oracle(beta1, noise_beta, lag_beta, steps, ratios):
    """{t: (expected lag statistic phi_t(rho) or None at t = 2, E_t(rho) / M_t(rho))} over `ratios` (numpy, float64):
    the recursion above with Adam's gains, written out with explicit sums (no incremental EWMA)."""
    ratios = np.asarray(ratios, dtype=float)
    E, S, M, gains, out = np.ones_like(ratios), {}, {}, {}, {}
    num = den = np.zeros_like(ratios)
    for t in range(2, steps + 1):
        gains[t] = (1 - beta1) / (1 - beta1**t)
        if t >= 3:
            c = 1 / M[max(2, t - 2)]
            num = lag_beta * num + (1 - lag_beta) * c
            den = lag_beta * den + (1 - lag_beta) * (1 - gains[t - 1]) * S[t - 1] * c
        A = E + ratios
        S[t] = A + 1
        taus = np.arange(2, t + 1)
        weights = noise_beta ** (t - taus)
        M[t] = sum(w * (1 - gains[tau]) * S[tau] for w, tau in zip(weights, taus)) / weights.sum()
        E = (1 - gains[t]) ** 2 * A + gains[t] ** 2
        out[t] = (num / den if t >= 3 else None, E / M[t])
    return out


# Monte Carlo: on series from the model, mean(R_t) E_t / M_t is the mean squared error of Adam's mean at early steps.
rng_fit = np.random.default_rng(2024)
beta1_fit, noise_beta_fit, steps_fit, series_fit = 0.9, 0.99, 25, 200_000
for multiple in (0.0, 1.0, 10.0, 100.0):
    rho_fit = multiple * (1 - beta1_fit) ** 2 / beta1_fit
    level_fit, mean_fit, R_fit = np.zeros(series_fit), np.zeros(series_fit), np.zeros(series_fit)
    tables_fit = fitted_model_tables_oracle(beta1_fit, noise_beta_fit, 0.999, steps_fit, [rho_fit])
    for t in range(1, steps_fit + 1):
        level_fit = level_fit + np.sqrt(rho_fit) * rng_fit.normal(size=series_fit)
        g_fit = level_fit + rng_fit.normal(size=series_fit)
        k_fit = (1 - beta1_fit) / (1 - beta1_fit**t)
        if t >= 2:
            R_fit = noise_beta_fit * R_fit + (1 - noise_beta_fit) * (1 - k_fit) * (g_fit - mean_fit) ** 2
        mean_fit = mean_fit + k_fit * (g_fit - mean_fit)
        if t in (2, 5, 10, 25):
            predicted = R_fit.mean() / -np.expm1((t - 1) * np.log(noise_beta_fit)) * tables_fit[t][1][0]
            actual = np.mean((level_fit - mean_fit) ** 2)
            assert abs(predicted / actual - 1) < 0.02, (multiple, t, predicted, actual)
print("fitted read-out: mean(R) E_t/M_t matches the Monte Carlo MSE within 2% at steps 2, 5, 10, 25 for 0-100x")


# %% [markdown]
# ### 9b. The interval of the model-based read-out
#
# Under the model every quantity is a linear function of the independent noises $v_1, \dots, v_t$ and $w_2, \dots, w_t$
# (the diffuse start $m_1 = g_1$ cancels $x_1$): $\varepsilon_1 = -v_1$, $\nu_\tau = \varepsilon_{\tau-1} + \sqrt{\rho}\, w_\tau + v_\tau$,
# $\varepsilon_\tau = \varepsilon_{\tau-1} + \sqrt{\rho}\, w_\tau - k_\tau \nu_\tau$ (units of $r$). The interval
# $|\varepsilon_t| \le q \sqrt{\hat P_t}$ with $\hat P_t = R_t E_t / M_t$ and $R_t = \sum_\tau c_\tau \nu_\tau^2$ therefore covers
# with probability $\Pr(z^\top A z \le 0)$, $z = (\varepsilon_t, \nu_2, \dots, \nu_t)$ Gaussian, $A = \mathrm{diag}(1, -q^2 c_\tau E_t / M_t)$:
# a quadratic form in independent normals, exact by Imhof's formula (section 8). The Student-t quantile with $R$'s
# effective sample size ignores that $R$ is dominated by the last innovations, which the current error shares; at high
# drift its interval is too wide early on. The library therefore uses, for the first steps, the model's quantile,
# simulated once per $(\beta_1, b)$ (`fitted.simulated_quantiles`); this oracle checks it (tests/kalman_optim/noise_models).

# %%
def fitted_interval_coverage_oracle(beta1, noise_beta, step, rho, quantile):
    """Exact coverage of |x_t - m_t| <= quantile * sqrt(R_t E_t / M_t) under the model (ratio rho, r = 1), by Imhof."""
    t, n = step, 2 * step - 1  # noises: v_1..v_t at 0..t-1, w_2..w_t at t..2t-2
    error = np.zeros(n)
    error[0] = -1.0
    innovations, weights = [], []
    for tau in range(2, t + 1):
        k = (1 - beta1) / (1 - beta1**tau)
        nu = error.copy()
        nu[tau - 1] += 1.0
        nu[t + tau - 2] += np.sqrt(rho)
        error = error.copy()
        error[t + tau - 2] += np.sqrt(rho)
        error = error - k * nu
        innovations.append(nu)
        weights.append(noise_beta ** (t - tau) * (1 - k))
    innovations, weights = np.array(innovations), np.array(weights)
    E, M = error @ error, weights @ (innovations**2).sum(axis=1)
    L = np.vstack([error, innovations])
    form = L.T @ np.diag(np.concatenate([[1.0], -quantile**2 * E / M * weights])) @ L
    eigenvalues = np.linalg.eigvalsh(form)
    return quadratic_form_cdf_at_zero(eigenvalues[np.abs(eigenvalues) > 1e-12 * np.abs(eigenvalues).max()])


lambda_fit = (1 - beta1_fit) ** 2 / beta1_fit
student_coverage = {(multiple, t): fitted_interval_coverage_oracle(
    beta1_fit, noise_beta_fit, t, multiple * lambda_fit, student_t_quantile_oracle(0.95, float(effective_samples_oracle(noise_beta_fit, t - 1))))
    for multiple in (1.0, 100.0) for t in (3, 10, 30)}
# The filter's own ratio: the Student-t interval is right (within 0.005); at 100x it covers > 0.98 around step 10.
assert all(abs(student_coverage[1.0, t] - 0.95) < 0.005 for t in (3, 10, 30)), student_coverage
assert student_coverage[100.0, 10] > 0.98 and student_coverage[100.0, 30] > 0.97, student_coverage
print("Student-t interval of the fitted read-out, exact coverage:", {k: round(v, 4) for k, v in student_coverage.items()})

# %% [markdown]
# ## Exports

# %%
posterior_variance_from_innovations_oracle = sp.lambdify((S_t, r, k_t), error_from_innovations, "numpy")  # (S_t, r, k_t) -> E_t
observation_noise_from_lag_oracle = sp.lambdify((S_prev_sym, C_sym, k_prev), noise_from_lag_stated, "numpy")  # (S_{t-1}, C_t, k_{t-1}) -> r
steady_state_error_oracle = sp.lambdify((k, q, r), steady_error, "numpy")  # constant gain k, walk (q, r) -> E_true
steady_state_innovation_moments_oracle = sp.lambdify((k, q, r), (steady_S, steady_C1), "numpy")  # -> (S, C1)
model_only_readout_ratio_oracle = sp.lambdify((k, q, r), k * (1 - k) * steady_S / steady_error, "numpy")  # E[k R] / E_true
lag_readout_relative_variance_oracle = sp.lambdify((beta, beta_s), lag_readout_relative_variance, "numpy")
adam_moments_static_constant_oracle = static_constant_oracle  # (beta_1, t) -> c_t for q = 0
# Defined above: innovation_posterior_variance_oracle(R, phi, k), shrunk_noise_ratio_oracle(rhat_sum, R_sum, N, N0),
# effective_samples_oracle(beta_s, n), adam_moments_bias_oracle(beta_1, beta_2, lambda, t), student_t_quantile_oracle(level, dof).

export_latex("InnovationErrorIdentity", r"E_t = (1 - k_t)^2 S_t - (1 - 2k_t)\, r = \mathbb{E}[\varepsilon_t^2] - (1 - 2k_t)\, r")
export_latex("LagNoiseIdentity", r"r = (1 - k_{t-1})\, S_{t-1} - C_t = -\mathbb{E}[\nu_{t-1} d_t]")
export_latex("SteadyInnovationError", r"E = k(1-k)\, S + (1 - 2k)\, C_1")
export_latex("SteadyErrorAnyGain", r"E_{\mathrm{true}} = " + steady_error_tex)
export_latex("TrendErrorOverestimate", sp.latex(trend_overestimate))
export_latex("InnovationReadout", r"\hat E = R\,\big[(1-k)(1-\phi) + k\phi\big] = (1-k)R - (1-2k)\,\phi R")
export_latex("InnovationReadoutClip", r"0 \le \phi \le \frac{1}{1-k}")
export_latex("InnovationReadoutMinimum", r"\hat E \ge R\,\frac{\min(k, 1-k)^2}{1-k}")
export_latex(
    "ShrunkNoiseRatio", r"\phi = \frac{N\phi_{\mathrm{data}} + N_0}{N + N_0},\ \phi_{\mathrm{data}} = \frac{\sum \hat r_i}{\sum R_i}"
)
export_latex("EffectiveSampleSize", r"n_{\mathrm{eff}} = " + sp.latex(effective_samples))
export_latex("LagReadoutRelativeSD", f"{predicted_sd:.2f}")
export_latex("AdamMomentsStaticConstant", r"c_t = 1 - \frac{1}{n_{\mathrm{eff}}(\beta_1, t)} \to \frac{2\beta_1}{1+\beta_1}")
export_latex("FittedReadout", r"\hat P_t = R_t\,\frac{E_t(\hat\rho)}{M_t(\hat\rho)},\ "
             r"E_t = (1-k_t)^2 (E_{t-1} + \rho) + k_t^2,\ M_t = \mathbb{E}[R_t]/r")
export_latex("InnovationInterval", r"m_t \pm t_{n_{\mathrm{eff}}, \ell}\, \sqrt{\hat E_t}")
export_table(
    "ModelOnlyReadoutBias", [r"$\lambda_{\mathrm{true}}/\lambda_f$", r"$\mathbb{E}[kR]/E_{\mathrm{true}}$"],
    [(name, f"{float(value):.3f}") for name, value in zip(case_names, model_only_ratio)],
)
