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


def warehouse_kind() -> str:
    """The warehouse the models live in and the syncs read: its dbt target and its Dagster resource."""
    return os.environ.get("CENSUS_STRIPE_WAREHOUSE", "duckdb")
