"""What a process pays to import: each case runs in a fresh interpreter, whose sys.modules is its own."""

import json
import os
import subprocess
import sys

from census_stripe.settings import PROJECT_ROOT


def modules_loaded_by(code: str, watched: list[str], **env: str) -> list[str]:
    """Which of `watched` a fresh Python has imported once it ran `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {watched!r} if m in sys.modules]))"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **env},
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_planning_does_not_import_the_stripe_sdk():
    planning = ("planner", "lookup", "rows", "sql", "keys")
    code = "\n".join(f"import census_stripe.plan.{module}" for module in planning)
    assert modules_loaded_by(code, ["stripe", "census_stripe.stripe_client.client"]) == []


def test_loading_the_code_location_on_duckdb_imports_only_duckdbs_libraries():
    """Snowflake's and BigQuery's libraries took seconds of every run's start, also through the
    component types their Dagster integrations register (installed here by the warehouse extras);
    pandas and the Stripe SDK are imported when a run reads rows and calls Stripe."""
    code = "import census_stripe.definitions as definitions\ndefinitions.defs.get_repository_def()"
    watched = ["duckdb", "dagster_snowflake", "snowflake.connector", "dagster_gcp", "psycopg", "pandas", "stripe"]
    assert modules_loaded_by(code, watched, CENSUS_STRIPE_WAREHOUSE="duckdb") == ["duckdb"]
