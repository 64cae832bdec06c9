# Two entry points for a new machine: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-fast bench clean

# constraints.txt pins a known-good set: without it pip's resolver can spend many minutes
# backtracking through the narrow botocore / aiobotocore / boto3 windows.
$(BIN)/segpipe: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(BIN)/segpipe

demo: setup
	$(BIN)/segpipe demo --workdir demo-output

test: setup
	$(BIN)/pytest

test-fast: setup
	$(BIN)/pytest -m 'not slow'

bench: setup
	$(BIN)/python jobs/benchmarks/benchmark.py --workdir bench-output

clean:
	rm -rf demo-output bench-output .pytest_cache
