# The two commands of the README, and what CI runs (.ci/run calls `make test`).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install up test test-fast lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,test,bench]'
	touch $@

install: $(VENV)/.installed

## Set everything up and run the whole stack locally on real data (Ctrl-C stops it).
up: install
	$(VENV)/bin/streamrec up

## The full test suite: lint, then unit, integration (real Tansu + Redis) and end-to-end.
test: install lint
	$(PY) -m pytest -q -p no:cacheprovider

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## Build the container image with podman and run api and worker from it against a local Tansu and Redis
## (root; Debian's podman, runc and mmdebstrap; about 4 minutes on a quiet machine, 8 on a busy one).
.PHONY: image-check
image-check: install
	$(PY) -m streamrec.devtools.image_check

## Pure-logic tests only (no services).
test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

clean:
	rm -rf $(VENV) .streamrec test-artifacts *.egg-info
