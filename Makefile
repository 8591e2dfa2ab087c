# Every target sets itself up: on a fresh machine with only Python 3.11 + pip, `make test` and
# `make demo` install uv (with pip) if missing and sync the locked environment.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen

.PHONY: setup browser test demo bench lint format

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install -q uv
	@$(UV) sync --frozen --quiet

# Headless Chromium for the end-to-end page test; best effort (the test skips with a reason without it).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "note: chromium not installed; the browser test will be skipped"; }

test: setup browser
	$(RUN) pytest

demo: setup
	$(RUN) geovit demo --out demo_run

bench: setup
	@set -e; for f in bench/*.py; do echo "== $$f"; $(RUN) python $$f; done

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: setup
	$(RUN) ruff check --fix .
	$(RUN) ruff format .
