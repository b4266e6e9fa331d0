"""Fail the paper build on undefined references or citations, missing files, undefined macros, a fatal TeX error, or
wide overfull boxes.

    python paper/check_build.py paper/build/paper.log [--max-overfull-pt 10]

LaTeX only warns about these; a citable paper must have none. Overfull boxes narrower than the limit
(default 10pt, about 3.5 mm) are listed but tolerated.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PATTERNS = {
    "undefined reference": re.compile(r"LaTeX Warning: Reference `([^']+)' on page \d+ undefined"),
    "undefined citation": re.compile(r"(?:LaTeX|Package natbib) Warning: Citation `([^']+)' on page \d+ undefined"),
    "missing file": re.compile(r"(?:LaTeX Warning: File|! LaTeX Error: File) `([^']+)' not found"),
    "undefined control sequence": re.compile(r"! Undefined control sequence\.\s*\n.*?(\\[A-Za-z@]+)"),
}
OVERFULL = re.compile(r"Overfull \\hbox \((\d+(?:\.\d+)?)pt too wide\) (?:in paragraph|detected) at lines? (\d+)")


def problems(log: str, max_overfull_pt: float) -> tuple[list[str], list[str]]:
    errors = [f"{kind}: {name}" for kind, pattern in PATTERNS.items() for name in sorted(set(pattern.findall(log)))]
    if "There were undefined references" in log and not any("undefined" in e for e in errors):
        errors.append("undefined references (see the log)")
    # TeX truncates the context line ("l.54 ...Name"), so a control sequence's name is not always in the log.
    if "! Undefined control sequence." in log and not any("control sequence" in e for e in errors):
        errors.append("undefined control sequence (its name is cut off in the log; see the line number there)")
    if "no output PDF file produced" in log or "Fatal error occurred" in log:
        errors.append("fatal TeX error: no PDF was written (see the log)")
    notes = []
    for width, line in OVERFULL.findall(log):
        message = f"overfull hbox {width}pt at line {line}"
        (errors if float(width) > max_overfull_pt else notes).append(message)
    return errors, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--max-overfull-pt", type=float, default=10.0)
    args = parser.parse_args(argv)
    # LaTeX wraps log lines at 79 characters; undo it so names split across lines still match.
    log = re.sub(r"(?m)^(.{79})\n", r"\1", args.log.read_text(encoding="utf-8", errors="replace"))
    errors, notes = problems(log, args.max_overfull_pt)
    for note in notes:
        print(f"note: {note} (tolerated: under {args.max_overfull_pt}pt)")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        print(f"paper check failed: {len(errors)} problem(s) in {args.log}", file=sys.stderr)
        return 1
    print(f"paper check: no undefined references, citations or missing files in {args.log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
