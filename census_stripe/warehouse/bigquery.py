"""BigQuery, over google-cloud-bigquery (as dagster-gcp's BigQueryResource opens it).

Not exercised against BigQuery in the test suite: no BigQuery emulator runs offline here. The
SQL it runs is generated in BigQuery's dialect and checked with sqlglot; see docs/warehouses.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
from sqlglot import exp

from census_stripe.warehouse.base import Relation, Warehouse


class BigQueryWarehouse(Warehouse):
    dialect = "bigquery"

    def __init__(self, client):
        self._client = client

    def query(self, sql: str) -> pd.DataFrame:
        return self._client.query(sql).result().to_dataframe()

    def query_chunks(self, sql: str, chunk_rows: int) -> Iterator[pd.DataFrame]:
        for page in self._client.query(sql).result(page_size=chunk_rows).pages:
            yield pd.DataFrame([dict(row.items()) for row in page])

    def location(self) -> str:
        return f"the BigQuery project {self._client.project}"

    def execute(self, *statements: str) -> None:
        # One multi-statement script is one job, and a transaction.
        script = ";\n".join(["BEGIN TRANSACTION", *statements, "COMMIT TRANSACTION"])
        self._client.query(script).result()

    def execute_ddl(self, *statements: str) -> None:
        for statement in statements:
            self._client.query(statement).result()

    def column_types(self, table: Relation) -> dict[str, str]:
        # BigQuery keeps an information schema per dataset.
        columns = exp.table_("COLUMNS", db="INFORMATION_SCHEMA", catalog=table.schema)
        query = (
            exp.select("column_name", "data_type")
            .from_(columns)
            .where(exp.column("table_name").eq(exp.Literal.string(table.name)))
        )
        found = self.query(query.sql(self.dialect))
        return {str(name): str(kind) for name, kind in zip(found.iloc[:, 0], found.iloc[:, 1], strict=True)}
