# The newcomer's path: `make demo` and `make test` bootstrap everything they need.
# uv lives in its own small venv (.tools) so that `uv sync` never uninstalls itself from .venv.

PYTHON ?= python3
VENV   := .venv
UV     := .tools/bin/uv
UV_VERSION := 0.13.9

export UV_PYTHON_DOWNLOADS := never
export UV_LINK_MODE := copy
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test test-lowest lint format bench clean setup

setup: $(VENV)/.synced

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet "uv==$(UV_VERSION)"

$(VENV)/.synced: uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --all-extras --python "$$($(PYTHON) -c 'import sys; print(sys.executable)')"
	@touch $@

demo: $(VENV)/.synced   ## run the flow over sample rows against the built-in sandbox
	$(VENV)/bin/prefect-runcomfy demo --output ./output

test: $(VENV)/.synced   ## lint and type-check, then the whole test suite (what CI runs)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

test-lowest: | $(UV)   ## the test suite on the lowest versions pyproject.toml allows (not in CI: ~12 min)
	rm -rf .venv-lowest
	$(UV) venv -q .venv-lowest --python "$$($(PYTHON) -c 'import sys; print(sys.executable)')"
	VIRTUAL_ENV=.venv-lowest $(UV) pip install -q --resolution lowest-direct -e '.[dev,s3,media,aws]'
	PATH="$$PWD/.venv-lowest/bin:$$PATH" .venv-lowest/bin/python -m pytest

lint: $(VENV)/.synced
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV)/.synced
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .venv-lowest .tools .pytest_cache .ruff_cache .mypy_cache output
