# The two commands a newcomer needs:
#   make up     install everything, start Cassandra, Redis and the services, run a short demo
#   make test   lint, type-check, check generated code, run every test against real services
# and: make down (stop everything), make bench (benchmarks), make status.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up down status test lint bench bench-smoke faults-report demo install sdk-matrix

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/auditmesh up
	$(MAKE) --no-print-directory demo

demo: $(STAMP)
	$(BIN)/auditmesh emit 5000 --weddings 100
	$(BIN)/auditmesh query --wedding wed-7-00000 --limit 10

down: $(STAMP)
	$(BIN)/auditmesh down

status: $(STAMP)
	$(BIN)/auditmesh status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/gen_protos.py --check

test: lint
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python -m bench.pipeline
	$(BIN)/python -m bench.query
	$(BIN)/python -m bench.write_path
	$(BIN)/python -m bench.cost
	$(BIN)/python -m bench.secure
	$(BIN)/python -m bench.alerts
	$(BIN)/python -m bench.alert_updates
	$(BIN)/python -m bench.spool_cost

bench-smoke: $(STAMP)
	$(BIN)/python -m bench.pipeline --smoke
	$(BIN)/python -m bench.query --smoke
	$(BIN)/python -m bench.cost --smoke
	$(BIN)/python -m bench.secure --smoke
	$(BIN)/python -m bench.alerts --smoke
	$(BIN)/python -m bench.alert_updates
	$(BIN)/python -m bench.spool_cost --smoke

faults-report: $(STAMP)
	$(BIN)/python -m bench.report faults

# The SDK alone (no server extra) in a fresh venv per Python 3.10-3.13, tested against a mesh
# that the project's venv runs (scripts/sdk_matrix.sh).
sdk-matrix: $(STAMP)
	scripts/sdk_matrix.sh
