"""Snowflake, over the official connector (as dagster-snowflake's SnowflakeResource opens it)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import pandas as pd

from census_stripe.warehouse.base import Warehouse


class SnowflakeWarehouse(Warehouse):
    dialect = "snowflake"

    def __init__(self, connection):
        self._connection = connection

    def location(self) -> str:
        connection = self._connection
        return f"the Snowflake account {connection.account}, database {connection.database}"

    def model_identifier(self, name: str) -> str:
        # dbt creates tables and columns unquoted, which Snowflake stores upper-cased.
        return name.upper()

    def query(self, sql: str) -> pd.DataFrame:
        with closing(self._connection.cursor()) as cursor:
            cursor.execute(sql)
            return pd.DataFrame(cursor.fetchall(), columns=[column[0] for column in cursor.description])

    def query_chunks(self, sql: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
        with closing(self._connection.cursor()) as cursor:
            cursor.execute(sql)
            columns = [column[0] for column in cursor.description]
            while rows := cursor.fetchmany(chunk_rows):
                yield pd.DataFrame(rows, columns=columns)

    def execute_ddl(self, *statements: str) -> None:
        with closing(self._connection.cursor()) as cursor:
            for statement in statements:
                cursor.execute(statement)

    def execute(self, *statements: str) -> None:
        with closing(self._connection.cursor()) as cursor:
            cursor.execute("BEGIN")
            try:
                for statement in statements:
                    cursor.execute(statement)
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
