"""The paper build check fails on undefined references, citations, missing files and wide overfull boxes."""

import importlib.util
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("check_build", Path(__file__).parents[2] / "paper" / "check_build.py")
check_build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_build)

CLEAN = "This is pdfTeX\nOutput written on paper.pdf (9 pages).\n"


@pytest.mark.parametrize("line, kind", [
    ("LaTeX Warning: Reference `fig:e4' on page 3 undefined on input line 120.", "undefined reference: fig:e4"),
    ("LaTeX Warning: Citation `muth1960' on page 1 undefined on input line 30.", "undefined citation: muth1960"),
    ("Package natbib Warning: Citation `kalman1960' on page 1 undefined on input line 31.", "undefined citation: kalman1960"),
    ("LaTeX Warning: File `figures/e4_curves.pdf' not found on input line 200.", "missing file: figures/e4_curves.pdf"),
    ("Overfull \\hbox (25.3pt too wide) in paragraph at lines 10--12", "overfull hbox 25.3pt at line 10"),
])
def test_each_problem_is_an_error(line, kind):
    errors, _ = check_build.problems(CLEAN + line + "\n", max_overfull_pt=10)
    assert errors == [kind]


def test_clean_log_and_narrow_overfull_boxes_pass(tmp_path):
    log = tmp_path / "paper.log"
    log.write_text(CLEAN + "Overfull \\hbox (2.1pt too wide) in paragraph at lines 5--6\n")
    assert check_build.main([str(log)]) == 0
    log.write_text(CLEAN + "LaTeX Warning: There were undefined references.\n")
    assert check_build.main([str(log)]) == 1


def test_names_wrapped_at_79_columns_are_rejoined(tmp_path):
    long = "LaTeX Warning: Citation `a_very_long_citation_key_that_wraps_the_log_line_somewhere' on page 2 undefined"
    wrapped = long[:79] + "\n" + long[79:] + " on input line 3.\n"
    log = tmp_path / "paper.log"
    log.write_text(CLEAN + wrapped)
    assert check_build.main([str(log)]) == 1


def test_a_truncated_undefined_macro_and_a_fatal_error_are_errors():
    """The log of a run stopped by an undefined number macro: TeX cuts the macro's name off the context line."""
    log = (CLEAN + "! Undefined control sequence.\nl.54 ...ionMnistResnetInnovationCoverageNinetyFive\n"
           "                                                  {} \n!  ==> Fatal error occurred, no output PDF file produced!\n")
    errors, _ = check_build.problems(log, max_overfull_pt=10)
    assert any("undefined control sequence" in e for e in errors)
    assert any("fatal TeX error" in e for e in errors)
