# FollowPay — every target sets itself up (venv, pip install, npm ci) idempotently.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
FORGE  := node_modules/.bin/forge
PY_STAMP   := $(VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup demo test lint typecheck forge pytest bench artifacts clean

setup: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

## The demo on the embedded default (in-process chain, SQLite). `make demo ARGS="--chain anvil"`.
demo: setup
	$(BIN)/followpay demo $(ARGS)

## The whole suite: lint, types, forge (unit, fuzz, invariant, gas snapshot), pytest on both chains and both databases.
test: setup lint typecheck forge pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

forge: setup
	$(FORGE) test
	$(FORGE) snapshot --check

# --dist loadfile: a module's tests share one worker, so a module-scoped fixture (the CLI
# modules start the CLI dozens of times in theirs) runs once. (xdist 3.8's loadgroup marks
# do nothing under pytest 9.2, whose node ids it can no longer rewrite.)
pytest: setup
	$(BIN)/pytest -n 2 --dist loadfile $(PYTEST_ARGS)

## Benchmarks: ratios against same-run baselines; rewrites docs/benchmarks.md.
bench: setup
	$(PY) scripts/bench.py $(ARGS)

artifacts: setup
	$(BIN)/followpay contracts build

clean:
	rm -rf out cache .pytest_cache .mypy_cache .ruff_cache
