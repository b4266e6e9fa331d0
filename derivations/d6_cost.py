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
# # D6. Cost per step: arithmetic, bytes moved, and optimizer state
#
# An optimizer step is an elementwise pass (or two, for LAMB) over every parameter. Per element it reads a few
# float32 tensors, does a few dozen operations, and writes a few tensors back. We write each variant's
# per-element update as a sympy expression and count:
#
# * **arithmetic**: `sympy.count_ops(visual=True)` on the variant's outputs after `sympy.cse` (a shared
#   subexpression is computed once). Convention: add, sub, mul, div, neg: 1 flop each; a square: 1 mul; max
#   and min: 1 flop each (one comparison, e.g. clamping); square roots are counted separately (1 op each).
#   Per-group scalars (functions of the step, the betas, the learning rate: computed once per tensor, not per
#   element) are plain symbols and cost nothing per element. These are operation counts *of the formulas*,
#   not of a particular kernel: a compiler may fuse a multiply-add or keep extra temporaries.
# * **bytes moved**: float32, $4 \times (\#\text{tensors read} + \#\text{tensors written})$ per element; reductions
#   accumulate in registers and cost no traffic.
# * **optimizer state**: $4 \times \#\text{state tensors}$ bytes per parameter (persistent between steps).
#
# The arithmetic intensity is (flops + square roots) per byte moved.

# %%
import copy

import sympy as sp
from sympy.core.parameters import distribute

from derivations.common import assert_identity, assert_numerically_equal, export_latex, export_table, integers, uniform
from derivations.d1_steady_state import lam as noise_ratio_symbol
from derivations.d1_steady_state import steady_gain_stable

BYTES_PER_FLOAT = 4  # float32

# %% [markdown]
# ## The operation counter
#
# `count_ops` reads an exponent $1/2$ as a rational and charges a DIV for it besides the POW (so $\sqrt v$ would
# cost "POW + DIV"). We therefore rewrite every square root as an opaque function `SQRT` before counting, and
# check that every remaining power is a square (1 mul) or a reciprocal (counted by `count_ops` as DIV).

# %%
SQRT = sp.Function("SQRT")  # opaque: count_ops reports it as FUNC_SQRT and does not look at an exponent
FLOP_OPS = {"ADD", "SUB", "MUL", "DIV", "NEG", "POW", "MAX", "MIN"}  # POW is a square here (asserted)
SQRT_OPS = {"FUNC_SQRT"}


def with_opaque_sqrt(expr: sp.Expr) -> sp.Expr:
    return sp.sympify(expr).replace(lambda x: x.is_Pow and x.exp == sp.S.Half, lambda x: SQRT(x.base))


def count_operations(outputs: list[sp.Expr]) -> tuple[int, int, sp.Expr]:
    """(flops, square roots, visual count) of the outputs of one elementwise pass, after common subexpressions."""
    with distribute(False):  # rebuilding 2*(x + y) must not expand it to 2*x + 2*y (one more mul)
        return _count_operations(outputs)


def _count_operations(outputs: list[sp.Expr]) -> tuple[int, int, sp.Expr]:
    prepared = [with_opaque_sqrt(o) for o in outputs]
    for expr in prepared:
        for power in expr.atoms(sp.Pow):
            assert power.exp in (2, -1), f"only squares and reciprocals are counted, got {power}"
    replacements, reduced = sp.cse(prepared)
    # cse is exact: substituting the replacements back gives the outputs.
    rebuilt = list(reduced)
    for symbol, value in reversed(replacements):
        rebuilt = [e.subs(symbol, value) for e in rebuilt]
    for original, back in zip(prepared, rebuilt):
        assert sp.expand((original - back).doit()) == 0
    visual = sp.count_ops([value for _, value in replacements] + list(reduced), visual=True)
    visual = sp.sympify(visual)
    names = {s.name for s in visual.free_symbols}
    unknown = names - FLOP_OPS - SQRT_OPS
    assert not unknown, f"operations outside the counting convention: {unknown}"
    flops = sum(int(visual.coeff(sp.Symbol(op))) for op in FLOP_OPS)
    sqrts = sum(int(visual.coeff(sp.Symbol(op))) for op in SQRT_OPS)
    # the coefficients account for the whole count
    assert flops + sqrts == int(visual.subs({s: 1 for s in visual.free_symbols}))
    return flops, sqrts, visual


