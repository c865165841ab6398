"""Where things live, and the environment variables that move them."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
# The project's defs folder: one StripeSyncComponent instance per sync, e.g. defs/customers/defs.yaml.
DEFS_DIR = Path(__file__).resolve().parent / "defs"

# Git-ignored; holds the embedded warehouse and the demo's local Stripe data.
DATA_DIR = Path(os.environ.get("CENSUS_STRIPE_DATA_DIR", PROJECT_ROOT / "data"))


def duckdb_path() -> Path:
    """The embedded warehouse file; dbt's profile resolves the same variable to the same default."""
    return Path(os.environ.get("CENSUS_STRIPE_DUCKDB_PATH", DATA_DIR / "warehouse.duckdb"))


WAREHOUSES = ("duckdb", "postgres", "redshift", "snowflake", "bigquery")


class UnknownWarehouseError(ValueError):
    """CENSUS_STRIPE_WAREHOUSE names no warehouse this project supports."""


def warehouse_kind() -> str:
    """The warehouse the models live in and the syncs read: its dbt target and its Dagster resource.

    Checked here, where every path reads it (the demo, `make`'s manifest step, a Dagster process
    loading the definitions), so that a typo gets this message rather than a missing dbt manifest.
    """
    kind = os.environ.get("CENSUS_STRIPE_WAREHOUSE", "duckdb")
    if kind not in WAREHOUSES:
        raise UnknownWarehouseError(
            f"CENSUS_STRIPE_WAREHOUSE={kind!r} is not a warehouse; use one of {', '.join(WAREHOUSES)}"
        )
    return kind


if __name__ == "__main__":
    # `make` checks the variable so before it asks dbt for a manifest of that target.
    try:
        warehouse_kind()
    except UnknownWarehouseError as error:
        raise SystemExit(str(error)) from None
