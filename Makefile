# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean-runs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build of torch first, so nothing below pulls the CUDA wheels
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	# SevenNet-0's package without its numpy < 2 pin (it runs on numpy 2; see pyproject's crystals extra)
	$(BIN)/pip install --quiet --no-deps sevenn==0.10.0
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/tasksim demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-runs:
	rm -rf runs
