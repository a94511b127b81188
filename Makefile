# Set-up is part of every target: a fresh machine needs only Python 3.11 and pip. Packages
# install without byte-compiling every file (--no-compile): Python compiles the modules it
# imports on first use, which on 2 cores saves about 45 s per environment.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export MUJOCO_GL ?= disable
export NO_MKDOCS_2_WARNING ?= 1
export XLA_FLAGS ?= --xla_force_host_platform_device_count=1

.PHONY: demo test test-newest lint typecheck docs bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==25.3
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e ".[dev,wandb]"
	touch $(STAMP)

# The anatomy of three networks, then `neurosurgery sweep --preset main` and its report.
demo: $(STAMP)
	$(BIN)/python -m agents.experiments.demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/pyright

test: lint typecheck
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --durations=15

# The newest versions that pyproject.toml's ranges allow, without constraints.txt, in their own
# environment (`make clean` to pick up later releases): the versions, then the tests marked
# `newest` (import, anatomy, metrics, observation, resets, environments, one short training run).
NEWEST := .venv-newest
NEWEST_STAMP := $(NEWEST)/.installed-stamp

$(NEWEST_STAMP): pyproject.toml
	test -x $(NEWEST)/bin/python || $(PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/python -m pip install -q --upgrade pip==25.3
	$(NEWEST)/bin/python -m pip install -q --no-compile -e ".[dev]"
	touch $(NEWEST_STAMP)

test-newest: $(NEWEST_STAMP)
	$(NEWEST)/bin/python -m pip list | grep -iE "jax|equinox|optax|numpy|mujoco|brax|dm.control|playground"
	$(NEWEST)/bin/python -m pytest -q -m newest -n 2 --dist loadscope

docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# bench_bro_vs_released.py needs a checkout of the released BRO in its own environment (its
# docstring says how): run it by hand.
bench: $(STAMP)
	for f in $(filter-out benchmarks/bench_bro_vs_released.py,$(wildcard benchmarks/bench_*.py)); do \
		$(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) $(NEWEST) site .pytest_cache
