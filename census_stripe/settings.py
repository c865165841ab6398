"""Where things live, and the environment variables that move them."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

# This repository's checkout, for its demo and tests: the demo's dbt project and defs folder. In an
# installed census_stripe it names a folder beside site-packages, so nothing a user runs defaults to it.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DBT_PROJECT_DIR = PROJECT_ROOT / "dbt_project"
# The demo's defs folder: one StripeSyncComponent instance per sync, e.g. defs/customers/defs.yaml.
DEFS_DIR = Path(__file__).resolve().parent / "defs"


def is_dagster_project(folder: Path) -> bool:
    """Whether the folder's pyproject.toml makes it a Dagster project (`[tool.dg]` or `[tool.dagster]`)."""
    pyproject = folder / "pyproject.toml"
    if not pyproject.is_file():
        return False
    try:
        tools = tomllib.loads(pyproject.read_text()).get("tool", {})
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError):
        return False
    return "dg" in tools or "dagster" in tools


def dagster_project_root(start: Path | None = None) -> Path:
    """The Dagster project this process works in: the nearest folder holding one, from the working
    directory up (`dg` and `dagster dev` run code there), else the working directory itself."""
    here = (start or Path.cwd()).resolve()
    return next((folder for folder in (here, *here.parents) if is_dagster_project(folder)), here)


# The user's project's data/ (git-ignored here): the embedded warehouse and a local Stripe's data.
DATA_DIR = Path(os.environ.get("CENSUS_STRIPE_DATA_DIR") or dagster_project_root() / "data")


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