# Hand-counted anchors for the counter.
_a, _b, _c, _x = sp.symbols("a b c x", real=True)
_l = sp.Symbol("lambda", positive=True)
assert count_operations([_a + _c * (_b - _a)])[:2] == (3, 0)  # sub, mul, add
assert count_operations([2 / (1 + sp.sqrt(1 + 4 / _l))])[:2] == (4, 1)  # div, add, sqrt, add, div
assert sp.count_ops(2 / (1 + sp.sqrt(1 + 4 / _l))) == 6  # raw count_ops: the 1/2 exponent adds a spurious DIV
assert count_operations([sp.Min(sp.Max(_x / _a, _b), _c)])[:2] == (3, 0)  # div and a clip (2 comparisons)
assert count_operations([sp.sqrt(_x) + _c, _b / (sp.sqrt(_x) + _c)])[:2] == (2, 1)  # shared: add, sqrt once; div
assert count_operations([-_a])[:2] == (1, 0) and count_operations([_x * _a**2])[:2] == (2, 0)

# %% [markdown]
# ## Per-element updates
#
# Tensors (one float32 per element): $p$ parameter, $g$ gradient, $m, v$ moments, and the extra state of the
# adaptive mode. Per-group scalars: $\delta = 1 - \eta\,\lambda_{wd}$ (decoupled weight decay), $a_1 = 1-\beta_1$,
# $a_2 = 1 - \beta_2$, $\alpha = \eta / (1-\beta_1^t)$, $\sigma_2 = \sqrt{1-\beta_2^t}$, the gains $k_t$, $k_{2,t}$,
# $\epsilon$, and the constants of the estimators.

# %%
TENSOR_NAMES = ["p", "g", "m", "v", "g_prev", "d_prev", "c_0", "c_1", "u"]
T = {name: sp.Symbol(name, real=True) for name in TENSOR_NAMES}
p, g, m, v, g_prev, d_prev, c0, c1, u = (T[name] for name in TENSOR_NAMES)
decay, a1, a2, alpha, sigma2, beta2, lr, eps = sp.symbols("delta a_1 a_2 alpha sigma_2 beta_2 eta epsilon", positive=True)
k1, k2, a_noise, tiny, lam_min, lam_max = sp.symbols("k_t k_{2t} a tiny lambda_min lambda_max", positive=True)
c_bias, wd, step_scale = sp.symbols("c lambda_wd s", positive=True)  # s = eta * trust ratio, per layer
acc_p, acc_u, acc_pu, acc_pi = sp.symbols("A_p A_u A_piu A_pi", real=True)  # reduction accumulators (registers)
ACCUMULATORS = {acc_p, acc_u, acc_pu, acc_pi}


def kalman_moments():
    """Posterior means with the bias correction folded into the gains (D2): no per-element correction."""
    m_new = m + k1 * (g - m)
    v_new = v + k2 * (g**2 - v)
    return m_new, v_new


def kalman_step(direction, v_new):
    return p * decay - lr * direction / (sp.sqrt(v_new) + eps)


VARIANTS: dict[str, dict] = {}

# AdamW, as torch computes it: raw EWMAs, bias corrections as per-group scalars.
m_adamw = m + a1 * (g - m)
v_adamw = beta2 * v + a2 * g**2
p_adamw = p * decay - alpha * m_adamw / (sp.sqrt(v_adamw) / sigma2 + eps)
VARIANTS["AdamW"] = dict(
    passes=[dict(writes={"p": p_adamw, "m": m_adamw, "v": v_adamw}, reduce={}, reads=["p", "g", "m", "v"])],
    state=["m", "v"],
)

