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
# # D5. Precision-weighted layer statistics for LAMB
#
# The filters of D1–D4 give every coordinate $i$ of a layer a posterior mean and a posterior variance
# $P_i = k\, r_i$ (D2/D3). In the non-adaptive modes (`noise="adam"`, Adam's schedule
# $k_t = (1-\beta)/(1-\beta^t)$, or `noise="constant"`) the gain $k_t$ is one scalar per parameter group and
# $r_i$ is estimated per coordinate from the optimizer's moments; in `noise="adaptive"` the gain is per coordinate.
#
# LAMB scales each layer's step by a trust ratio built from a *layer norm*, a statistic of all the layer's
# coordinates that treats them alike. This notebook derives how to combine estimates of unequal precision
# (the best linear unbiased estimator, BLUE: weights $\propto 1/P_i$) and uses it to build a precision-weighted
# layer norm that discounts high-variance coordinates. Everything is asserted.

# %%
import numpy as np
import sympy as sp

from derivations.common import assert_identity, export_latex, show, show_equation

N_SYMBOLIC = 4  # the showcase size; the stationarity equations are also solved for n = 2..6 below


def variances(n: int) -> tuple[sp.Symbol, ...]:
    return sp.symbols(f"P_1:{n + 1}", positive=True)


# %% [markdown]
# ## The best linear unbiased combination
#
# Estimates $y_i = \mu + e_i$ of a common mean $\mu$ with independent errors, $\operatorname{Var} e_i = P_i > 0$.
# A linear estimate $\sum_i w_i y_i$ is unbiased for every $\mu$ iff $\sum_i w_i = 1$, and its variance is
# $\sum_i w_i^2 P_i$. Minimize it under the constraint with a Lagrange multiplier $\nu$:
#
# $$\mathcal L = \sum_i w_i^2 P_i - \nu\Big(\sum_i w_i - 1\Big), \qquad
# \partial_{w_i}\mathcal L = 2 w_i P_i - \nu = 0 .$$
#
# Result: $w_i = \dfrac{1/P_i}{\sum_j 1/P_j}$ and the minimum variance is $\dfrac{1}{\sum_j 1/P_j}$.

# %%
nu = sp.Symbol("nu", real=True)


def solve_blue(n: int):
    """Solve the Lagrange stationarity equations for n estimates; returns (P, w, nu, Lagrangian, solution)."""
    P = variances(n)
    w = sp.symbols(f"w_1:{n + 1}", real=True)
    lagrangian = sum(wi**2 * Pi for wi, Pi in zip(w, P)) - nu * (sum(w) - 1)
    stationarity = [sp.diff(lagrangian, x) for x in (*w, nu)]
    solutions = sp.solve(stationarity, [*w, nu], dict=True)
    assert len(solutions) == 1, solutions  # a unique stationary point (the system is linear and regular)
    return P, w, lagrangian, solutions[0]


P, w, lagrangian, blue_solution = solve_blue(N_SYMBOLIC)
precision_sum = sum(1 / Pi for Pi in P)
blue_weights = [(1 / Pi) / precision_sum for Pi in P]
blue_variance = 1 / precision_sum
variance_of = lambda weights: sum(wi**2 * Pi for wi, Pi in zip(weights, P))  # noqa: E731

for wi, expected in zip(w, blue_weights):
    assert_identity(blue_solution[wi] - expected, f"{wi} = (1/P_i) / sum_j 1/P_j")
assert_identity(blue_solution[nu] - 2 * blue_variance, "the multiplier is twice the minimum variance")
assert_identity(sum(blue_weights) - 1, "the BLUE weights sum to 1 (unbiased)")
assert_identity(variance_of(blue_weights) - blue_variance, "minimum variance = 1 / sum_j 1/P_j")

# The same closed form for every n from 2 to 6 (the stationarity system is solved afresh each time).
for n_check in range(2, 7):
    P_n, w_n, _, solution_n = solve_blue(n_check)
    precision_sum_n = sum(1 / Pi for Pi in P_n)
    for wi, Pi in zip(w_n, P_n):
        assert_identity(solution_n[wi] - (1 / Pi) / precision_sum_n, f"BLUE weight for n = {n_check}")

show_equation(r"w_1", blue_weights[0])
show_equation(r"\operatorname{Var}_{\min}", blue_variance)

