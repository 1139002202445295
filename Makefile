# `make run` and `make test` are the two commands; both (re)create .venv when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test venv clean

# The main job: train on the embedded synthetic data, then evaluate under every subset of modalities.
run: $(STAMP)
	$(BIN)/fusionzoo train configs/experiments/quickstart.yaml --overwrite
	$(BIN)/fusionzoo eval runs/quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

venv: $(STAMP)

# Re-install when the pinned set or the package metadata changes.
$(STAMP): requirements/pinned.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements/pinned.txt
	$(BIN)/python -m pip install -q --no-build-isolation -e ".[test,bench]"
	$(BIN)/python -m pip check
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache
