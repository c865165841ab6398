"""Every warehouse the key must be the same on, opened for a test module: DuckDB, PostgreSQL in
databases of each kind of collation (libc `C` and `C.UTF-8`, ICU's root locale and a Turkish one),
and fakesnow for Snowflake. Each PostgreSQL database is a throwaway one with a unique name,
dropped afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd
import psycopg

from census_stripe.warehouse.base import Relation, Warehouse
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.postgres import PostgresWarehouse
from census_stripe_tests.conftest import KEY_WAREHOUSES, postgres_sql, require_postgres

# How each PostgreSQL database is created: LOWER follows its collation.
POSTGRES_LOCALES = {
    "postgres_c": "LOCALE 'C'",  # LOWER changes ASCII only
    "postgres_c_utf8": "LOCALE 'C.UTF-8'",  # libc: one character to one, like DuckDB
    "postgres_icu": "LOCALE 'C.UTF-8' LOCALE_PROVIDER icu ICU_LOCALE 'und'",  # İ -> i + dot, final ς
    "postgres_icu_tr": "LOCALE 'C.UTF-8' LOCALE_PROVIDER icu ICU_LOCALE 'tr-TR'",  # I -> a dotless i
}


@contextmanager
def open_warehouse(kind: str, folder: Path, snowflake_server: dict | None = None) -> Iterator[Warehouse]:
    """`kind` open; Snowflake's is a database of its own on `snowflake_server` (fakesnow's)."""
    if kind == "duckdb":
        with duckdb.connect(str(folder / "warehouse.duckdb")) as connection:
            yield DuckDBWarehouse(connection)
    elif kind in POSTGRES_LOCALES:
        require_postgres()
        database = f"keys_{kind}_{uuid.uuid4().hex[:8]}"
        postgres_sql(f"CREATE DATABASE {database} TEMPLATE template0 ENCODING 'UTF8' {POSTGRES_LOCALES[kind]}")
        try:
            with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=database) as connection:
                yield PostgresWarehouse(connection)
        finally:
            postgres_sql(f"DROP DATABASE {database} WITH (FORCE)")
    elif kind == "snowflake":
        import snowflake.connector

        from census_stripe.warehouse.snowflake import SnowflakeWarehouse

        assert snowflake_server is not None, "fakesnow's server"
        database = f"KEYS_{uuid.uuid4().hex[:8].upper()}"
        with snowflake.connector.connect(**snowflake_server) as connection:
            connection.cursor().execute(f"CREATE DATABASE {database}")
            connection.cursor().execute(f"USE DATABASE {database}")
            yield SnowflakeWarehouse(connection)
    else:
        raise ValueError(f"no warehouse {kind!r} (known: {', '.join(KEY_WAREHOUSES)})")


def create_table(warehouse: Warehouse, schema: str, name: str, rows: pd.DataFrame) -> Relation:
    """A table of text columns holding `rows`, named as dbt would have created it (unquoted)."""
    fold = warehouse.model_identifier
    table = Relation(fold(schema), fold(name))
    columns = ", ".join(f"{column} {'integer' if column == 'id' else 'text'}" for column in rows.columns)
    warehouse.execute_ddl(f"CREATE SCHEMA IF NOT EXISTS {schema}", f"CREATE TABLE {schema}.{name} ({columns})")
    warehouse.append_rows(table, rows.rename(columns=fold))
    return table