# %% [markdown]
# **The stationary point is the global minimum on the constraint plane.** Any other unbiased weights are
# $w^* + z$ with $\sum_i z_i = 0$, and the cross term vanishes because $w^*_i P_i$ is the same for every $i$:
#
# $$\operatorname{Var}(w^* + z) - \operatorname{Var}(w^*) = \sum_i P_i z_i^2 > 0 \quad (z \ne 0).$$
#
# Equivalently (second-order condition): the Hessian of $\mathcal L$ in $w$ is $2\operatorname{diag}(P)$, positive
# definite, in particular on the plane $\sum_i z_i = 0$; the bordered-Hessian test (one constraint) asks the last
# $n - 1$ leading principal minors of the bordered Hessian to be negative, which we check too.

# %%
z = sp.symbols(f"z_1:{N_SYMBOLIC}", real=True)
z_full = (*z, -sum(z))  # a general direction in the constraint plane
excess = variance_of([wi + zi for wi, zi in zip(blue_weights, z_full)]) - blue_variance
quadratic_form = sum(Pi * zi**2 for Pi, zi in zip(P, z_full))
assert_identity(excess - quadratic_form, "Var(w* + z) - Var(w*) = sum P_i z_i^2 on the constraint plane")
assert quadratic_form.is_nonnegative  # a sum of squares with positive coefficients

hessian = sp.hessian(lagrangian, w)
assert hessian == 2 * sp.diag(*P)
assert hessian.is_positive_definite

bordered = sp.hessian(lagrangian, (nu, *w))  # [[0, -1^T], [-1, 2 diag(P)]]
for order in range(3, N_SYMBOLIC + 2):  # the last n - 1 leading principal minors
    minor = sp.expand(bordered[:order, :order].det())
    # minus the minor is a sum of products of positive P_i with positive coefficients
    assert (-minor).is_positive, (order, minor)

# %% [markdown]
# **Never worse than equal weights, and strictly better unless all $P_i$ are equal.** Equal weights $1/n$ give
# variance $\sum_i P_i / n^2$. By Cauchy–Schwarz $n^2 = (\sum_i \sqrt{P_i} \cdot 1/\sqrt{P_i})^2 \le
# (\sum_i P_i)(\sum_i 1/P_i)$, with the exact gap (Lagrange's identity)
#
# $$\Big(\sum_i P_i\Big)\Big(\sum_i \frac{1}{P_i}\Big) - n^2 = \sum_{i<j} \frac{(P_i - P_j)^2}{P_i P_j} \ \ge 0,$$
#
# zero iff all $P_i$ are equal; and $\frac{\sum_i P_i}{n^2} - \frac{1}{\sum_j 1/P_j} = \frac{\text{gap}}{n^2 \sum_j 1/P_j}$.

# %%
equal_weight_variance = sum(P) / N_SYMBOLIC**2
gap = sum(P) * precision_sum - N_SYMBOLIC**2
gap_pairs = sum((P[i] - P[j]) ** 2 / (P[i] * P[j]) for i in range(N_SYMBOLIC) for j in range(i + 1, N_SYMBOLIC))
assert_identity(gap - gap_pairs, "Lagrange's identity for Cauchy-Schwarz")
assert gap_pairs.is_nonnegative
assert_identity(equal_weight_variance - blue_variance - gap / (N_SYMBOLIC**2 * precision_sum), "excess of equal weights")
s_common = sp.Symbol("s", positive=True)
assert gap_pairs.subs({Pi: s_common for Pi in P}) == 0  # equality when all variances are equal
assert_identity(blue_variance.subs({Pi: s_common for Pi in P}) - s_common / N_SYMBOLIC, "equal P: BLUE = plain mean")
# Equality only then: every term of gap_pairs is a square over a positive denominator, so gap = 0 forces
# P_i = P_j for every pair; e.g. moving one variance makes it positive.
assert gap_pairs.subs({P[0]: 2 * s_common, **{Pi: s_common for Pi in P[1:]}}).is_positive

# %% [markdown]
# Numerically, for random sizes $n \le 50$ and variances spread over twelve orders of magnitude (seeded): the
# closed-form weights match a direct solve of the KKT linear system, no random unbiased weights beat them,
# the BLUE variance never exceeds the equal-weight variance, with equality (to rounding) exactly when all
# $P_i$ are equal.

# %%
_Pi, _S = sp.symbols("P_i S", positive=True)  # one variance, and the total precision sum_j 1/P_j
_blue_weight_fn = sp.lambdify((_Pi, _S), (1 / _Pi) / _S, "numpy")
_blue_variance_fn = sp.lambdify(_S, 1 / _S, "numpy")