# KalmanAdam, noise="adam": the gain is Adam's k_t = (1 - beta_1)/(1 - beta_1^t), m is the posterior mean itself.
m_k, v_k = kalman_moments()
p_k = kalman_step(m_k, v_k)
VARIANTS["KalmanAdam adam"] = dict(
    passes=[dict(writes={"p": p_k, "m": m_k, "v": v_k}, reduce={}, reads=["p", "g", "m", "v"])], state=["m", "v"]
)
# noise="constant": the same per-element expression; only the per-group k_t comes from the Riccati recursion.
VARIANTS["KalmanAdam constant"] = copy.deepcopy(VARIANTS["KalmanAdam adam"])

# %% [markdown]
# **The "adam" row computes AdamW's update.** With $m = \tilde m/(1-\beta_1^{t-1})$, $v = \tilde v/(1-\beta_2^{t-1})$
# (posterior means from Adam's raw moments $\tilde m, \tilde v$) and $k_t = (1-\beta)/(1-\beta^t)$, the new posterior
# means are the raw moments over $1 - \beta^t$, and the parameter update is AdamW's (D2). So the two rows count the
# same step, written two ways. (The library's `noise="adam"` keeps Adam's raw moments, so that it is bit-for-bit
# torch's AdamW: its count is the AdamW row's.)

# %%
b1s, b2s = sp.symbols("beta_1 beta_2", positive=True)
e1, e2 = sp.symbols("e_1 e_2", positive=True)  # beta_1^(t-1), beta_2^(t-1)
bc1, bc2 = 1 - b1s * e1, 1 - b2s * e2  # 1 - beta^t
raw_to_posterior = {
    m: m / (1 - e1), v: v / (1 - e2), k1: (1 - b1s) / bc1, k2: (1 - b2s) / bc2,
}
adamw_scalars = {a1: 1 - b1s, a2: 1 - b2s, beta2: b2s, alpha: lr / bc1, sigma2: sp.sqrt(bc2)}
assert_identity(m_k.subs(raw_to_posterior, simultaneous=True) - m_adamw.subs(adamw_scalars) / bc1, "posterior m = raw m / (1 - b1^t)")
assert_identity(v_k.subs(raw_to_posterior, simultaneous=True) - v_adamw.subs(adamw_scalars) / bc2, "posterior v = raw v / (1 - b2^t)")
# Given the moments, the steps agree: sqrt(v_raw / bc2) = sqrt(v_raw) / sqrt(bc2) for v_raw >= 0, bc2 > 0.
m_raw_new, v_raw_new, bc1_s, bc2_s = sp.symbols("mtilde vtilde b_1t b_2t", positive=True)
step_kalman = kalman_step(m, v).subs({m: m_raw_new / bc1_s, v: v_raw_new / bc2_s})
step_adamw = (p * decay - lr / bc1_s * m_raw_new / (sp.sqrt(v_raw_new) / sp.sqrt(bc2_s) + eps))
assert_identity(step_kalman - step_adamw, "KalmanAdam(adam) step = AdamW step")
# And numerically, end to end through one full step from raw moments at step t.
t_sym = sp.Symbol("t", positive=True)
full_kalman = p_k.subs(raw_to_posterior, simultaneous=True).subs({e1: b1s ** (t_sym - 1), e2: b2s ** (t_sym - 1)})
full_adamw = p_adamw.subs(adamw_scalars).subs({e1: b1s ** (t_sym - 1), e2: b2s ** (t_sym - 1)})
worst = assert_numerically_equal(
    full_kalman, full_adamw,
    {p: uniform(-3, 3), g: uniform(-3, 3), m: uniform(-1, 1), v: uniform(0.01, 4), decay: uniform(0.9, 1),
     lr: uniform(1e-4, 1e-1), eps: uniform(1e-8, 1e-3), b1s: uniform(0.5, 0.99), b2s: uniform(0.9, 0.9999),
     t_sym: integers(2, 500)},
    "KalmanAdam(adam) update = AdamW update", rtol=1e-12,
)
print(f"KalmanAdam(adam) vs AdamW, one step: max relative error {worst:.1e}")

# %% [markdown]
# **Adaptive noise (D4).** Differences $d_t = g_t - g_{t-1}$ have $\operatorname{Var} d = q + 2r$ and lag-1 covariance
# $-r$; running averages $c_0 \approx \operatorname{Var} d$, $c_1 \approx \operatorname{Cov}(d_t, d_{t-1})$ give per
# coordinate $\hat r = \max(-c_1, \text{tiny})$, $\hat q = \max(c_0 + 2c_1, 0)$, $\hat\lambda$ clipped, and the
# steady-state gain of D1, $k = 2/(1 + \sqrt{1 + 4/\hat\lambda})$. The second moment keeps a per-group gain.
# (The library uses the diffuse-prior closed form of D1 for the gain, with a log and two exponentials per element,
# and bias-corrects $c_0, c_1$ by per-group scalars; that changes the operation count, not the bytes.)

# %%
q_s, r_s = sp.symbols("q r", real=True)
c0_s, c1_s = sp.symbols("C_0 C_1", real=True)
moment_solution = sp.solve([c0_s - (q_s + 2 * r_s), c1_s + r_s], [q_s, r_s], dict=True)[0]
assert moment_solution == {r_s: -c1_s, q_s: c0_s + 2 * c1_s}  # the estimators invert D4's moment equations

with distribute(False):  # keep 2 * c_1' and k (g - m) as written: sympy would expand 2 * (sum) into 2 products
    d_new = g - g_prev
    c0_new = c0 + a_noise * (d_new**2 - c0)
    c1_new = c1 + a_noise * (d_new * d_prev - c1)
    r_hat_adaptive = sp.Max(-c1_new, tiny)
    q_hat_adaptive = sp.Max(c0_new + 2 * c1_new, 0)
    lam_hat = sp.Min(sp.Max(q_hat_adaptive / r_hat_adaptive, lam_min), lam_max)
    gain_adaptive = 2 / (1 + sp.sqrt(1 + 4 / lam_hat))
    m_adaptive = m + gain_adaptive * (g - m)
assert gain_adaptive.subs(lam_hat, noise_ratio_symbol) == steady_gain_stable  # D1's steady-state gain
v_adaptive = v + k2 * (g**2 - v)
p_adaptive = kalman_step(m_adaptive, v_adaptive)
VARIANTS["KalmanAdam adaptive"] = dict(
    passes=[dict(
        writes={"p": p_adaptive, "m": m_adaptive, "v": v_adaptive, "g_prev": g, "d_prev": d_new,
                "c_0": c0_new, "c_1": c1_new},
        reduce={}, reads=["p", "g", "m", "v", "g_prev", "d_prev", "c_0", "c_1"],
    )],
    state=["m", "v", "g_prev", "d_prev", "c_0", "c_1"],
)

# %% [markdown]
# **Variance adaptation (D3), on top of `noise="adam"`.** $\hat r = \max(v - m^2, 0)/c$ from the moments already
# in hand, $P = k_t \hat r$, and the step is scaled by $m^2/(m^2 + P)$ (denominator clamped at tiny, as the library
# does). No extra state.

# %%
r_hat_moments = sp.Max(v_k - m_k**2, 0) / c_bias
posterior_variance = k1 * r_hat_moments
factor = m_k**2 / sp.Max(m_k**2 + posterior_variance, tiny)
# factor * m as the library computes it (m^2 / denominator, then times m); unevaluated, sympy would fold it to m^3.
p_variance_adapted = kalman_step(sp.UnevaluatedExpr(factor) * m_k, v_k)
VARIANTS["KalmanAdam adam + variance adaptation"] = dict(
    passes=[dict(writes={"p": p_variance_adapted, "m": m_k, "v": v_k}, reduce={}, reads=["p", "g", "m", "v"])],
    state=["m", "v"],
)

# %% [markdown]
# **LAMB.** Pass 1 updates the moments, writes the update $u = \hat m/(\sqrt{\hat v} + \epsilon) + \lambda_{wd}\,p$ to a
# buffer and accumulates $\|p\|^2$ and $\|u\|^2$ (reductions, in registers); the trust ratio is a per-layer scalar;
# pass 2 reads $p, u$ and writes $p - s\,u$ with $s = \eta \cdot \text{ratio}$. **KalmanLAMB with precision
# weighting (D5)** uses the posterior means (gains folded in), and in pass 1 the weight
# $\pi = 1/(\hat r + \text{tiny})$ and the sums $\sum \pi u^2$, $\sum \pi$ instead of $\sum u^2$.

