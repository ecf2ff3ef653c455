PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test

# Installs everything into ./.venv: pinned CPU torch and the libraries tunelab is tested with.
setup:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -e .
	@# the browser test of `tunelab ui` drives Debian's chromium (Playwright's own browser download is not used)
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
	else echo "make setup: install Chromium for the UI's browser test (as root: apt-get install chromium)"; fi

test:
	$(BIN)/python -m pytest
