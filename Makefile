# Two commands set everything up on a fresh machine:
#   make quickstart   creates .venv, installs grokscale, runs sweeps/quickstart.yaml end to end
#   make test         creates .venv, installs grokscale, runs the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; a GPU user who installed their own torch into $(VENV) first keeps it.
TORCH ?= torch==2.13.0
# The suite runs as JOBS pytest-xdist workers. Most of a study test's time is waiting (a Ray, a
# server, a subprocess starting up), so two workers on 2 cores take about 14 minutes, one 24;
# worksteal hands a worker that ran out some of the other's queue. Every test keeps its Ray, ports
# and files to itself (tests/conftest.py, tests/support/ray_cluster.py).
# `make test-all` adds the tests that install and start whole services (a one-node Slurm, headless
# Chromium on the MLflow UI), the pruning-exactness study and the repeated driver and worker kills
# (about 15 minutes more).
JOBS ?= 2
PYTEST_ARGS ?= -n $(JOBS) --dist worksteal -m "not soak and not long" --durations=30

# The fast paths that write MLflow's and Optuna's tables themselves (sql_writes.py, held_storage.py),
# tested against the lowest MLflow and Optuna pyproject.toml allows and the newest the registry
# serves, each pair in a venv of its own; README.md ("Tested releases") records the last result.
# MLflow 2.x imports a pool SQLAlchemy 2.1 dropped, and allows SQLAlchemy <3: the lowest needs <2.1.
COMPAT_LOW ?= mlflow==2.16.0 optuna==4.0.0 sqlalchemy<2.1
# The newest the registry can install: it lists mlflow 3.18.0, but not the mlflow-tracing 3.18.0 it needs.
COMPAT_NEW ?= mlflow==3.17.2 optuna==5.1.0
COMPAT_TESTS ?= tests/unit/test_sql_writes.py tests/unit/test_held_storage.py
# What those tests import, without Ray, the corpora or the UI (grokscale itself goes in with --no-deps).
COMPAT_DEPS ?= numpy scipy pandas pydantic pyyaml rich matplotlib packaging \
	pytest pytest-timeout psycopg2-binary

.PHONY: install quickstart test test-all test-compat soak bench ui clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/grokscale run sweeps/quickstart.yaml

# The linter first (configured in pyproject.toml): it takes seconds, the suite takes many minutes.
test: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

test-all: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)
	# One at a time: two of them install Debian packages, and apt-get holds one lock.
	$(PY) -m pytest -m "long and not soak" --durations=10

test-compat:
	@set -e; for pins in "low $(COMPAT_LOW)" "new $(COMPAT_NEW)"; do \
	  name=$${pins%% *}; venv=.venv-compat-$$name; \
	  test -x $$venv/bin/python || $(PYTHON) -m venv $$venv; \
	  $$venv/bin/python -c "import torch" 2>/dev/null || $$venv/bin/python -m pip install -q "$(TORCH)"; \
	  $$venv/bin/python -m pip install -q $(COMPAT_DEPS) $${pins#* }; \
	  $$venv/bin/python -m pip install -q --no-deps -e .; \
	  $$venv/bin/python -c 'import mlflow, optuna; print("==", "mlflow", mlflow.__version__, "optuna", optuna.__version__)'; \
	  $$venv/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS); \
	done

# A real soak (tests/faults/test_soak.py): random SIGKILLs of workers, the driver and the tracking
# server for GROKSCALE_SOAK_S seconds (default 1800), then nothing lost or duplicated.
soak: install
	$(PY) -m pytest -m soak -s tests/faults/test_soak.py

bench: install
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

ui: install
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --backend-store-uri sqlite:///mlflow.db

clean:
	rm -rf $(VENV) .venv-compat-* .pytest_cache
