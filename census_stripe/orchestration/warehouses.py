"""The warehouse as a Dagster resource: where the models live and the sync keeps its state.

CENSUS_STRIPE_WAREHOUSE picks one (duckdb, postgres, redshift, snowflake, bigquery); each reads
its credentials from the same environment variables as its dbt target in dbt_project/profiles.yml.
Drivers are imported on use, so a DuckDB-only install needs none of the others, and loading the
code location pays only for the chosen warehouse's libraries (Snowflake's alone take seconds).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from census_stripe.settings import WAREHOUSES, duckdb_path, warehouse_kind
from census_stripe.warehouse.base import Warehouse
from census_stripe.warehouse.duckdb import DEFAULT_MEMORY_LIMIT, DuckDBWarehouse
from census_stripe.warehouse.state import DEFAULT_SCHEMA

if TYPE_CHECKING:
    from census_stripe.warehouse.postgres import PostgresWarehouse  # psycopg, imported on use


class WarehouseResource(dg.ConfigurableResource):
    """One subclass per kind of warehouse."""

    kind: ClassVar[str]  # shown on assets in the UI
    state_schema: str = Field(
        default=DEFAULT_SCHEMA, description="Schema of the sync's state and rejection tables (created on first use)."
    )

    @contextmanager
    def open(self, read_only: bool = False) -> Iterator[Warehouse]:
        """A session; `read_only` for sensors, which must not take a writer's place."""
        raise NotImplementedError
        yield


class DuckDBWarehouseResource(WarehouseResource):
    """The embedded warehouse: a DuckDB file, the one dbt builds the models into."""

    kind: ClassVar[str] = "duckdb"
    duckdb: DuckDBResource
    memory_limit: str = Field(
        default=DEFAULT_MEMORY_LIMIT,
        description="DuckDB's memory limit while a sync reads and plans (e.g. 512MB, 2GB); beyond it DuckDB "
        "spills to disk.",
    )

    @contextmanager
    def open(self, read_only: bool = False) -> Iterator[Warehouse]:
        if read_only:
            # DuckDB has one writer per file; a reader must not wait on it, nor block it for long.
            with duckdb.connect(self.duckdb.database, read_only=True) as connection:
                yield DuckDBWarehouse(connection, self.memory_limit)
            return
        Path(self.duckdb.database).parent.mkdir(parents=True, exist_ok=True)
        with self.duckdb.get_connection() as connection:
            yield DuckDBWarehouse(connection, self.memory_limit)


class PostgresWarehouseResource(WarehouseResource):
    """PostgreSQL. The user needs SELECT on the models and CREATE on the database (for the state schema)."""

    kind: ClassVar[str] = "postgres"
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = ""
    database: str = "postgres"

    def _adapter(self) -> type["PostgresWarehouse"]:
        from census_stripe.warehouse.postgres import PostgresWarehouse

        return PostgresWarehouse

    @contextmanager
    def open(self, read_only: bool = False) -> Iterator[Warehouse]:
        import psycopg

        password = self.password or None
        with psycopg.connect(
            host=self.host, port=self.port, user=self.user, password=password, dbname=self.database
        ) as connection:
            yield self._adapter()(connection)


class RedshiftWarehouseResource(PostgresWarehouseResource):
    """Redshift, over its PostgreSQL-compatible protocol."""

    kind: ClassVar[str] = "redshift"
    port: int = 5439

    def _adapter(self) -> type["PostgresWarehouse"]:
        from census_stripe.warehouse.postgres import RedshiftWarehouse

        return RedshiftWarehouse


class BigQueryWarehouseResource(WarehouseResource):
    kind: ClassVar[str] = "bigquery"
    project: str
    location: str | None = None

    @contextmanager
    def open(self, read_only: bool = False) -> Iterator[Warehouse]:
        from dagster_gcp import BigQueryResource

        from census_stripe.warehouse.bigquery import BigQueryWarehouse

        with BigQueryResource(project=self.project, location=self.location).get_client() as client:
            yield BigQueryWarehouse(client)


def _secret(name: str):
    """A secret read at run time, so its value never lands in the run's config."""
    return dg.EnvVar(name) if name in os.environ else ""


def warehouse_from_env() -> WarehouseResource:
    """The warehouse CENSUS_STRIPE_WAREHOUSE names, from the variables its dbt target reads too."""
    kind = warehouse_kind()
    if kind == "duckdb":
        return DuckDBWarehouseResource(
            duckdb=DuckDBResource(database=str(duckdb_path())),
            memory_limit=os.environ.get("CENSUS_STRIPE_DUCKDB_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT),
        )
    if kind in ("postgres", "redshift"):
        prefix, resource = (
            ("PG", PostgresWarehouseResource) if kind == "postgres" else ("REDSHIFT_", RedshiftWarehouseResource)
        )
        names = {"host": "HOST", "port": "PORT", "user": "USER", "database": "DATABASE"}
        settings: dict[str, Any] = {
            field: value for field, name in names.items() if (value := os.environ.get(prefix + name))
        }
        return resource(**settings, password=_secret(prefix + "PASSWORD"))
    if kind == "snowflake":
        from dagster_snowflake import SnowflakeResource

        from census_stripe.orchestration.snowflake_warehouse import SnowflakeWarehouseResource

        stand_in = {
            name.lower(): value
            for name in ("HOST", "PORT", "PROTOCOL")
            if (value := os.environ.get(f"SNOWFLAKE_{name}"))
        }
        return SnowflakeWarehouseResource(
            snowflake=SnowflakeResource(
                account=os.environ.get("SNOWFLAKE_ACCOUNT"),
                user=os.environ.get("SNOWFLAKE_USER", ""),
                password=_secret("SNOWFLAKE_PASSWORD"),
                database=os.environ.get("SNOWFLAKE_DATABASE"),
                schema=os.environ.get("CENSUS_STRIPE_SCHEMA", "PUBLIC"),
                warehouse=os.environ.get("SNOWFLAKE_WAREHOUSE"),
                role=os.environ.get("SNOWFLAKE_ROLE"),
                additional_snowflake_connection_args=stand_in or None,
            )
        )
    if kind == "bigquery":
        return BigQueryWarehouseResource(
            project=os.environ.get("BIGQUERY_PROJECT", ""), location=os.environ.get("BIGQUERY_LOCATION")
        )
    raise ValueError(f"CENSUS_STRIPE_WAREHOUSE={kind!r}; use one of {', '.join(WAREHOUSES)}")
