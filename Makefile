# The two commands of the README. CI (.ci/run) runs `make test` and nothing else; the `##` line above each
# of the two is quoted word for word in the README (tests/unit/test_first_hour.py checks it).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the tests drive, one per line in .ci/apt-packages ('#' starts a comment).
APT_PACKAGES := $(shell sed -e 's/\#.*//' .ci/apt-packages)

.PHONY: install up test test-fast lint docs system-packages clean

# PYTHONWARNINGS: setuptools warns that an editable install is not a wheel; nothing to act on.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet -e '.[local,test,bench,docs]'
	touch $@

install: $(VENV)/.installed

## Install streamrec and run the whole system locally, fed with MovieLens-100k when ../shared/datasets holds it, else with the built-in shop; print live recommendations (Ctrl-C stops every process).
up: install
	$(VENV)/bin/streamrec up

## Install what the tests need (Python packages in .venv; Debian packages from .ci/apt-packages with apt-get, through sudo when not root), then run ruff and every test: unit, integration on real Tansu and Redis, end to end.
test: system-packages install lint
	$(PY) -m pytest -q -p no:cacheprovider

# The documentation site is built with --strict (not --quiet: it silences the warnings --strict counts) into a
# throwaway folder: a broken link, a missing page or a reference page that cannot be generated fails the lint.
# NO_MKDOCS_2_WARNING: mkdocs-material's banner about MkDocs 2.0, which does not apply to the pinned 1.6.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	site="$$(mktemp -d)"; trap 'rm -rf "$$site"' EXIT; \
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir "$$site"

## Build the documentation site into site/ (open site/index.html); its reference pages are generated from the code.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Installs only what is missing, so on a prepared machine it is one dpkg query and no sudo.
system-packages:
	@missing="$$(for p in $(APT_PACKAGES); do dpkg -s "$$p" >/dev/null 2>&1 || printf '%s ' "$$p"; done)"; \
	missing="$${missing% }"; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then \
	    echo "error: the tests need these Debian packages and there is no apt-get here: $$missing" >&2; exit 1; \
	  fi; \
	  sudo=""; [ "$$(id -u)" -eq 0 ] || sudo=sudo; \
	  echo "installing the Debian packages the tests need: $$missing"; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

## Build the container image with podman and run api and worker from it against a local Tansu and Redis
## (root; Debian's podman, runc and mmdebstrap; about 4 minutes on a quiet machine, 8 on a busy one).
.PHONY: image-check
image-check: install
	$(PY) -m streamrec.devtools.image_check

## Pure-logic tests only (no services).
test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

clean:
	rm -rf $(VENV) .streamrec test-artifacts *.egg-info site
