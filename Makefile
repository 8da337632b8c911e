# The two commands a new user needs:  `make serve`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
export VISIONSEARCH_VENV := $(abspath $(VENV))

.PHONY: install serve test lint typecheck protos bench bench-ingest clients

install:
	@scripts/setup.sh

# Installs everything, then serves the embedded default collection on 127.0.0.1:50051 (Ctrl-C stops it).
serve: install
	$(PY) -m server

# Installs everything, then lints, type-checks and runs the whole test suite.
test: install clients lint typecheck
	$(PY) -m pytest -q

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
