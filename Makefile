# Two entry points for a fresh machine (Python 3.11, pip, make):
#   make demo   - set everything up, run the example pipeline DAG against the embedded fal emulator
#   make test   - set everything up, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint compose-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: setup
	$(BIN)/python scripts/run_example.py

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check fal_provider tests dags benchmarks scripts
	$(BIN)/ruff format --check fal_provider tests dags benchmarks scripts
	$(BIN)/mypy

# Validates the compose file with Compose v2 (docker compose) when present, else Compose v1.
compose-check:
	@if docker compose version >/dev/null 2>&1; then docker compose -f docker/compose.yaml config --quiet; \
	else docker-compose -f docker/compose.yaml config --quiet; fi

clean:
	rm -rf $(VENV) output .pytest_cache .mypy_cache .ruff_cache