# %%
bc1_group = sp.Symbol("b_{1t}", positive=True)  # 1 - beta_1^t, per group
u_lamb = (m_adamw / bc1_group) / (sp.sqrt(v_adamw) / sigma2 + eps) + wd * p
pass2 = dict(writes={"p": p - step_scale * u}, reduce={}, reads=["p", "u"])
VARIANTS["LAMB"] = dict(
    passes=[
        dict(writes={"m": m_adamw, "v": v_adamw, "u": u_lamb}, reduce={acc_p: acc_p + p**2, acc_u: acc_u + u_lamb**2},
             reads=["g", "m", "v", "p"]),
        pass2,
    ],
    state=["m", "v"],
)
u_kalman = m_k / (sp.sqrt(v_k) + eps) + wd * p
precision_weight = 1 / (r_hat_moments + tiny)
VARIANTS["KalmanLAMB precision weighting"] = dict(
    passes=[
        dict(writes={"m": m_k, "v": v_k, "u": u_kalman},
             reduce={acc_p: acc_p + p**2, acc_pu: acc_pu + precision_weight * u_kalman**2, acc_pi: acc_pi + precision_weight},
             reads=["g", "m", "v", "p"]),
        copy.deepcopy(pass2),
    ],
    state=["m", "v"],
)

# %% [markdown]
# ## Counting
#
# For each pass: the tensors read must be exactly the tensors the formulas use (checked against the free symbols),
# every state tensor is read and written each step, and the operations are counted after `cse` over the pass's
# outputs and reductions.

# %%
def cost(name: str, spec: dict) -> dict:
    flops = sqrts = reads = writes = 0
    for stage in spec["passes"]:
        expressions = list(stage["writes"].values()) + list(stage["reduce"].values())
        used = set().union(*(e.free_symbols for e in expressions))
        used_tensors = {s.name for s in used if s in T.values()}
        assert used_tensors == set(stage["reads"]), (name, used_tensors, stage["reads"])
        assert set(stage["reduce"]) <= ACCUMULATORS
        for acc, expr in stage["reduce"].items():  # a reduction adds one term per element
            assert sp.expand(expr - acc).has(acc) is False
        f, s, _ = count_operations(expressions)
        flops, sqrts = flops + f, sqrts + s
        reads, writes = reads + len(stage["reads"]), writes + len(stage["writes"])
    written = set().union(*(set(stage["writes"]) for stage in spec["passes"]))
    read = set().union(*(set(stage["reads"]) for stage in spec["passes"]))
    assert set(spec["state"]) <= written & read  # state is carried over: read and rewritten every step
    bytes_moved = BYTES_PER_FLOAT * (reads + writes)
    return dict(
        variant=name, flops_per_element=flops, sqrt_per_element=sqrts, bytes_moved_per_element=bytes_moved,
        state_bytes_per_parameter=BYTES_PER_FLOAT * len(spec["state"]),
        arithmetic_intensity=(flops + sqrts) / bytes_moved,
    )


ORDER = [
    "AdamW", "KalmanAdam adam", "KalmanAdam adam + variance adaptation", "KalmanAdam constant", "KalmanAdam adaptive",
    "LAMB", "KalmanLAMB precision weighting",
]
assert sorted(ORDER) == sorted(VARIANTS)
raw_costs = {name: cost(name, VARIANTS[name]) for name in ORDER}
adamw_row = raw_costs["AdamW"]
COST_TABLE = []
for name in ORDER:
    row = raw_costs[name]
    intensity = row.pop("arithmetic_intensity")
    row["state_bytes_relative_to_adamw"] = row["state_bytes_per_parameter"] / adamw_row["state_bytes_per_parameter"]
    row["bytes_relative_to_adamw"] = row["bytes_moved_per_element"] / adamw_row["bytes_moved_per_element"]
    row["arithmetic_intensity"] = intensity  # (flops + sqrt) per byte moved
    COST_TABLE.append(row)
