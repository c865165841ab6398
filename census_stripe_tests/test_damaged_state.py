"""Damaged state never stops a run, on DuckDB, PostgreSQL and Snowflake (fakesnow): a state row with
an unknown status, a NULL hash, an id of another kind of object, or a second row for its key is
ignored with a warning naming table, sync, account and key; the key is looked up in Stripe again,
its state filed anew, and the run counts it in `state_rows_repaired`. The model's rows are left as
they were, so the warehouse's SQL must find the damage by itself. Keys that left the model are
archived by what Stripe holds under them, never by a damaged row's id.
"""

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pandas as pd
import psycopg
import pytest

from census_stripe.objects import PRICE, PRODUCT
from census_stripe.sync import SyncReport, run_sync
from census_stripe.warehouse.base import Relation, Warehouse
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.postgres import PostgresWarehouse
from census_stripe.warehouse.snowflake import SnowflakeWarehouse
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.catalog import stripe_for, sync_spec
from census_stripe_tests.conftest import require_postgres

CUSTOMERS = sync_spec(
    """
model: customers
object: customer
behavior: update_or_create
key: {field: email, column: email}
mapping: {name: full_name, metadata.plan: plan}
""",
    "customers",
)
CUSTOMER_ROWS = [{"email": f"user{i}@example.com", "full_name": f"User {i}", "plan": "pro"} for i in range(8)]
DAMAGED = "user4@example.com"

PRODUCTS = sync_spec(
    """
model: products
object: product
behavior: update_or_create
archive_missing: true
max_archive_rate: 0.5  # one of three leaves: more than the default 10 % refuses
key: {field: id, column: id}
mapping: {name: name}
""",
    "products",
)
PRODUCT_ROWS = [{"id": "team", "name": "Team"}, {"id": "pro", "name": "Pro"}, {"id": "solo", "name": "Solo"}]
# Quoted, as the engine creates them: Snowflake would read a bare name in upper case.
STATE_COLUMNS = [
    f'"{name}"'
    for name in (
        "sync_name",
        "stripe_account",
        "customer_key",
        "stripe_customer_id",
        "row_hash",
        "synced_values",
        "synced_at",
        "status",
        "error",
        "run_id",
        "updated_at",
    )
]


@dataclass
class Place:
    """A warehouse of one kind, with a schema of models and one of state of this test's own."""

    warehouse: Warehouse
    schema: str
    state_schema: str

    @property
    def state(self) -> str:
        return f'"{self.state_schema}"."sync_state"'

    def write_model(self, name: str, rows: list[dict]) -> None:
        """The model `name`, replaced by these rows (every column text), named as dbt would create it."""
        fold = self.warehouse.model_identifier
        table = Relation(fold(self.schema), fold(name))
        columns = ", ".join(f'"{fold(column)}" varchar' for column in rows[0])
        self.warehouse.execute_ddl(
            f'drop table if exists "{table.schema}"."{table.name}"',
            f'create table "{table.schema}"."{table.name}" ({columns})',
        )
        self.warehouse.append_rows(table, pd.DataFrame(rows).rename(columns=fold).astype(object))

    def execute(self, statement: str) -> None:
        self.warehouse.execute(statement)

    def run(self, spec, url: str) -> SyncReport:
        return run_sync(
            spec,
            model=Relation(self.schema, spec.model),
            store=SyncStateStore(self.warehouse, self.state_schema),
            stripe=stripe_for(url, spec.object_type),
            run_id=f"run-{uuid.uuid4().hex[:8]}",
        )

    def state_of(self, sync_name: str, key: str) -> list[tuple[str | None, str]]:
        """The key's state rows: (Stripe id, status)."""
        rows = self.warehouse.query(
            f'select "stripe_customer_id", "status" from {self.state} '
            f"where \"sync_name\" = '{sync_name}' and \"customer_key\" = '{key}'"
        )
        return [(stripe_id, status) for stripe_id, status in rows.itertuples(index=False)]


@pytest.fixture(params=["duckdb", "postgres", "snowflake"])
def place(request, tmp_path) -> Iterator[Place]:
    suffix = uuid.uuid4().hex[:8]
    schema, state_schema = f"models_{suffix}", f"state_{suffix}"
    if request.param == "duckdb":
        with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as connection:
            warehouse: Warehouse = DuckDBWarehouse(connection)
            warehouse.execute_ddl(f'create schema "{schema}"')
            yield Place(warehouse, schema, state_schema)
    elif request.param == "postgres":
        require_postgres()
        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test") as connection:
            warehouse = PostgresWarehouse(connection)
            warehouse.execute_ddl(f'create schema "{schema}"')
            try:
                yield Place(warehouse, schema, state_schema)
            finally:
                warehouse.execute_ddl(*(f'drop schema if exists "{name}" cascade' for name in (schema, state_schema)))
    else:
        import snowflake.connector

        server = request.getfixturevalue("fakesnow_server")
        database = f"DAMAGE_{suffix.upper()}"
        with snowflake.connector.connect(**server) as connection:
            connection.cursor().execute(f"create database {database}")
            connection.cursor().execute(f"use database {database}")
            warehouse = SnowflakeWarehouse(connection)
            warehouse.execute_ddl(f'create schema "{schema.upper()}"')
            yield Place(warehouse, schema, state_schema)


