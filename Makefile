# Two commands: `make train` (the embedded default: MQAR on CPU) and `make test` (the whole suite).
# Both create .venv on first use with Python >= 3.12 (from PATH or pyenv): the pinned requirements,
# then the package itself (pip install -e . --no-deps).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: train test test-fast clean-venv

$(VENV)/.runtime: requirements.txt pyproject.toml
	@bash scripts/make_venv.sh $(VENV) requirements.txt
	@touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	@bash scripts/make_venv.sh $(VENV) requirements-dev.txt
	@touch $@

train: $(VENV)/.runtime
	$(PY) train.py --config configs/mqar.py --workdir runs/mqar $(ARGS)

test: $(VENV)/.dev
	$(PY) -m pytest -n 2 --durations=15 tests $(ARGS)

test-fast: $(VENV)/.dev
	$(PY) -m pytest -n 2 -m "not slow" tests $(ARGS)

clean-venv:
	rm -rf $(VENV)
