# The two commands a new user needs:  `make serve`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export VISIONSEARCH_VENV := $(abspath $(VENV))

.PHONY: install serve test testdeps lint typecheck protos bench bench-ingest clients soak fuzz

install:
	@scripts/setup.sh

# Installs everything, then serves the embedded default collection on 127.0.0.1:50051 (Ctrl-C stops it).
serve: install
	$(PY) -m server

# Installs everything, then lints, type-checks and runs the whole test suite.
test: install clients testdeps lint typecheck
	$(PY) -m pytest -q

# What only the tests need from Debian: FUSE (tests/faultfs.py plays a failing disk with it).
testdeps:
	@scripts/setup_test.sh

# Long runs, not in CI: 200 kill -9 rounds of the crasher, a 2-minute storm of writes racing drops and
# updates, then a 10-minute soak at 80% of the peak rate (bench/soak.py, results in bench/results/soak.json).
soak: install testdeps
	VISIONSEARCH_CRASHER_ROUNDS=200 $(PY) -m pytest -q -s --timeout=0 tests/test_crasher.py
	VISIONSEARCH_STORM_SECONDS=120 $(PY) -m pytest -q --timeout=0 tests/test_races.py
	$(PY) bench/soak.py

# The fuzz targets for 30 minutes each and the property tests at twenty times their CI size.
fuzz: install testdeps
	VISIONSEARCH_FUZZ_SECONDS=1800 $(PY) -m pytest -q -s --timeout=0 tests/test_fuzz.py
	VISIONSEARCH_HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q --timeout=0 tests/test_properties.py

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

protos:
	scripts/gen_protos.sh

# Toolchains and builds of the TypeScript and C++ clients (Debian packages, npm ci, cmake); idempotent.
# tests/test_foreign_clients.py needs them.
clients:
	@scripts/setup_clients.sh

bench:
	$(PY) bench/exact.py

# The Ray Data ingest pipeline with 1 and 2 actors against the best raw torch layout (a quiet machine only).
bench-ingest:
	$(PY) bench/ingest_throughput.py
