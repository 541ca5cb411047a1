# medview: `make run` opens the viewer on a sample study, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-gpu fuzz lint package package-smoke clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/medview --sample

test: $(STAMP)
	$(VENV)/bin/ruff check medview tests benchmarks scripts packaging
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/run_all.py

bench-gpu: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/bench_gpu.py

# Mutation fuzzing of the readers; crashing or hanging inputs are kept in tests/data/regressions.
SECONDS ?= 600
fuzz: $(STAMP)
	$(PY) -m tests.fuzz --seconds $(SECONDS)

lint: $(STAMP)
	$(VENV)/bin/ruff check medview tests benchmarks scripts packaging
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# The desktop app: a one-folder PyInstaller bundle in dist/medview/ (see packaging/README.md).
package: $(STAMP)
	PYTHON=$(PY) bash packaging/build.sh

# Build the bundle and run it offline in an empty environment (slow; not part of `make test`).
package-smoke: $(STAMP)
	PYTHON=$(PY) bash packaging/smoke_test.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
