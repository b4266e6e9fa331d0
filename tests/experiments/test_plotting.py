"""experiments.plotting: macro names, LaTeX escaping, number formatting, figure and table output."""

from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from experiments.plotting import COLORS, LINESTYLES, MARKERS, FigureOutput, format_number, latex_escape, macro_name, style


# --- macro names ---------------------------------------------------------------------------------------------------

def test_macro_names_spell_digits_and_capitalise_words():
    assert macro_name("e1", "BestBeta") == "KOREOneBestBeta"
    assert macro_name("e6", "lr=1e-3") == "KORESixLrOneeThree"
    assert macro_name("e4", "final loss", "AdamW") == "KOREFourFinalLossAdamW"
    assert macro_name("e0", "Profile") == "KOREZeroProfile"
    assert macro_name("x", 95) == "KORXNineFive"


@given(st.lists(st.text(max_size=12), max_size=4))
def test_macro_names_are_letters_only(words):
    """LaTeX control words are letters only: \\KOR1 would be \\KOR followed by the text 1."""
    assert re.fullmatch(r"KOR[A-Za-z]*", macro_name(*words))


@given(st.lists(st.from_regex(r"[A-Za-z]{1,6}", fullmatch=True), min_size=1, max_size=3))
def test_macro_names_of_letter_words_are_the_capitalised_words_in_order(words):
    assert macro_name(*words) == "KOR" + "".join(w[0].upper() + w[1:] for w in words)


# --- LaTeX escaping ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, escaped", [
    ("plain", "plain"),
    ("a_b & 50% #1", r"a\_b \& 50\% \#1"),
    ("β=0.9 ± 0.1", r"$\beta$=0.9 $\pm$ 0.1"),
    ("λ → 0, 3×3, σ ≤ κ", r"$\lambda$ $\to$ 0, 3$\times$3, $\sigma$ $\le$ $\kappa$"),
    (r"kept $\beta_2$ and $a_1 \& b$", r"kept $\beta_2$ and $a_1 \& b$"),
    (r"fine_tune $x_t$ then_more", r"fine\_tune $x_t$ then\_more"),
    ("", ""),
])
def test_latex_escape(text, escaped):
    assert latex_escape(text) == escaped


@given(st.text(alphabet="ab_&%# $", max_size=20))
def test_escaped_text_has_no_unescaped_specials_outside_math(text):
    for part in re.split(r"(\$[^$]*\$)", latex_escape(text)):
        if not part.startswith("$"):
            assert not re.search(r"(?<!\\)[_&%#]", part), part


# --- number formatting -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (12345, "12{,}345"), (-3, "-3"), (0, "0"),
    (0.5, "0.5"), (3.14159, "3.14"), (-0.000123, "-0.000123"), (0.004, "0.004"),
    (1.5e-7, r"\ensuremath{1.5\times 10^{-7}}"), (2e20, r"\ensuremath{2\times 10^{20}}"),
    (float("nan"), "n/a"), (np.float64("nan"), "n/a"),
    (True, "yes"), (False, "no"), ("full", "full"),
    (np.float32(0.25), "0.25"), (np.float64(3.14159), "3.14"),
])
def test_format_number(value, text):
    assert format_number(value) == text


def test_format_number_digits():
    assert format_number(math.pi, digits=5) == "3.1416"
    assert format_number(1 / 3, digits=1) == "0.3"


@pytest.mark.parametrize("value, text", [(np.int64(12345), "12{,}345"), (np.int32(7), "7"),
                                         (np.bool_(True), "yes"), (np.bool_(False), "no")])
def test_format_number_treats_numpy_integers_and_booleans_like_python_ones(value, text):
    """numbers() often returns counts from numpy (np.sum of a mask, np.argmin): a count of 12,345 steps must not
    print as 1.23 x 10^4, and a numpy boolean must not print as 1."""
    assert format_number(value) == text


# --- styles ----------------------------------------------------------------------------------------------------------

def test_the_first_styles_differ_in_colour_dash_and_marker():
    first = [style(i) for i in range(len(COLORS))]
    for key in ("color", "marker"):
        assert len({s[key] for s in first}) == len(first)
    assert len({str(s["linestyle"]) for s in first}) == len(first)
    assert len(COLORS) == len(LINESTYLES) == len(MARKERS)


def test_styles_past_the_first_round_do_not_repeat_one_of_it():
    """E4 draws 12 optimizers: AdamW (style 0) and the transport mode (style 8) once looked identical."""
    styles = [style(i) for i in range(2 * len(COLORS))]
    keys = [(s["color"], str(s["linestyle"]), s["marker"]) for s in styles]
    assert len(set(keys)) == len(keys)
    for i in range(len(COLORS)):
        later = styles[i + len(COLORS)]
        assert later["marker"] != styles[i]["marker"] and str(later["linestyle"]) != str(styles[i]["linestyle"])


# --- figures and tables ----------------------------------------------------------------------------------------------

def small_figure():
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 2], [1, 0, 2], **style(1))
    ax.set_xlabel("step")
    return fig


def test_save_writes_pdf_and_png_without_a_creation_date(tmp_path):
    out = FigureOutput(profile="smoke", figure_dir=tmp_path / "figures", table_dir=tmp_path / "tables")
    fig = small_figure()
    paths = out.save(fig, "e9_demo")
    assert paths == [tmp_path / "figures" / "e9_demo.pdf", tmp_path / "figures" / "e9_demo.png"]
    pdf, png = (p.read_bytes() for p in paths)
    assert pdf.startswith(b"%PDF-") and png.startswith(b"\x89PNG\r\n\x1a\n")
    assert b"/CreationDate" not in pdf  # byte-stable rebuilds
    assert not plt.fignum_exists(fig.number)  # closed: experiments draw many figures
    assert out.save(small_figure(), "e9_demo") == paths
    assert paths[0].read_bytes() == pdf


def test_table_writes_booktabs_latex_and_markdown(tmp_path):
    out = FigureOutput(profile="full", figure_dir=tmp_path, table_dir=tmp_path / "generated")
    path = out.table("e9_table", ["optimizer", "loss ± CI", "steps_run"], [["AdamW", "0.31 ± 0.02", 100],
                                                                          ["Kalman & co", "0.29", 100]],
                     caption="Toy table.")
    assert path == tmp_path / "generated" / "e9_table.tex"
    tex = path.read_text().splitlines()
    assert tex[0] == "% generated by experiments (full profile); do not edit"
    assert tex[1:4] == [r"\begin{tabular}{lrr}", r"\toprule", r"optimizer & loss $\pm$ CI & steps\_run \\"]
    assert tex[4:] == [r"\midrule", r"AdamW & 0.31 $\pm$ 0.02 & 100 \\", r"Kalman \& co & 0.29 & 100 \\",
                       r"\bottomrule", r"\end{tabular}"]
    md = (tmp_path / "generated" / "e9_table.md").read_text().splitlines()
    assert md == ["Toy table.", "", "| optimizer | loss ± CI | steps_run |", "|---|---|---|",
                  "| AdamW | 0.31 ± 0.02 | 100 |", "| Kalman & co | 0.29 | 100 |"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["e9_table.md", "e9_table.tex"]


def test_table_alignment_can_be_given(tmp_path):
    out = FigureOutput(profile="smoke", figure_dir=tmp_path, table_dir=tmp_path)
    text = out.table("t", ["a", "b"], [], align="cc").read_text()
    assert r"\begin{tabular}{cc}" in text and text.endswith("\\end{tabular}\n")
    assert (tmp_path / "t.md").read_text() == "| a | b |\n|---|---|\n"
