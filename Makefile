# flashsale: `make demo` runs a flash sale end to end, `make test` runs every check.
# Both install what they need first: Debian packages where missing, then the
# project and its locked dependencies into .venv/ (uv, from uv.lock).

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
PYTEST_ARGS ?=
# pytest-xdist workers: most integration and fault tests wait (on rebalances,
# restarts, traffic of fixed length) rather than compute, so 4 pay on 2 cores.
# `--dist loadscope` keeps each module on one worker, so a module-scoped fixture
# (test_bench's report, test_loadtest's stack) runs once; `--dist loadgroup` would
# not: pytest 9.2 ignores the group suffix xdist 3.8 adds to node ids.
# `PYTEST_WORKERS=0` runs everything in this process, one test at a time.
PYTEST_WORKERS ?= 4

.PHONY: install system-deps browser-deps demo test lint typecheck unit clean

install: system-deps $(VENV)/.synced

system-deps:
	@bash infra/install-system-deps.sh

browser-deps:
	@bash infra/install-browser.sh

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

demo: install
	$(VENV)/bin/flashsale demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

test: lint typecheck browser-deps
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadscope $(PYTEST_ARGS)

unit: install
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache
