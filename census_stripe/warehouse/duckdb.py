"""DuckDB, the embedded default: a single file, no server, no account."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import duckdb
from sqlglot import exp

from census_stripe.warehouse.base import Relation, Warehouse

if TYPE_CHECKING:
    import pandas as pd  # DuckDB makes the frames; loading the code location imports neither
    import pyarrow as pa

_VECTOR_ROWS = 2048  # DuckDB hands results out in vectors of this many rows


# DuckDB's own default is 80 % of the machine's memory, taken inside the Dagster run's process.
# Bounded, a plan over 1M rows peaks near 0.8 GiB instead of 1.3 (BENCHMARKS.md, section 2); past
# the limit DuckDB spills to disk rather than failing.
DEFAULT_MEMORY_LIMIT = "512MB"


def _python_values(column: pa.ChunkedArray) -> list:
    """A column's values as Python objects. Arrow builds each datetime of a timestamp column in
    Python, 25 times slower than numpy does (75 ms for a chunk of 50,000 meter events); zoned ones
    keep Arrow's way, which keeps their zone."""
    import pyarrow as pa

    if pa.types.is_timestamp(column.type) and column.type.tz is None:
        return column.to_numpy().astype("datetime64[us]").tolist()  # NaT becomes None
    return column.to_pylist()


class DuckDBWarehouse(Warehouse):
    dialect = "duckdb"

    def __init__(self, connection: duckdb.DuckDBPyConnection, memory_limit: str = DEFAULT_MEMORY_LIMIT):
        self._connection = connection
        connection.execute("SET memory_limit = ?", [memory_limit])

    def location(self) -> str:
        path = self._connection.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchone()
        return f"the DuckDB file {path[0]}" if path and path[0] else "an in-memory DuckDB database"

    def query(self, sql: str) -> pd.DataFrame:
        return self._connection.execute(sql).df()

    def query_chunks(self, sql: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
        cursor = self._connection.cursor()
        cursor.execute(sql)
        vectors = max(1, chunk_rows // _VECTOR_ROWS)
        while not (chunk := cursor.fetch_df_chunk(vectors)).empty:
            yield chunk

    def fetch_columns(self, sql: str) -> dict[str, list]:
        # Arrow: no pandas frame in between.
        table = self._connection.cursor().sql(sql).to_arrow_table()
        return {
            name.lower(): _python_values(column) for name, column in zip(table.column_names, table.columns, strict=True)
        }

    def execute(self, *statements: str) -> None:
        if len(statements) == 1:
            # A statement is a transaction of its own; BEGIN and COMMIT around it would add a
            # millisecond to each ledger mark.
            self._connection.execute(statements[0])
            return
        self._connection.execute("BEGIN TRANSACTION")
        try:
            for statement in statements:
                self._connection.execute(statement)
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    def _with_registered(self, rows: pd.DataFrame, *statements) -> None:
        view = f"census_stripe_rows_{uuid.uuid4().hex}"
        self._connection.register(view, rows)
        try:
            self.execute(*(statement(exp.to_identifier(view, quoted=True).sql("duckdb")) for statement in statements))
        finally:
            self._connection.unregister(view)

    def replace_rows(self, table: Relation, rows: pd.DataFrame, key_columns: tuple[str, ...]) -> None:
        target = table.table().sql("duckdb")
        keys = ", ".join(exp.to_identifier(c, quoted=True).sql("duckdb") for c in key_columns)
        self._with_registered(
            rows,
            lambda view: f"DELETE FROM {target} WHERE ({keys}) IN (SELECT {keys} FROM {view})",
            lambda view: f"INSERT INTO {target} BY NAME SELECT * FROM {view}",
        )

    def append_rows(self, table: Relation, rows: pd.DataFrame) -> None:
        target = table.table().sql("duckdb")
        self._with_registered(rows, lambda view: f"INSERT INTO {target} BY NAME SELECT * FROM {view}")
