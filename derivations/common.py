"""Shared helpers for the derivation notebooks: display, assertions and exports.

Every notebook asserts its identities with `assert_identity` (exact symbolic simplification to
zero) and `assert_numerically_equal` (evaluation at seeded random points with an explicit
tolerance), and registers what the paper needs with `export_latex` / `export_table`.
`python -m derivations` imports every notebook and writes the registry to `paper/generated/`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import sympy as sp

#: LaTeX macro name (letters only, without the leading backslash) -> LaTeX body.
LATEX_MACROS: dict[str, str] = {}
#: Table name -> complete LaTeX tabular environment.
LATEX_TABLES: dict[str, str] = {}

_MACRO_NAME = re.compile(r"^[A-Za-z]+$")


def in_notebook() -> bool:
    """True when running inside an IPython kernel (rich display available)."""
    try:
        from IPython import get_ipython
    except ImportError:  # IPython is optional when a notebook runs as a plain module
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def show(*objects) -> None:
    """Render objects (sympy expressions as LaTeX) in a notebook; do nothing in a plain import."""
    if not in_notebook():
        return
    from IPython.display import Math, display

    for obj in objects:
        if isinstance(obj, str):
            display(Math(obj))
        elif isinstance(obj, sp.Basic):
            display(Math(sp.latex(obj)))
        else:
            display(obj)


def show_equation(lhs, rhs) -> None:
    """Display `lhs = rhs` with both sides typeset."""
    lhs_tex = lhs if isinstance(lhs, str) else sp.latex(lhs)
    rhs_tex = rhs if isinstance(rhs, str) else sp.latex(rhs)
    show(f"{lhs_tex} = {rhs_tex}")


def simplify_radicals(expr: sp.Expr) -> sp.Expr:
    """Simplify after factoring every square root's radicand, so that sqrt((s + 2)^2) -> s + 2 when s > 0."""
    factored = sp.sympify(expr).replace(
        lambda x: x.is_Pow and x.exp == sp.S.Half, lambda x: sp.sqrt(sp.factor(x.base))
    )
    return sp.simplify(factored)


def assert_identity(expr: sp.Expr, what: str, simplifier: Callable[[sp.Expr], sp.Expr] = sp.simplify) -> None:
    """Assert that `expr` simplifies exactly to zero; `what` names the identity in the failure."""
    reduced = simplifier(sp.sympify(expr))
    if reduced != 0:
        raise AssertionError(f"identity failed: {what}; residual simplifies to {reduced}")


def assert_numerically_equal(
    lhs: sp.Expr | Callable,
    rhs: sp.Expr | Callable,
    samplers: Mapping[sp.Symbol, Callable[[np.random.Generator, int], np.ndarray]],
    what: str,
    *,
    n: int = 200,
    rtol: float = 1e-10,
    atol: float = 0.0,
    seed: int = 0,
) -> float:
    """Evaluate both sides at `n` seeded random points and assert |lhs - rhs| <= atol + rtol |rhs|.

    `samplers` maps each free symbol to a function (rng, n) -> array of points. Returns the largest
    relative error seen, so notebooks can print it.
    """
    rng = np.random.default_rng(seed)
    symbols = list(samplers)
    points = [samplers[s](rng, n) for s in symbols]

    def evaluate(side):
        if callable(side) and not isinstance(side, sp.Basic):
            return np.asarray(side(*points), dtype=float)
        return np.broadcast_to(np.asarray(sp.lambdify(symbols, side, "numpy")(*points), dtype=float), (n,))

    left, right = evaluate(lhs), evaluate(rhs)
    if not (np.all(np.isfinite(left)) and np.all(np.isfinite(right))):
        raise AssertionError(f"numeric check produced non-finite values: {what}")
    error = np.abs(left - right)
    bound = atol + rtol * np.abs(right)
    if not np.all(error <= bound):
        worst = int(np.argmax(error - bound))
        raise AssertionError(
            f"numeric check failed: {what}; at point {[float(p[worst]) for p in points]} "
            f"lhs={left[worst]!r} rhs={right[worst]!r}"
        )
    return float(np.max(error / np.maximum(np.abs(right), np.finfo(float).tiny)))


def uniform(low: float, high: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Sampler of points uniform in [low, high)."""
    return lambda rng, n: rng.uniform(low, high, n)


def log_uniform(low: float, high: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Sampler of points log-uniform in [low, high): covers several orders of magnitude evenly."""
    return lambda rng, n: np.exp(rng.uniform(np.log(low), np.log(high), n))


def integers(low: int, high: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Sampler of integers in [low, high] (as floats, for lambdified expressions)."""
    return lambda rng, n: rng.integers(low, high + 1, n).astype(float)


def export_latex(name: str, expr) -> str:
    """Register `expr` (a sympy expression or a LaTeX string) as the paper macro `\\KO<name>`."""
    if not _MACRO_NAME.match(name):
        raise ValueError(f"LaTeX macro names must be letters only, got {name!r}")
    body = expr if isinstance(expr, str) else sp.latex(expr)
    LATEX_MACROS[name] = body
    return body


def export_table(name: str, header: Iterable[str], rows: Iterable[Iterable], align: str | None = None) -> str:
    """Register a booktabs tabular built from `header` and `rows` under `name`."""
    header = list(header)
    rows = [list(r) for r in rows]
    spec = align or ("l" + "r" * (len(header) - 1))
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    lines += [" & ".join(str(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    LATEX_TABLES[name] = "\n".join(lines)
    return LATEX_TABLES[name]