def blue_weights_oracle(P):
    """BLUE weights (1/P_i) / sum_j 1/P_j for an array of positive variances (float64 array, same shape)."""
    P = np.asarray(P, dtype=float)
    return _blue_weight_fn(P, np.sum(1 / P))


def blue_variance_oracle(P):
    """Minimum variance 1 / sum_j 1/P_j of an unbiased linear combination (float)."""
    P = np.asarray(P, dtype=float)
    return float(_blue_variance_fn(np.sum(1 / P)))


# The oracles reproduce the symbolic n = 4 expressions.
symbolic_weights_fn = sp.lambdify(P, blue_weights, "numpy")
symbolic_variance_fn = sp.lambdify(P, blue_variance, "numpy")
rng = np.random.default_rng(5)
for _ in range(50):
    values = np.exp(rng.uniform(np.log(1e-6), np.log(1e6), N_SYMBOLIC))
    np.testing.assert_allclose(blue_weights_oracle(values), symbolic_weights_fn(*values), rtol=1e-13)
    np.testing.assert_allclose(blue_variance_oracle(values), symbolic_variance_fn(*values), rtol=1e-13)

worst_kkt = 0.0
for _ in range(300):
    n_values = int(rng.integers(1, 51))
    values = np.exp(rng.uniform(np.log(1e-6), np.log(1e6), n_values))
    # KKT system: 2 P_i w_i - nu = 0, sum_i w_i = 1 (independent of the closed form)
    kkt = np.zeros((n_values + 1, n_values + 1))
    kkt[:n_values, :n_values] = np.diag(2 * values)
    kkt[:n_values, n_values] = -1.0
    kkt[n_values, :n_values] = 1.0
    rhs = np.zeros(n_values + 1)
    rhs[n_values] = 1.0
    kkt_weights = np.linalg.solve(kkt, rhs)[:n_values]
    weights = blue_weights_oracle(values)
    worst_kkt = max(worst_kkt, float(np.max(np.abs(weights - kkt_weights) / np.abs(kkt_weights))))
    best = blue_variance_oracle(values)
    assert abs(np.sum(weights**2 * values) - best) <= 1e-12 * best
    # random unbiased competitors: w* + z with sum z = 0
    for _ in range(5):
        perturbation = rng.normal(size=n_values) * weights
        perturbation -= perturbation.mean()
        assert np.sum((weights + perturbation) ** 2 * values) >= best * (1 - 1e-12)
    equal = np.sum(values) / n_values**2
    if n_values > 1:  # distinct variances (almost surely): strictly better than equal weights
        assert best < equal * (1 - 1e-9), (n_values, best, equal)
    same = np.full(n_values, values[0])
    assert abs(blue_variance_oracle(same) - np.sum(same) / n_values**2) <= 1e-12 * values[0]
# The KKT matrix has condition number ~ max P / min P (up to 1e12 here), so the solve, not the closed form,
# limits the agreement; a wrong closed form would be off by O(1).
assert worst_kkt < 1e-8, worst_kkt
# The error itself depends on the machine's LAPACK (1.5e-10 to 1.7e-10 measured), so the rendered copy states the bound.
print("BLUE closed form vs KKT solve, n <= 50: max relative error below 1e-8")

# %% [markdown]
# ## LAMB and its layer norm
#
# LAMB (You et al. 2020, Algorithm 2), per layer with weights $w \in \mathbb R^n$:
#
# $$u = \frac{\hat m}{\sqrt{\hat v} + \epsilon} + \lambda_{wd}\, w, \qquad
# w \leftarrow w - \eta\, \frac{\phi(\|w\|)}{\|u\|}\, u ,$$
#
# with $\phi$ the identity here (common implementations return a ratio of 1 when either norm is 0).
# The layer norm of the update is a mean over coordinates, $\|u\| = \sqrt{n \cdot \frac1n \sum_i u_i^2}$.
#
# **Precision-weighted norm.** Replace the plain mean of $u_i^2$ by the precision-weighted mean with
# $\pi_i = 1/P_i$:
#
# $$\|u\|_\pi = \sqrt{n\, \frac{\sum_i \pi_i u_i^2}{\sum_i \pi_i}} .$$
#
# **Modelling assumption (a heuristic, stated plainly).** Each coordinate's $u_i^2$ is treated as an estimate of
# the layer's typical squared update, with an error whose variance grows with the coordinate's posterior
# variance, taken proportional to $P_i$. Under that assumption the weighted mean is exactly the BLUE of the
# previous section applied to the $u_i^2$. It is *not* an exact BLUE of $\|u\|$: the error of $u_i^2$ is not
# Gaussian, nor exactly proportional to $P_i$, and the coordinates are not independent. What the construction
# guarantees is what we assert below: it is LAMB's norm when all coordinates are equally certain, it depends
# only on the relative precisions, it scales like a norm, and it stays between $\sqrt n \min_i |u_i|$ and
# $\sqrt n \max_i |u_i|$. $\|w\|$ is known exactly and stays as it is.

# %%
u = sp.symbols(f"u_1:{N_SYMBOLIC + 1}", real=True)
precisions = [1 / Pi for Pi in P]
weighted_mean_sq = sum(pi * ui**2 for pi, ui in zip(precisions, u)) / sum(precisions)
precision_weighted_norm = sp.sqrt(N_SYMBOLIC * weighted_mean_sq)
lamb_norm = sp.sqrt(sum(ui**2 for ui in u))

# The weighted mean is the BLUE (weights of the first section) of the u_i^2.
assert_identity(weighted_mean_sq - sum(bw * ui**2 for bw, ui in zip(blue_weights, u)), "weighted mean = BLUE of u_i^2")

# All coordinates equally certain: LAMB's norm.
assert_identity(
    precision_weighted_norm.subs({Pi: s_common for Pi in P}) - lamb_norm, "equal P_i: ||u||_pi = ||u||"
)

# Invariant to a common scale of the variances ...
c_scale = sp.Symbol("c", positive=True)
assert_identity(
    precision_weighted_norm.subs({Pi: c_scale * Pi for Pi in P}, simultaneous=True) - precision_weighted_norm,
    "||u||_pi is invariant to P -> c P",
)
# ... so in the non-adaptive modes, P_i = k_t r_i with one k_t per group, the gain cancels: only r_i matters.
k_t = sp.Symbol("k_t", positive=True)
r_obs = sp.symbols(f"r_1:{N_SYMBOLIC + 1}", positive=True)
norm_of_posterior_variances = precision_weighted_norm.subs(dict(zip(P, [k_t * ri for ri in r_obs])))
norm_of_observation_noise = precision_weighted_norm.subs(dict(zip(P, r_obs)))
assert_identity(norm_of_posterior_variances - norm_of_observation_noise, "P_i = k_t r_i: k_t cancels")
assert k_t not in sp.simplify(norm_of_posterior_variances).free_symbols

# Scale-consistent like a norm: ||c u||_pi = |c| ||u||_pi for every real c.
c_real = sp.Symbol("c", real=True)
scaled = precision_weighted_norm.subs({ui: c_real * ui for ui in u}, simultaneous=True)
assert_identity(scaled - sp.Abs(c_real) * precision_weighted_norm, "||c u||_pi = |c| ||u||_pi")
show_equation(r"\|u\|_\pi", precision_weighted_norm)

# %% [markdown]
# **Bounds.** The normalized weights $\pi_i / \sum_j \pi_j$ are positive and sum to 1, so the weighted mean of the
# $u_i^2$ is a convex combination: for every $j$,
# $\text{mean}_\pi(u^2) - u_j^2 = \sum_{i \ne j} \frac{\pi_i}{\sum_l \pi_l} (u_i^2 - u_j^2)$, which is $\ge 0$ when
# $u_j^2$ is the smallest and $\le 0$ when it is the largest. Hence
# $\sqrt n \min_i |u_i| \le \|u\|_\pi \le \sqrt n \max_i |u_i|$, and the bounds are tight: as $P_j \to 0$
# (coordinate $j$ certain) the norm tends to $\sqrt n\, |u_j|$.

# %%
normalized = [pi / sum(precisions) for pi in precisions]
assert_identity(sum(normalized) - 1, "normalized precisions sum to 1")
assert all(x.is_positive for x in normalized)
for j in range(N_SYMBOLIC):
    convex_difference = sum(normalized[i] * (u[i] ** 2 - u[j] ** 2) for i in range(N_SYMBOLIC) if i != j)
    assert_identity(weighted_mean_sq - u[j] ** 2 - convex_difference, f"mean_pi(u^2) - u_{j + 1}^2 as a convex sum")
    assert sp.limit(weighted_mean_sq, P[j], 0, "+") == u[j] ** 2  # the bound is attained in the limit


