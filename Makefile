# Two commands: `make demo` (set up, run the what-if on the bundled scenario) and `make test`
# (set up everything, build the control plane if not cached, run ruff, mypy and every test).
# `make check` is the same as `make test`. Pinned versions come from constraints.txt.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
CONSTRAINTS := constraints.txt
DEMO_REPORT ?= reports/demo

.PHONY: demo test check lint typecheck controlplane prometheus constraints clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip==26.3 setuptools==84.2.1 wheel==0.48.0

# The base install: enough for the extender, the simulator and the demo.
$(VENV)/.base: $(PY) pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e .
	touch $@

# Everything the tests need: agent, workloads (torch, deepspeed) and dev tools. DeepSpeed's build
# imports torch, so it is installed after torch, without build isolation.
$(VENV)/.all: $(VENV)/.base
	$(PIP) install -q -c $(CONSTRAINTS) -e '.[agent,dev]' torch safetensors
	DS_BUILD_OPS=0 $(PIP) install -q -c $(CONSTRAINTS) --no-build-isolation -e '.[workloads]'
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/gpusched-sim whatif simulations/scenarios/demo.yaml --report $(DEMO_REPORT)

# etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubectl and KWOK from the Go
# module proxy, each built once and cached by version (localcluster/build.py).
controlplane: $(VENV)/.base
	$(PY) -m localcluster.build

# The metrics tests run a real Prometheus (and promtool) from Debian's package.
prometheus:
	command -v prometheus >/dev/null && command -v promtool >/dev/null || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)

# CI runs exactly this: the linters first (they take seconds), then every test.
test: lint typecheck $(VENV)/.all controlplane prometheus
	$(PY) -m pytest -q

lint: $(VENV)/.all
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.all
	$(VENV)/bin/mypy scheduler gpu_agent simulations workloads localcluster benchmarks

check: test

# Refresh the pins from the current environment (run after changing dependencies).
constraints: $(VENV)/.all
	$(PIP) freeze --exclude-editable | grep -v '^gpusched' > $(CONSTRAINTS)

clean:
	rm -rf $(VENV) reports .pytest_cache .mypy_cache .ruff_cache
