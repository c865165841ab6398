"""What the sync needs from a warehouse: run SQL, stream results, append rows. Nothing more.

Each warehouse is a small adapter over its own driver; all SQL is generated elsewhere, per dialect.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
from sqlglot import exp


@dataclass(frozen=True)
class Relation:
    """A table or view, named as the warehouse knows it."""

    schema: str
    name: str
    database: str | None = None

    def table(self) -> exp.Table:
        return exp.table_(self.name, db=self.schema, catalog=self.database, quoted=True)

    def __str__(self) -> str:
        return ".".join(part for part in (self.database, self.schema, self.name) if part)


class Warehouse(ABC):
    """An open session on a warehouse."""

    dialect: ClassVar[str]  # sqlglot's name for the SQL dialect

    @abstractmethod
    def query(self, sql: str) -> pd.DataFrame:
        """The whole result, for small results."""

    @abstractmethod
    def query_chunks(self, sql: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
        """The result in chunks of at most `chunk_rows`, so memory stays bounded."""

    @abstractmethod
    def execute(self, *statements: str) -> None:
        """Run statements in one transaction."""

    @abstractmethod
    def replace_rows(self, table: Relation, rows: pd.DataFrame, key_columns: tuple[str, ...]) -> None:
        """Delete the rows of `table` matching `rows` on `key_columns`, then insert `rows`; atomically."""

    @abstractmethod
    def append_rows(self, table: Relation, rows: pd.DataFrame) -> None:
        """Insert `rows` into `table`."""

    def table_columns(self, table: Relation) -> list[str]:
        """The columns `table` has now, from the SQL-standard information schema."""
        columns = exp.table_("columns", db="information_schema")
        condition = exp.and_(
            exp.column("table_schema").eq(exp.Literal.string(table.schema)),
            exp.column("table_name").eq(exp.Literal.string(table.name)),
        )
        query = exp.select("column_name").from_(columns).where(condition)
        return list(self.query(query.sql(self.dialect)).iloc[:, 0])
