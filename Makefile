# Entry points (see README): `make demo`, `make test` (everything), `make test-fast` (skips the slow integration
# tests), `make lint` (ruff, then mypy; both configured in pyproject.toml). All create .venv on first use.
PY ?= python3
VENV ?= .venv
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-fast lint bench
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q $(TORCH_PINS)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/crate-mae demo

test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

bench: setup
	$(VENV)/bin/python benchmarks/model_speed.py