ROW = {row["variant"]: row for row in COST_TABLE}
for row in COST_TABLE:
    print(f"{row['variant']:40s} {row['flops_per_element']:3d} flops {row['sqrt_per_element']} sqrt "
          f"{row['bytes_moved_per_element']:3d} B moved {row['state_bytes_per_parameter']:3d} B state "
          f"intensity {row['arithmetic_intensity']:.2f}")

# %% [markdown]
# **Hand counts agree** (flops + square roots):
#
# * AdamW: $m$ (sub, mul, add) + $v$ (square, 2 mul, add) + denominator (sqrt, div by $\sigma_2$, add) + step
#   (mul $p\delta$, mul, div, sub) = 13 + 1. The folded-gain form has no division by $\sigma_2$ and $v$ as
#   $v + k_{2}(g^2 - v)$ (square, sub, mul, add): 12 + 1.
# * adaptive: $d$ (1), $c_0'$ (4), $c_1'$ (4), $\hat r$ (neg, max: 2), $\hat q$ (mul, add, max: 3), $\hat\lambda$
#   (div, 2 comparisons: 3), $k$ (div, add, add, div: 4, + sqrt), $m'$ (3), $v'$ (4), step (5, + sqrt) = 33 + 2.
# * variance adaptation: 12 + $m'^2$, sub, max, div by $c$, mul by $k_t$, add, max with tiny, div, mul = 21 + 1.
# * LAMB: pass 1 = $m'$ (3) + $v'$ (4) + $u$ (div by $\sigma_2$, add $\epsilon$, div, div by $1-\beta_1^t$, mul $\lambda_{wd} p$, add: 6, + sqrt) + $\|p\|^2$
#   and $\|u\|^2$ (square, add: 2 each); pass 2 = mul, sub: 19 + 1.
# * KalmanLAMB: $m'$ (3) + $v'$ (4) + $u$ (4 + sqrt) + $\hat r$ (square, sub, max, div: 4) + $\pi$ (add, div: 2)
#   + $\sum \pi u^2$ (square, mul, add: 3) + $\sum\pi$ (1) + $\|p\|^2$ (2) + pass 2 (2) = 25 + 1.

# %%
HAND_COUNTS = {
    "AdamW": (13, 1), "KalmanAdam adam": (12, 1), "KalmanAdam constant": (12, 1), "KalmanAdam adaptive": (33, 2),
    "KalmanAdam adam + variance adaptation": (21, 1), "LAMB": (19, 1), "KalmanLAMB precision weighting": (25, 1),
}
for name, expected in HAND_COUNTS.items():
    assert (ROW[name]["flops_per_element"], ROW[name]["sqrt_per_element"]) == expected, (name, ROW[name], expected)

# %% [markdown]
# ## The structural facts
#
# * `noise="adam"` and `noise="constant"` move exactly AdamW's bytes and keep exactly its state (8 B per parameter):
#   the Kalman reading of Adam costs no memory.
# * Variance adaptation adds arithmetic but no bytes and no state.
# * The adaptive mode keeps 6 tensors: 24 B of state per parameter, three times AdamW's.
# * LAMB's second pass costs bytes, not state; precision weighting adds no bytes to LAMB.
# * Every variant does less than one operation per byte moved, so each is memory-bound on any processor
#   whose peak flop/byte ratio exceeds 1 (an H100 does about 60 fp32 flops per byte of HBM bandwidth): the
#   extra arithmetic of the Kalman variants is hidden behind the memory traffic; only extra bytes cost time.

# %%
adamw = ROW["AdamW"]
for name in ["KalmanAdam adam", "KalmanAdam constant", "KalmanAdam adam + variance adaptation"]:
    assert ROW[name]["bytes_moved_per_element"] == adamw["bytes_moved_per_element"] == 28, name
    assert ROW[name]["state_bytes_per_parameter"] == adamw["state_bytes_per_parameter"] == 8, name
