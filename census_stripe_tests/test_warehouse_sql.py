"""The warehouse half of the plan on a real DuckDB file: identifiers from config are quoted, and
only rows that changed since Stripe last accepted them leave the warehouse."""

import duckdb
import pytest

from census_stripe.objects import CUSTOMER
from census_stripe.plan.sql import changed_rows_query
from census_stripe.spec import parse_sync_spec
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.sync import RunOptions, run_sync
from census_stripe.warehouse.base import Relation
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.conftest import API_KEY

ODD_SPEC = """
model: odd
behavior: update_or_create
key: {field: email, column: select}
mapping:
  name: 'na"me'
  metadata.Group: Group
"""
ODD_MODEL = Relation("my schema", "odd table")


@pytest.fixture
def odd_warehouse(tmp_path):
    """A model whose schema, table and columns need quoting in every dialect."""
    connection = duckdb.connect(str(tmp_path / "odd.duckdb"))
    connection.execute('create schema "my schema"')
    connection.execute('create table "my schema"."odd table" ("select" varchar, "na""me" varchar, "Group" integer)')
    connection.execute(
        """insert into "my schema"."odd table" values
           ('a@example.com', 'Ann', 1), (' B@Example.com ', 'Bob', 2), ('c@example.com', 'Cy', null)"""
    )
    yield DuckDBWarehouse(connection)
    connection.close()


def test_identifiers_from_config_are_quoted_and_rows_sync(odd_warehouse, stripe_url):
    spec = parse_sync_spec(ODD_SPEC, "odd.yaml")
    customers = StripeObjects(API_KEY, stripe_url)
    report = run_sync(spec, model=ODD_MODEL, store=SyncStateStore(odd_warehouse), stripe=customers, run_id="r1")
    assert report.counts()["created"] == 3
    synced = {c.values["email"]: c.values for c in StripeObjects(API_KEY, stripe_url).iter_all()}
    assert synced["B@Example.com"]["name"] == "Bob"
    assert synced["B@Example.com"]["metadata.Group"] == "2"
    assert "metadata.Group" not in synced["c@example.com"]


def test_only_changed_rows_leave_the_warehouse(odd_warehouse, stripe_url):
    spec = parse_sync_spec(ODD_SPEC, "odd.yaml")
    store = SyncStateStore(odd_warehouse)
    report = run_sync(spec, model=ODD_MODEL, store=store, stripe=StripeObjects(API_KEY, stripe_url), run_id="r1")
    query = changed_rows_query(spec, ODD_MODEL, store.state, report.account.key, "duckdb")
    assert odd_warehouse.query(query).empty

    odd_warehouse._connection.execute("""update "my schema"."odd table" set "na""me" = 'Robert' where "Group" = 2""")
    changed = odd_warehouse.query(query)
    assert list(changed["__key"]) == ["b@example.com"]
    assert changed["__state_stripe_customer_id"].iloc[0].startswith("cus_")

    everything = changed_rows_query(spec, ODD_MODEL, store.state, report.account.key, "duckdb", everything=True)
    assert len(odd_warehouse.query(everything)) == 3


def test_a_new_mapping_re_examines_every_row(odd_warehouse, stripe_url):
    spec = parse_sync_spec(ODD_SPEC, "odd.yaml")
    run_sync(
        spec,
        model=ODD_MODEL,
        store=SyncStateStore(odd_warehouse),
        stripe=StripeObjects(API_KEY, stripe_url),
        run_id="r1",
    )
    wider = parse_sync_spec(ODD_SPEC + "constants:\n  description: from the warehouse\n", "odd.yaml")
    report = run_sync(
        wider,
        model=ODD_MODEL,
        store=SyncStateStore(odd_warehouse),
        stripe=StripeObjects(API_KEY, stripe_url),
        run_id="r2",
    )
    counts = report.counts()
    assert (counts["updated"], counts["created"]) == (3, 0)
    assert [row.values_to_send(CUSTOMER) for row in report.plan.writes] == [{"description": "from the warehouse"}] * 3


def test_dry_run_sends_nothing_and_saves_nothing(odd_warehouse, stripe_url):
    spec = parse_sync_spec(ODD_SPEC, "odd.yaml")
    customers = StripeObjects(API_KEY, stripe_url)
    report = run_sync(
        spec,
        model=ODD_MODEL,
        store=SyncStateStore(odd_warehouse),
        stripe=customers,
        run_id="r1",
        options=RunOptions(dry_run=True),
    )
    assert report.counts()["planned_creates"] == 3
    # Which account the key reaches, then one listing of it; no write.
    assert customers.calls.counts == {"account": 1, "list": 1}
    assert odd_warehouse.query('select count(*) as n from "census_stripe"."sync_state"')["n"][0] == 0
