# Distilling Justice: `make run` runs the whole suite on the default profile; `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= default

.PHONY: help setup run smoke lint test benchmark bench-train lab clean
help:  ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (distilling-justice)" >/dev/null
	touch $(STAMP)

setup: $(STAMP)  ## create .venv, install the pinned dependencies, register the python3 kernel

run: $(STAMP)  ## run the whole suite on the default profile (offline) into runs/default/
	HF_HUB_OFFLINE=1 $(PY) -m helpers run --profile $(PROFILE)

smoke: $(STAMP)  ## run the whole suite on the tiny smoke profile into runs/smoke/
	HF_HUB_OFFLINE=1 $(PY) -m helpers run --profile smoke

test: $(STAMP)  ## lint (ruff), then run the test suite (unit tests + the smoke pipeline 01->05)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: $(STAMP)  ## check style and common bugs with ruff (configured in pyproject.toml)
	$(VENV)/bin/ruff check .

benchmark: $(STAMP)  ## time the seed's six architectures and print the ratios
	$(PY) scripts/benchmark.py

bench-train: $(STAMP)  ## training throughput: the suite's path vs a bare fp32 loop, per default model
	$(PY) scripts/bench_train.py

lab: $(STAMP)  ## open JupyterLab on the notebooks
	$(VENV)/bin/jupyter lab notebooks/

clean:  ## remove run folders (keeps .venv)
	rm -rf runs/