n_sym = sp.Symbol("n", positive=True)
_A, _B = sp.symbols("A B", nonnegative=True)  # A = sum_i pi_i u_i^2, B = sum_i pi_i
_weighted_norm_fn = sp.lambdify((n_sym, _A, _B), sp.sqrt(n_sym * _A / _B), "numpy")


def precision_weighted_norm_oracle(u, P):
    """||u||_pi = sqrt(n sum_i u_i^2/P_i / sum_i 1/P_i) for arrays u and positive P of the same shape (float).

    P must be positive elementwise (the library uses r_hat + tiny); n is the number of elements.
    """
    u, P = np.asarray(u, dtype=float), np.asarray(P, dtype=float)
    precision = 1 / P
    return float(_weighted_norm_fn(u.size, np.sum(precision * u**2), np.sum(precision)))


symbolic_norm_fn = sp.lambdify((*u, *P), precision_weighted_norm, "numpy")
for _ in range(50):  # the oracle reproduces the symbolic n = 4 expression
    u_values = rng.normal(size=N_SYMBOLIC) * np.exp(rng.uniform(-5, 5, N_SYMBOLIC))
    P_values = np.exp(rng.uniform(np.log(1e-6), np.log(1e6), N_SYMBOLIC))
    expected = symbolic_norm_fn(*u_values, *P_values)
    assert abs(precision_weighted_norm_oracle(u_values, P_values) - expected) <= 1e-13 * expected

for _ in range(300):  # random sizes: reduction to LAMB, scale invariance, homogeneity, bounds
    n_values = int(rng.integers(1, 51))
    u_values = rng.normal(size=n_values) * np.exp(rng.uniform(-3, 3, n_values))
    P_values = np.exp(rng.uniform(np.log(1e-6), np.log(1e6), n_values))
    norm = precision_weighted_norm_oracle(u_values, P_values)
    lamb = np.linalg.norm(u_values)
    assert abs(precision_weighted_norm_oracle(u_values, np.full(n_values, P_values[0])) - lamb) <= 1e-12 * lamb
    scale = float(np.exp(rng.uniform(-10, 10)))
    assert abs(precision_weighted_norm_oracle(u_values, scale * P_values) - norm) <= 1e-12 * norm
    c_value = float(rng.normal() * 10)
    assert abs(precision_weighted_norm_oracle(c_value * u_values, P_values) - abs(c_value) * norm) <= 1e-12 * abs(c_value) * norm
    magnitudes = np.abs(u_values)
    assert np.sqrt(n_values) * magnitudes.min() * (1 - 1e-12) <= norm <= np.sqrt(n_values) * magnitudes.max() * (1 + 1e-12)

# The cancellation is specific to a common gain: per-coordinate gains (mode "adaptive") change the norm.
u_values, r_values = rng.normal(size=20), np.exp(rng.uniform(-3, 3, 20))
per_coordinate_gains = rng.uniform(0.01, 0.5, 20)
assert abs(precision_weighted_norm_oracle(u_values, per_coordinate_gains * r_values)
           - precision_weighted_norm_oracle(u_values, r_values)) > 1e-3 * precision_weighted_norm_oracle(u_values, r_values)

# High-variance coordinates count less: making one coordinate's P larger moves the norm away from that coordinate.
u_values = np.array([1.0, 1.0, 1.0, 10.0])
assert precision_weighted_norm_oracle(u_values, [1.0, 1.0, 1.0, 100.0]) < np.linalg.norm(u_values)
assert precision_weighted_norm_oracle(u_values, [1.0, 1.0, 1.0, 0.01]) > np.linalg.norm(u_values)

# %% [markdown]
# ## Trust ratios
#
# $$\text{LAMB: } \frac{\|w\|}{\|u\|}, \qquad \text{precision-weighted: } \frac{\|w\|}{\|u\|_\pi},$$
#
# each replaced by 1 when either norm is 0 (as common LAMB implementations do). With equal $P_i$ the two
# coincide; in the non-adaptive modes the precision-weighted ratio depends on the $r_i$ only, not on $k_t$.

# %%
w_norm = sp.Symbol(r"\|w\|", positive=True)
lamb_trust_ratio = w_norm / lamb_norm
precision_weighted_trust_ratio = w_norm / precision_weighted_norm
assert_identity(
    precision_weighted_trust_ratio.subs({Pi: s_common for Pi in P}) - lamb_trust_ratio, "equal P: the LAMB ratio"
)
assert_identity(
    precision_weighted_trust_ratio.subs(dict(zip(P, [k_t * ri for ri in r_obs])))
    - precision_weighted_trust_ratio.subs(dict(zip(P, r_obs))),
    "the ratio does not depend on the common gain",
)


