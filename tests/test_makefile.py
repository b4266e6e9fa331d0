"""`make test` cannot pass without running tests: a wrong interpreter or an empty selection is a failure."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=600)


def test_make_test_fails_when_the_interpreter_runs_nothing():
    done = make("test", "PYTHON=/usr/bin/true")
    assert done.returncode != 0
    assert "no tests ran" in done.stderr


def test_make_test_fails_when_no_test_is_collected():
    done = make("test", f"PYTHON={sys.executable}", "PYTEST_ARGS=-q -k no_test_has_this_name_xyz tests/test_makefile.py")
    assert done.returncode != 0


def test_make_test_passes_when_tests_run():
    done = make("test", f"PYTHON={sys.executable}", "PYTEST_ARGS=-q tests/experiments/test_stats.py")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_figures_always_recheck_the_results_first():
    """No stamp can hide a deleted or damaged result: `make figures` always runs the (skipping) experiment runner,
    which redoes any missing, corrupt or stale run, and the figures depend on a manifest of the result files."""
    done = make("-n", "figures", f"PYTHON={sys.executable}")
    assert done.returncode == 0, done.stderr
    assert "-m experiments run all" in done.stdout and "-m experiments manifest" in done.stdout
