"""Discover, run and render the derivation notebooks.

The `.py` files (jupytext percent format) are the sources. Readers get executed `.ipynb` copies in
`derivations/executed/`, each stamped with the SHA-256 of its source and of `common.py`, so a test can
tell when a copy is stale without executing anything.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

DERIVATIONS_DIR = Path(__file__).resolve().parent
REPO_ROOT = DERIVATIONS_DIR.parent
EXECUTED_DIR = DERIVATIONS_DIR / "executed"
STAMP_KEY = "kalman_optim"


def notebook_sources() -> list[Path]:
    """The notebook sources in reading order (d1_..., d2_..., ...)."""
    return sorted(DERIVATIONS_DIR.glob("d[0-9]_*.py"))


def module_name(source: Path) -> str:
    return f"derivations.{source.stem}"


def import_notebook(source: Path) -> ModuleType:
    """Import (hence execute, once per process) a notebook; its assertions run on import."""
    return importlib.import_module(module_name(source))


def source_digest(source: Path) -> str:
    """SHA-256 over the notebook source and the shared helpers it is rendered with."""
    digest = hashlib.sha256()
    for path in (source, DERIVATIONS_DIR / "common.py"):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def executed_path(source: Path) -> Path:
    return EXECUTED_DIR / f"{source.stem}.ipynb"


def execute_to_ipynb(source: Path, timeout: int = 300) -> Path:
    """Execute the notebook in a fresh kernel and write the rendered `.ipynb` (deterministic bytes)."""
    import jupytext
    import nbformat
    from nbclient import NotebookClient

    notebook = jupytext.read(source)
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index}"  # nbformat draws random ids; fixed ones keep rebuilds byte-identical
    # The kernel imports `derivations.*`: make the repository importable whatever the caller's cwd.
    env_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    os.environ["PYTHONPATH"] = env_path
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,  # timestamps would make every rebuild differ
        resources={"metadata": {"path": str(REPO_ROOT)}},
    )
    client.execute()
    merge_streams(notebook)
    notebook.metadata[STAMP_KEY] = {"source": source.name, "source_sha256": source_digest(source)}
    notebook.metadata.pop("widgets", None)
    EXECUTED_DIR.mkdir(exist_ok=True)
    target = executed_path(source)
    text = nbformat.writes(notebook)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)
    return target


def merge_streams(notebook) -> None:
    """Join each cell's consecutive outputs of the same stream (stdout, stderr) into one, in place: the kernel splits a
    cell's prints into chunks by timing, so unmerged copies differ between rebuilds of the same source."""
    for cell in notebook.cells:
        merged = []
        for output in cell.get("outputs", []):
            previous = merged[-1] if merged else None
            if (output.get("output_type") == "stream" and previous is not None
                    and previous.get("output_type") == "stream" and previous.get("name") == output.get("name")):
                previous["text"] = "".join(previous["text"]) + "".join(output["text"])
            else:
                merged.append(output)
        if "outputs" in cell:
            cell["outputs"] = merged


def stale_notebooks() -> list[str]:
    """Reasons why executed copies are missing or out of date (empty when all are fresh)."""
    import nbformat

    problems = []
    for source in notebook_sources():
        target = executed_path(source)
        if not target.exists():
            problems.append(f"{target.relative_to(REPO_ROOT)} is missing")
            continue
        notebook = nbformat.read(target, as_version=4)
        stamp = notebook.metadata.get(STAMP_KEY, {})
        if stamp.get("source_sha256") != source_digest(source):
            problems.append(f"{target.relative_to(REPO_ROOT)} is stale (source changed)")
            continue
        for cell in notebook.cells:
            if cell.cell_type != "code":
                continue
            if cell.execution_count is None:
                problems.append(f"{target.relative_to(REPO_ROOT)} has an unexecuted cell")
                break
            if any(out.get("output_type") == "error" for out in cell.outputs):
                problems.append(f"{target.relative_to(REPO_ROOT)} has an error output")
                break
    known = {f"{s.stem}.ipynb" for s in notebook_sources()}
    problems += [f"{p.relative_to(REPO_ROOT)} has no source" for p in EXECUTED_DIR.glob("*.ipynb") if p.name not in known]
    return problems


if __name__ == "__main__":  # pragma: no cover - convenience
    print("\n".join(stale_notebooks()) or "all executed notebooks are fresh")
    sys.exit(1 if stale_notebooks() else 0)