def _trust_ratio(w_norm_value: float, u_norm_value: float) -> float:
    if w_norm_value > 0 and u_norm_value > 0:
        return float(w_norm_value / u_norm_value)
    return 1.0  # LAMB's convention when either norm is zero


def lamb_trust_ratio_oracle(w, u):
    """LAMB's trust ratio ||w|| / ||u|| (phi = identity), 1 when either norm is 0."""
    return _trust_ratio(float(np.linalg.norm(np.asarray(w, dtype=float))), float(np.linalg.norm(np.asarray(u, dtype=float))))


def precision_weighted_trust_ratio_oracle(w, u, P):
    """||w|| / ||u||_pi (phi = identity), 1 when either norm is 0; P positive, same shape as u."""
    return _trust_ratio(float(np.linalg.norm(np.asarray(w, dtype=float))), precision_weighted_norm_oracle(u, P))


symbolic_ratio_fn = sp.lambdify((w_norm, *u, *P), precision_weighted_trust_ratio, "numpy")
for _ in range(50):
    w_values, u_values = rng.normal(size=N_SYMBOLIC), rng.normal(size=N_SYMBOLIC)
    P_values = np.exp(rng.uniform(-5, 5, N_SYMBOLIC))
    expected = symbolic_ratio_fn(np.linalg.norm(w_values), *u_values, *P_values)
    assert abs(precision_weighted_trust_ratio_oracle(w_values, u_values, P_values) - expected) <= 1e-13 * expected
    assert abs(precision_weighted_trust_ratio_oracle(w_values, u_values, np.ones(N_SYMBOLIC)) - lamb_trust_ratio_oracle(w_values, u_values)) <= 1e-13 * expected
assert lamb_trust_ratio_oracle(np.zeros(3), np.ones(3)) == 1.0
assert precision_weighted_trust_ratio_oracle(np.ones(3), np.zeros(3), np.ones(3)) == 1.0

# %% [markdown]
# ## Exports
# Oracles (float64 numpy functions; the per-element formulas are `sympy.lambdify`'d, the sums over the layer
# are numpy reductions) for the test-suite, and LaTeX for the paper ($\pi_i = 1/P_i$).

# %%
i_idx, j_idx = sp.symbols("i j", integer=True, positive=True)
n_tex = sp.Symbol("n", integer=True, positive=True)
pi_b, P_b, u_b = sp.IndexedBase("pi"), sp.IndexedBase("P"), sp.IndexedBase("u")
precision_total = sp.Sum(pi_b[j_idx], (j_idx, 1, n_tex))
blue_weights_general = pi_b[i_idx] / precision_total
blue_variance_general = 1 / precision_total
norm_general = sp.sqrt(
    n_tex * sp.Sum(pi_b[i_idx] * u_b[i_idx] ** 2, (i_idx, 1, n_tex)) / sp.Sum(pi_b[i_idx], (i_idx, 1, n_tex)),
    evaluate=False,
)

# The general-n expressions, at n = 4 with pi_i = 1/P_i, are the ones asserted above.
at_four = {pi_b[m + 1]: 1 / P[m] for m in range(N_SYMBOLIC)} | {u_b[m + 1]: u[m] for m in range(N_SYMBOLIC)}
assert_identity(blue_weights_general.subs({n_tex: 4, i_idx: 1}).doit().subs(at_four) - blue_weights[0], "general BLUE weight")
assert_identity(blue_variance_general.subs(n_tex, 4).doit().subs(at_four) - blue_variance, "general BLUE variance")
assert_identity(norm_general.subs(n_tex, 4).doit().subs(at_four) - precision_weighted_norm, "general weighted norm")
show(norm_general)

export_latex("PrecisionDefinition", r"\pi_i = 1/P_i")
export_latex("BlueWeights", blue_weights_general)
export_latex("BlueVariance", blue_variance_general)
export_latex("PrecisionWeightedNorm", norm_general)
export_latex("PrecisionWeightedTrustRatio", r"\frac{\|w\|}{" + sp.latex(norm_general) + "}")
export_latex("LambTrustRatio", r"\frac{\|w\|}{\|u\|}")
export_latex("CauchySchwarzGap", r"\Big(\sum_i P_i\Big)\Big(\sum_i \frac{1}{P_i}\Big) - n^2 = \sum_{i<j} \frac{(P_i - P_j)^2}{P_i P_j}")
