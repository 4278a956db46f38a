# distilrec: the two commands a new user runs.
#   make demo   whole path on synthetic data (train, distill, evaluate, serve, a few HTTP requests)
#   make test   the test suite (unit, chart and manifests, integration on a local Ray cluster with
#               Redis and Prometheus, doctests)
# After `make demo`, `serve run services/serve_config.yaml` serves the demo's model (./demo-out) again.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and pinned, so that pip does not pick a different build for ray/transformers.
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# Tools of the chart tests that live outside the project's virtualenv (tests/k8s looks for them in $(TOOLS)):
# checkov in a virtualenv of its own (it pins boto3 1.35 and packaging < 24, which the dev extra's moto and
# s3fs cannot share), and Bitnami's readme generator from npm (needs Node.js and npm).
TOOLS ?= .tools
CHECKOV_SPEC ?= checkov>=3.3.30,<3.4
README_GENERATOR_SPEC ?= @bitnami/readme-generator-for-helm@2.7.2

.PHONY: demo test install constraints tools clean k8s-manifests dashboards chart-readme

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt: the tested version of every dependency (see its header); torch's own index may lack
# them, so the torch line goes without it.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

# Rewrite constraints.txt from the virtualenv (after a deliberate upgrade that the test suite passed with).
constraints: install
	{ sed -n '1,4p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | sed -E 's/^(torch==[0-9.]+)\+[A-Za-z0-9.]+$$/\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

$(TOOLS)/checkov/.installed: Makefile
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/python -m pip install -q "$(CHECKOV_SPEC)"
	touch $@

# Without npm, the chart README test skips (CI installs Node.js and npm: .ci/run).
$(TOOLS)/.readme-generator: Makefile
	@if command -v npm >/dev/null; then \
	  npm install --prefix $(TOOLS) --no-save --no-audit --no-fund "$(README_GENERATOR_SPEC)" && touch $@; \
	else echo "npm not found: the chart README test will skip (install Node.js and npm, then make tools)"; fi

tools: $(TOOLS)/checkov/.installed $(TOOLS)/.readme-generator

demo: install
	$(BIN)/distilrec demo

test: install tools
	$(BIN)/python -m pytest

# Regenerate the plain manifests in k8s/ from the Helm chart (tests/k8s fails when they are stale).
k8s-manifests: install
	$(BIN)/python k8s/generate.py

# Render the Grafana dashboards (dashboards/) to helm/distilrec/dashboards/*.json (a test fails when they are stale).
dashboards: install
	$(BIN)/python -m dashboards

# Regenerate the parameter tables of helm/distilrec/README.md from values.yaml's `## @param` comments (a test
# fails when they are stale).
chart-readme: tools
	$(TOOLS)/node_modules/.bin/readme-generator --values helm/distilrec/values.yaml --readme helm/distilrec/README.md

clean:
	rm -rf demo-out .pytest_cache
