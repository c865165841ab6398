# Two commands on a fresh machine: `make demo` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
INSTALLED := $(VENV)/.installed
CENSUS_STRIPE_WAREHOUSE ?= duckdb
MANIFEST := dbt_project/target/$(CENSUS_STRIPE_WAREHOUSE)/manifest.json
export PATH := $(BIN):$(PATH)

.PHONY: install demo dev test typecheck bench lint screenshots browser clean-data

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,postgres,redshift,snowflake,bigquery]'
	touch $@

# Dagster reads dbt's manifest; prepare it here so that nothing parses dbt at import time.
# dbt only knows a seed whose CSV exists, so the demo data is generated first.
$(MANIFEST): $(INSTALLED) $(shell find dbt_project -name '*.sql' -o -name '*.yml' | grep -v target/)
	@$(BIN)/python -m census_stripe.settings
	$(BIN)/python -m census_stripe.demo.seed_data
	$(BIN)/dagster-dbt project prepare-and-package --file census_stripe/orchestration/dbt_project.py

demo: $(MANIFEST)  ## seed, build the dbt models, sync them to a local Stripe server, print a summary
	$(BIN)/python -m census_stripe.demo run

# DEV_ARGS go to `dagster dev`, e.g. DEV_ARGS="-p 3001". Ctrl-C stops everything it started.
dev: $(MANIFEST)  ## the Dagster UI (http://127.0.0.1:3000) on the demo's warehouse and Stripe data
	$(BIN)/python -m census_stripe.demo dev $(DEV_ARGS)

# mypy first; then two processes share the tests, a file each (a module's fixtures are set up once);
# then the tests marked serial run on their own (pyproject.toml says why). Both passes run in an order
# shuffled by pytest-randomly from one seed, printed at the top of each: `make test TEST_SEED=<seed>`
# repeats an order, `make test TEST_ORDER="-p no:randomly"` keeps the files' own.
ifndef TEST_SEED
TEST_SEED := $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
endif
TEST_ORDER ?= -p randomly --randomly-seed=$(TEST_SEED)
test: typecheck $(MANIFEST) browser  ## the type checker, then the test suite: real DuckDB, real dbt, a real local Stripe server
	$(BIN)/python -m pytest -m 'not serial' --numprocesses 2 --dist loadfile --durations 15 $(TEST_ORDER) $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m serial $(TEST_ORDER) $(PYTEST_ARGS)

# Request parameters are the stripe SDK's TypedDicts: a misspelled Stripe parameter fails here, offline.
typecheck: $(INSTALLED)  ## mypy over the package
	$(BIN)/mypy

# The UI test drives Debian's Chromium; a test tool's own browser download does not work offline.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -qq chromium || { apt-get update -qq && apt-get install -y -qq chromium; }; }; } || \
		{ echo "The UI test needs Chromium: run 'sudo apt-get install chromium'"; exit 1; }

screenshots: $(MANIFEST) browser  ## regenerate docs/*.png from the UI test
	CENSUS_STRIPE_SCREENSHOTS=docs $(BIN)/python -m pytest census_stripe_tests/test_ui.py

bench: $(MANIFEST)  ## the benchmarks of BENCHMARKS.md (several minutes; figures are printed)
	$(BIN)/python -m benchmarks.noop_rerun
	$(BIN)/python -m benchmarks.plan_1m
	$(BIN)/python -m benchmarks.first_sync_lookup
	$(BIN)/python -m benchmarks.throughput
	$(BIN)/python -m benchmarks.load_time
	$(BIN)/python -m benchmarks.meter_events

lint: $(INSTALLED)  ## style and static checks
	$(BIN)/ruff check census_stripe census_stripe_tests
	$(BIN)/ruff format --check census_stripe census_stripe_tests

clean-data:  ## forget the demo's warehouse, Stripe data and Dagster runs
	rm -rf data
