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


def test_the_duckdb_warehouse_imports_only_duckdbs_libraries():
    """Snowflake's libraries alone took seconds of every run's start; pandas and the Stripe SDK are
    imported when a run reads rows and calls Stripe. (Dagster's load_from_defs_folder itself
    imports every installed integration that registers components, such as dagster-snowflake and
    dagster-gcp when their extras are installed; see BENCHMARKS.md.)"""
    code = (
        "from census_stripe.orchestration.warehouses import warehouse_from_env\n"
        "import census_stripe.orchestration.sync_asset, census_stripe.orchestration.resources\n"
        "warehouse_from_env()"
    )
    watched = ["duckdb", "dagster_snowflake", "snowflake.connector", "dagster_gcp", "psycopg", "pandas", "stripe"]
    assert modules_loaded_by(code, watched, CENSUS_STRIPE_WAREHOUSE="duckdb") == ["duckdb"]