assert ROW["KalmanAdam constant"]["flops_per_element"] == ROW["KalmanAdam adam"]["flops_per_element"]
assert ROW["KalmanAdam adam + variance adaptation"]["flops_per_element"] > ROW["KalmanAdam adam"]["flops_per_element"]
assert ROW["KalmanAdam adaptive"]["state_bytes_per_parameter"] == 24
assert ROW["KalmanAdam adaptive"]["state_bytes_relative_to_adamw"] == 3
assert ROW["KalmanAdam adaptive"]["bytes_moved_per_element"] == 60
assert ROW["LAMB"]["bytes_moved_per_element"] == ROW["KalmanLAMB precision weighting"]["bytes_moved_per_element"] == 40
assert ROW["LAMB"]["state_bytes_per_parameter"] == ROW["KalmanLAMB precision weighting"]["state_bytes_per_parameter"] == 8
assert all(row["arithmetic_intensity"] < 1 for row in COST_TABLE), [(r["variant"], r["arithmetic_intensity"]) for r in COST_TABLE]
max_intensity = max(row["arithmetic_intensity"] for row in COST_TABLE)

# %% [markdown]
# ## Exports
# `COST_TABLE` (and `cost_table_oracle()`, a fresh copy) for the tests and the experiments, the table for the paper,
# and the key numbers as macros.

# %%
def cost_table_oracle() -> list[dict]:
    """The cost table: one dict per variant (see the keys of COST_TABLE); a fresh copy each call."""
    return copy.deepcopy(COST_TABLE)


LATEX_NAMES = {
    "AdamW": r"AdamW (torch)",
    "KalmanAdam adam": r"KalmanAdam, \texttt{noise=adam}",
    "KalmanAdam constant": r"KalmanAdam, \texttt{noise=constant}",
    "KalmanAdam adaptive": r"KalmanAdam, \texttt{noise=adaptive}",
    "KalmanAdam adam + variance adaptation": r"KalmanAdam, \texttt{adam} + \texttt{variance\_adaptation}",
    "LAMB": r"LAMB",
    "KalmanLAMB precision weighting": r"KalmanLAMB, \texttt{precision\_weighting}",
}
header = [
    "variant", "flops/elem.", r"$\sqrt{\cdot}$/elem.", "bytes moved/elem.", "state B/param.",
    r"state $\times$AdamW", r"bytes $\times$AdamW", "ops/byte",
]
rows = [
    [LATEX_NAMES[r["variant"]], r["flops_per_element"], r["sqrt_per_element"], r["bytes_moved_per_element"],
     r["state_bytes_per_parameter"], f"{r['state_bytes_relative_to_adamw']:.0f}", f"{r['bytes_relative_to_adamw']:.2f}",
     f"{r['arithmetic_intensity']:.2f}"]
    for r in COST_TABLE
]
cost_table_tex = export_table("CostTable", header, rows)
print(cost_table_tex)

export_latex("AdamBytesPerParameter", str(adamw["bytes_moved_per_element"]))
export_latex("AdamStateBytesPerParameter", str(adamw["state_bytes_per_parameter"]))
export_latex("AdamFlopsPerElement", str(adamw["flops_per_element"]))
export_latex("AdaptiveStateBytesPerParameter", str(ROW["KalmanAdam adaptive"]["state_bytes_per_parameter"]))
export_latex("AdaptiveBytesPerParameter", str(ROW["KalmanAdam adaptive"]["bytes_moved_per_element"]))
export_latex("AdaptiveFlopsPerElement", str(ROW["KalmanAdam adaptive"]["flops_per_element"]))
export_latex("VarianceAdaptationFlopsPerElement", str(ROW["KalmanAdam adam + variance adaptation"]["flops_per_element"]))
export_latex("LambBytesPerParameter", str(ROW["LAMB"]["bytes_moved_per_element"]))
export_latex("PrecisionWeightingFlopsPerElement", str(ROW["KalmanLAMB precision weighting"]["flops_per_element"]))
export_latex("MaxArithmeticIntensity", f"{max_intensity:.2f}")
