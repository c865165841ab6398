"""PostgreSQL, over psycopg 3. Redshift speaks the same protocol; its adapter only changes the dialect."""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import psycopg
from sqlglot import exp

from census_stripe.warehouse.base import Relation, Warehouse


def _column_names(cursor: psycopg.Cursor) -> list[str]:
    """The result's columns; a statement that returns no rows has none."""
    return [column.name for column in cursor.description or ()]


class PostgresWarehouse(Warehouse):
    dialect = "postgres"
    scheme = "postgresql"

    def __init__(self, connection: psycopg.Connection):
        # Autocommit, so that reads hold no transaction open; `execute` opens one explicitly.
        connection.autocommit = True
        self._connection = connection

    def location(self) -> str:
        info = self._connection.info  # psycopg leaves the password out of this description
        return f"{self.scheme}://{info.user}@{info.host}:{info.port}/{info.dbname}"

    def query(self, sql: str) -> pd.DataFrame:
        with self._connection.cursor() as cursor:
            cursor.execute(sql)
            return pd.DataFrame(cursor.fetchall(), columns=_column_names(cursor))

    def fetch_columns(self, sql: str) -> dict[str, list]:
        # The driver's Python values as they come: a frame in between would turn every datetime
        # into numpy's and back, most of the time of reading a chunk of meter events.
        with self._connection.cursor() as cursor:
            cursor.execute(sql)
            rows = cursor.fetchall()
            names = _column_names(cursor)
        columns = zip(*rows, strict=True) if rows else ((),) * len(names)
        return {name.lower(): list(values) for name, values in zip(names, columns, strict=True)}

    def query_chunks(self, sql: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
        # A server-side cursor: the warehouse holds the result, the sync takes it a chunk at a time.
        with self._connection.transaction(), self._connection.cursor(name="census_stripe_rows") as cursor:
            cursor.execute(sql)
            columns = None
            while rows := cursor.fetchmany(chunk_rows):
                columns = columns or _column_names(cursor)
                yield pd.DataFrame(rows, columns=columns)

    def execute(self, *statements: str) -> None:
        with self._connection.transaction():
            for statement in statements:
                self._connection.execute(statement)

    def ensure_index(self, table: Relation, columns: tuple[str, ...]) -> None:
        # PostgreSQL has no zone maps: without an index every filtered statement reads the whole table.
        name = exp.to_identifier(f"{table.name}_{'_'.join(columns)}", quoted=True).sql(self.dialect)
        keys = ", ".join(exp.to_identifier(column, quoted=True).sql(self.dialect) for column in columns)
        self.execute_ddl(f"CREATE INDEX IF NOT EXISTS {name} ON {table.table().sql(self.dialect)} ({keys})")


class RedshiftWarehouse(PostgresWarehouse):
    """Redshift over the PostgreSQL protocol; the SQL is generated in Redshift's dialect."""

    dialect = "redshift"
    scheme = "redshift"

    def ensure_index(self, table: Relation, columns: tuple[str, ...]) -> None:
        """Redshift has no indexes (its sort keys prune instead)."""
