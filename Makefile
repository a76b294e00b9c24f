# Two commands do all the set-up: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache
export OSM_SHARED_DATA ?= $(abspath $(CURDIR)/../shared/data)

.PHONY: env demo test test-all lint lab bench browser screenshot clean

env: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) on PATH (or run: make PYTHON=python3)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/osm demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: $(STAMP) lint
	$(BIN)/python -m pytest -m "not slow"

test-all: $(STAMP) lint
	$(BIN)/python -m pytest

# Jupyter refuses to run as root unless told to (containers often run as root).
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

# Debian's chromium for tests/test_browser.py (never a downloaded browser); needs root and apt-get,
# else the browser test skips and says why.
browser:
	@if [ -x /usr/bin/chromium ]; then echo "chromium: $$(/usr/bin/chromium --version 2>/dev/null)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
			chromium; } || echo "could not install chromium: tests/test_browser.py will skip"; \
	else echo "no /usr/bin/chromium and no root apt-get: tests/test_browser.py will skip"; fi

# The README's picture of the live chart, taken by the browser test.
screenshot: $(STAMP) browser
	OSM_SCREENSHOT=docs/img/live_chart.png $(BIN)/python -m pytest tests/test_browser.py -k jupyterlab

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .numba_cache build *.egg-info .pytest_cache
