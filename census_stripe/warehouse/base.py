"""What the sync needs from a warehouse: run SQL, stream results, write rows. Nothing more.

Each warehouse is a small adapter over its own driver that runs SQL; all SQL is generated
elsewhere, per dialect, and the rows the sync writes (state, rejections) go in as plain INSERTs
built here, which every warehouse accepts.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, ClassVar

from sqlglot import exp

if TYPE_CHECKING:
    # Imported where rows are handled: pandas takes about a second, and loading Dagster's code
    # location, which imports this module, handles none.
    import pandas as pd

ROWS_PER_INSERT = 500


@dataclass(frozen=True)
class Relation:
    """A table or view, named as the warehouse knows it."""

    schema: str
    name: str
    database: str | None = None

    def table(self) -> exp.Table:
        return exp.table_(self.name, db=self.schema, catalog=self.database, quoted=True)


def is_missing(value) -> bool:
    """None, or what a result frame holds for NULL (NaN, NaT, pd.NA)."""
    import pandas as pd

    return value is None or (not isinstance(value, str) and pd.isna(value))


def literal(value) -> exp.Expression:
    """A Python value as a SQL literal; sqlglot escapes it for the dialect."""
    if is_missing(value):
        return exp.Null()
    # pandas' Timestamp is a datetime.
    if isinstance(value, datetime):
        return exp.cast(exp.Literal.string(value.strftime("%Y-%m-%d %H:%M:%S.%f")), "timestamp")
    if isinstance(value, date):
        return exp.cast(exp.Literal.string(value.isoformat()), "date")
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, numbers.Real):
        return exp.Literal.number(value)
    return exp.Literal.string(str(value))


class ModelTableMissingError(RuntimeError):
    """The sync's model has no table or view in the warehouse the sync reads: dbt has not built it there."""


class Warehouse(ABC):
    """An open session on a warehouse."""

    dialect: ClassVar[str]  # sqlglot's name for the SQL dialect

    @abstractmethod
    def location(self) -> str:
        """Where this warehouse is, for messages: its file, or its address without a password."""

    @abstractmethod
    def query(self, sql: str) -> pd.DataFrame:
        """The whole result, for small results."""

    @abstractmethod
    def query_chunks(self, sql: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """The result in chunks of at most `chunk_rows`, so memory stays bounded."""

    def fetch_columns(self, sql: str) -> dict[str, list]:
        """The whole result as column name (lower case) -> Python values, read to its end: no
        cursor or transaction stays open after it. The cheapest shape to turn into many small API
        requests."""
        rows = self.query(sql)
        return {str(name).lower(): rows[name].tolist() for name in rows.columns}

    @abstractmethod
    def execute(self, *statements: str) -> None:
        """Run statements in one transaction."""

    def execute_ddl(self, *statements: str) -> None:
        """Run schema changes (idempotent ones: IF NOT EXISTS). Where DDL may not sit inside a
        transaction (Snowflake commits around it, BigQuery refuses it), each runs on its own."""
        self.execute(*statements)

    def ensure_index(self, table: Relation, columns: tuple[str, ...]) -> None:
        """An index on `columns` of `table`, where the warehouse has indexes. Those without them
        skip the storage a filter rules out by their own statistics (DuckDB's zone maps,
        Snowflake's micro-partitions, Redshift's sort keys), so by default there is nothing to do."""
        return

    def model_identifier(self, name: str) -> str:
        """How the warehouse stores a name dbt created unquoted (Snowflake upper-cases them)."""
        return name

    def _inserts(self, table: Relation, rows: pd.DataFrame) -> list[str]:
        columns = [exp.to_identifier(name, quoted=True) for name in rows.columns]
        statements = []
        for start in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows.iloc[start : start + ROWS_PER_INSERT]
            values = exp.values([exp.tuple_(*map(literal, row)) for row in chunk.itertuples(index=False)])
            statements.append(exp.insert(values, table.table(), columns=columns).sql(self.dialect))
        return statements

    def replace_rows(self, table: Relation, rows: pd.DataFrame, key_columns: tuple[str, ...]) -> None:
        """Delete the rows of `table` matching `rows` on `key_columns`, then insert `rows`; atomically."""
        matches = [
            exp.and_(
                *(
                    exp.column(name, quoted=True).eq(literal(value))
                    for name, value in zip(key_columns, key, strict=True)
                )
            )
            for key in rows[list(key_columns)].drop_duplicates().itertuples(index=False)
        ]
        deletes = [
            exp.delete(table.table(), where=exp.or_(*matches[start : start + ROWS_PER_INSERT])).sql(self.dialect)
            for start in range(0, len(matches), ROWS_PER_INSERT)
        ]
        self.execute(*deletes, *self._inserts(table, rows))

    def append_rows(self, table: Relation, rows: pd.DataFrame) -> None:
        """Insert `rows` into `table`."""
        self.execute(*self._inserts(table, rows))

    def table_columns(self, table: Relation) -> list[str]:
        """The columns `table` has now."""
        return list(self.column_types(table))

    def column_types(self, table: Relation) -> dict[str, str]:
        """The columns `table` has now, with their types as the warehouse names them, from the
        SQL-standard information schema."""
        columns = exp.table_("columns", db="information_schema")
        condition = exp.and_(
            exp.column("table_schema").eq(exp.Literal.string(table.schema)),
            exp.column("table_name").eq(exp.Literal.string(table.name)),
        )
        query = exp.select("column_name", "data_type").from_(columns).where(condition)
        found = self.query(query.sql(self.dialect))
        return {str(name): str(kind) for name, kind in zip(found.iloc[:, 0], found.iloc[:, 1], strict=True)}

    def require_model(self, model_name: str, relation: Relation) -> None:
        """Refuses a run whose model was never built in this warehouse, naming the model and the warehouse
        (a sync pointed at another file or database than dbt built into fails here, before any write)."""
        if not self.table_columns(relation):
            raise ModelTableMissingError(
                f"model {model_name!r} has no table or view {relation.schema}.{relation.name} in {self.location()}: "
                "build it there first (dbt build, or materialize the model in Dagster), or point the sync's "
                "warehouse at the one dbt builds into"
            )
