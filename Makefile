# The two set-up commands of the README. Each creates or reuses .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dermtrl-installed
DEMO_LAUNCH := --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no --num_cpu_threads_per_process 2

.PHONY: demo test lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	# Stage 1 (when its output is absent) and Stage 2 (SOREB) on the tiny model and synthetic cases, then the
	# Table-1 report on 200 held-out cases before and after Stage 2.
	# Every launcher setting is given, so accelerate prints no "values were not passed" warning.
	HF_HUB_OFFLINE=1 $(BIN)/accelerate launch $(DEMO_LAUNCH) recipes/soreb.py --config recipes/configs/demo_soreb.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .
