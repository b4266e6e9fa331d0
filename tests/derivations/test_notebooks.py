"""The derivation notebooks run, assert their identities, export oracles and LaTeX, and their rendered
copies in derivations/executed/ are up to date."""

import runpy

import pytest
import sympy as sp

from derivations import common
from derivations.__main__ import main as derivations_main
from derivations.notebooks import notebook_sources, stale_notebooks

SOURCES = notebook_sources()


def test_derivations_are_numbered_consecutively():
    stems = [s.stem.split("_")[0] for s in SOURCES]
    assert stems == [f"d{i}" for i in range(1, len(stems) + 1)]  # d1, d2, ... with no gap or duplicate
    assert len(stems) >= 7  # at least d1 (steady state) ... d7 (noise from innovations)


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_notebook_runs_and_exports(source):
    # runpy executes the notebook afresh (assertions included), independent of import caching.
    namespace = runpy.run_path(str(source), run_name=f"notebook_{source.stem}")
    oracles = [name for name, value in namespace.items() if name.endswith("_oracle") and callable(value)]
    assert oracles, f"{source.name} exports no oracle"


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_notebook_source_is_jupytext_percent(source):
    text = source.read_text()
    assert "format_name: percent" in text and "# %% [markdown]" in text


def test_make_derivations_writes_latex(tmp_path):
    assert derivations_main(["--latex-dir", str(tmp_path)]) == 0
    tex = (tmp_path / "derivations.tex").read_text()
    for macro in ["SteadyGain", "AdamGain", "AdamProcessNoise", "SteadyPriorVariance"]:
        assert rf"\newcommand{{\KO{macro}}}" in tex
    assert len(common.LATEX_MACROS) >= 20


def test_executed_notebooks_are_fresh():
    problems = stale_notebooks()
    assert not problems, "; ".join(problems) + " -- run `make derivations` and commit derivations/executed/"


def test_assert_identity_rejects_a_false_identity():
    x = sp.Symbol("x", positive=True)
    common.assert_identity(sp.sqrt(x**2) - x, "sqrt(x^2) = x for x > 0")
    with pytest.raises(AssertionError, match="identity failed: wrong"):
        common.assert_identity(sp.sqrt(x**2) - 2 * x, "wrong")


def test_assert_numerically_equal_rejects_a_small_discrepancy():
    x = sp.Symbol("x")
    common.assert_numerically_equal(sp.sin(x) ** 2 + sp.cos(x) ** 2, sp.Integer(1), {x: common.uniform(-9, 9)}, "pythagoras")
    with pytest.raises(AssertionError, match="numeric check failed"):
        common.assert_numerically_equal(x * (1 + 1e-8), x, {x: common.uniform(1, 2)}, "off by 1e-8", rtol=1e-10)


def test_export_latex_rejects_bad_macro_names():
    with pytest.raises(ValueError, match="letters only"):
        common.export_latex("Bad_Name1", sp.Integer(1))


def test_consecutive_outputs_of_one_stream_are_merged_so_rebuilds_are_byte_identical():
    import nbformat

    from derivations.notebooks import merge_streams
    cell = nbformat.v4.new_code_cell("print(1); print(2)")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="a\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="b\n"),
                    nbformat.v4.new_output("stream", name="stderr", text="w\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="c\n")]
    notebook = nbformat.v4.new_notebook(cells=[cell, nbformat.v4.new_markdown_cell("text")])
    merge_streams(notebook)
    assert [(o["name"], o["text"]) for o in notebook.cells[0].outputs] == [("stdout", "a\nb\n"), ("stderr", "w\n"),
                                                                          ("stdout", "c\n")]
