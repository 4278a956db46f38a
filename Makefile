# distilrec: the two commands a new user runs.
#   make demo   whole path on synthetic data (train, distill, evaluate, serve, a few HTTP requests)
#   make test   the test suite (unit, chart and manifests, integration on a local Ray cluster with
#               Redis and Prometheus, doctests)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned, so that pip does not pick a different build for ray/transformers.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=

.PHONY: demo test install clean k8s-manifests dashboards

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/distilrec demo

test: install
	$(BIN)/python -m pytest

# Regenerate the plain manifests in k8s/ from the Helm chart (tests/k8s fails when they are stale).
k8s-manifests: install
	$(BIN)/python k8s/generate.py

# Render the Grafana dashboards (dashboards/) to helm/distilrec/dashboards/*.json (a test fails when they are stale).
dashboards: install
	$(BIN)/python -m dashboards

clean:
	rm -rf demo-out .pytest_cache