def damage(place: Place, kind: str, sync_name: str, key: str, wrong_id: str) -> None:
    """Damage one key's state row, as a hand edit, a future version or a half-done repair would."""
    where = f"\"sync_name\" = '{sync_name}' and \"customer_key\" = '{key}'"
    twin = [f"'{wrong_id}'" if name == '"stripe_customer_id"' else name for name in STATE_COLUMNS]
    statements = {
        "unknown-status": f"update {place.state} set \"status\" = 'resynced_by_v9' where {where}",
        "null-hash": f'update {place.state} set "row_hash" = null where {where}',
        "wrong-kind-of-id": f"update {place.state} set \"stripe_customer_id\" = '{wrong_id}' where {where}",
        # A second row for the key, naming another object.
        "two-rows": f"insert into {place.state} ({', '.join(STATE_COLUMNS)}) "
        f"select {', '.join(twin)} from {place.state} where {where}",
    }
    place.execute(statements[kind])


DAMAGE = ["unknown-status", "null-hash", "wrong-kind-of-id", "two-rows"]


def warnings_about(caplog, key: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and repr(key) in r.getMessage()]


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_damaged_state_row_is_warned_about_looked_up_and_repaired(place, double, kind, caplog):
    place.write_model("customers", CUSTOMER_ROWS)
    assert place.run(CUSTOMERS, double.url).counts()["created"] == len(CUSTOMER_ROWS)
    [(right_id, _)] = place.state_of("customers", DAMAGED)
    damage(place, kind, "customers", DAMAGED, wrong_id="prod_notacustomer")

    with caplog.at_level(logging.WARNING):
        counts = place.run(CUSTOMERS, double.url).counts()
    assert (counts["state_rows_repaired"], counts["created"], counts["updated"], counts["failed"]) == (1, 0, 0, 0)
    [warning] = warnings_about(caplog, DAMAGED)
    assert f"{place.state_schema}.sync_state" in warning
    assert "sync customers" in warning and "acct_double (test mode)" in warning
    assert place.state_of("customers", DAMAGED) == [(right_id, "synced")]
    assert double.stats()["customers"] == len(CUSTOMER_ROWS)

    again = place.run(CUSTOMERS, double.url).counts()
    assert (again["state_rows_repaired"], again["stripe_api_calls"]) == (0, 0)


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_key_that_left_the_model_with_damaged_state_archives_what_stripe_holds_under_it(place, double, kind, caplog):
    place.write_model("products", PRODUCT_ROWS)
    assert place.run(PRODUCTS, double.url).counts()["created"] == 3
    # The wrong id is another product of the model's: archiving by it would archive a product in use.
    damage(place, kind, "products", "solo", wrong_id="cus_notaproduct" if kind == "wrong-kind-of-id" else "pro")
    place.write_model("products", PRODUCT_ROWS[:2])

    with caplog.at_level(logging.WARNING):
        counts = place.run(PRODUCTS, double.url).counts()
    assert (counts["state_rows_repaired"], counts["archived"], counts["failed"]) == (1, 1, 0)
    assert len(warnings_about(caplog, "solo")) == 1
    active = {p.id: p.values["active"] for p in stripe_for(double.url, PRODUCT).iter_all()}
    assert active == {"team": "true", "pro": "true", "solo": "false"}
    assert place.state_of("products", "solo") == [("solo", "archived")]

    again = place.run(PRODUCTS, double.url).counts()
    assert (again["state_rows_repaired"], again["stripe_api_calls"]) == (0, 0)


PRICES = sync_spec(
    """
model: prices
object: price
behavior: update_or_create
product_sync: products
key: {field: lookup_key, column: lookup_key}
mapping: {product: product, currency: currency, unit_amount: amount}
""",
    "prices",
)


def test_a_price_sync_repairs_its_own_state_and_never_refers_through_damaged_product_state(place, double):
    place.write_model("products", PRODUCT_ROWS)
    place.run(PRODUCTS, double.url)
    place.write_model("prices", [{"lookup_key": "team_usd", "product": "team", "currency": "usd", "amount": "900"}])
    assert place.run(PRICES, double.url).counts()["created"] == 1
    [(team_usd, _)] = place.state_of("prices", "team_usd")

    # A customer's id in the price sync's state; a second row for product `pro`, naming `team`.
    damage(place, "wrong-kind-of-id", "prices", "team_usd", wrong_id="cus_notaprice")
    damage(place, "two-rows", "products", "pro", wrong_id="team")
    place.write_model(
        "prices",
        [
            {"lookup_key": "team_usd", "product": "team", "currency": "usd", "amount": "900"},
            {"lookup_key": "pro_usd", "product": "pro", "currency": "usd", "amount": "2500"},
        ],
    )
    report = place.run(PRICES, double.url)
    counts = report.counts()
    assert (counts["state_rows_repaired"], counts["created"], counts["rejected"]) == (1, 0, 1)
    assert [row.reason for row in report.plan.rows if row.candidate.key == "pro_usd"] == [
        "unknown product 'pro': not synced by products"
    ]
    assert place.state_of("prices", "team_usd") == [(team_usd, "synced")]

    # Once the product sync has repaired its own state, the price is made, for the right product.
    assert place.run(PRODUCTS, double.url).counts()["state_rows_repaired"] == 1
    assert place.run(PRICES, double.url).counts()["created"] == 1
    [(pro_usd, _)] = place.state_of("prices", "pro_usd")
    assert stripe_for(double.url, PRICE).retrieve(pro_usd).values["product"] == "pro"
