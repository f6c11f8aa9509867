# Two commands on a fresh machine: `make demo` (a demo sweep) and `make test` (the test suite).
# Each creates .venv and installs the project into it the first time.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-slow test-kernels test-onednn test-eigen test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,litert,onnx]"
	touch $(STAMP)

demo: $(STAMP)  ## a small ASHA sweep on generated images, its leaderboard, the exported winner, predictions
	$(BIN)/tsweep demo

# Two test processes (pytest-xdist): most tests are small models whose time goes to single-threaded Python and
# tracing, so two share two cores well. More processes than cores only adds memory; override with WORKERS=N.
WORKERS ?= 2

test: $(STAMP) lint  ## the default suite: unit tests plus one real small sweep (slow-marked tests skipped)
	$(BIN)/python -m pytest -m "not slow" -q -n $(WORKERS)

test-slow: $(STAMP)  ## only the slow tests: multi-node clusters, killed nodes and drivers, worker reuse, real data
	$(BIN)/python -m pytest -m slow -q

# TensorFlow picks oneDNN kernels by default on CPUs with AVX-512 VNNI (Intel Xeons, and AMD EPYCs of Zen 4 on),
# the plain Eigen ones elsewhere: their NaN handling and rounding differ. `make test` runs whichever this CPU
# gets, so the numerically sensitive tests run again under each family, pinned, whatever the CPU.
test-kernels: test-onednn test-eigen  ## the numerics-marked tests under both kernel families

test-onednn: $(STAMP)  ## the numerics-marked tests with oneDNN kernels (TF_ENABLE_ONEDNN_OPTS=1)
	TF_ENABLE_ONEDNN_OPTS=1 $(BIN)/python -m pytest -m "numerics and not slow" -q -n $(WORKERS)

test-eigen: $(STAMP)  ## the numerics-marked tests without oneDNN (TF_ENABLE_ONEDNN_OPTS=0)
	TF_ENABLE_ONEDNN_OPTS=0 $(BIN)/python -m pytest -m "numerics and not slow" -q -n $(WORKERS)

test-all: $(STAMP) lint  ## everything, including the slow sweeps on ../shared data
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
