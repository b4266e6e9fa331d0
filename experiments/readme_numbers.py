"""The README's numbers, written from the same macros as the paper's (`python -m experiments figures --readme`).

A number in README.md is wrapped in a tag that names its macro, e.g.
``<!--n:KOREFourFashionExtrapolatedLossDiff-->-0.0207<!--/n-->`` (GitHub renders only the value). `sync` replaces
every tagged value by the macro's current value, so the README cannot drift from the results it quotes; a tag
that names no macro stops the build with its name.
"""

from __future__ import annotations

import re

TAG = re.compile(r"<!--n:([A-Za-z]+)-->(.*?)<!--/n-->", re.DOTALL)
#: LaTeX in macro values -> plain text (digit groups, thin spaces).
_PLAIN = (("{,}", ","), ("\\,", " "))


def plain(value: str) -> str:
    """A macro's value as README text; anything else in LaTeX is an error, not a silent garble."""
    for latex, text in _PLAIN:
        value = value.replace(latex, text)
    if "\\" in value or "$" in value:
        raise ValueError(f"macro value {value!r} has LaTeX the README cannot show; add it to readme_numbers._PLAIN")
    return value


def sync(text: str, numbers: dict[str, str]) -> tuple[str, list[str]]:
    """`text` with every tagged value replaced by numbers[name] (macro names, as in the paper); also the names
    whose value changed. Raises ValueError naming the tags that have no macro."""
    unknown = sorted({name for name, _ in TAG.findall(text) if name not in numbers})
    if unknown:
        raise ValueError(f"README tags name no macro: {', '.join(unknown)} (macros come from `python -m experiments "
                         f"figures`; a renamed number must be renamed in README.md too)")
    changed: list[str] = []

    def replace(match: re.Match) -> str:
        name, old = match.group(1), match.group(2)
        new = plain(numbers[name])
        if new != old:
            changed.append(name)
        return f"<!--n:{name}-->{new}<!--/n-->"

    return TAG.sub(replace, text), changed

