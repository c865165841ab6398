"""The sync's own tables in the warehouse: created on first use, migrated safely, where configured."""

import duckdb

from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import Rejection, StateRecord, StateStatus, SyncStateStore

ACCOUNT = "acct_1/test"


def test_tables_are_created_once_and_creating_again_is_harmless(tmp_path):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        store = SyncStateStore(DuckDBWarehouse(connection), schema="ops sync")
        store.ensure_tables()
        synced = StateRecord("k", "cus_1", "h", {"name": "A"}, None, StateStatus.SYNCED, None)
        store.save("s", ACCOUNT, "run1", [synced])
        store.ensure_tables()
        rows = connection.execute('select customer_key, stripe_customer_id from "ops sync".sync_state').fetchall()
    assert rows == [("k", "cus_1")]


def test_a_table_from_an_older_version_gets_the_missing_columns_and_keeps_its_rows(tmp_path):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        connection.execute("create schema census_stripe")
        connection.execute("create table census_stripe.sync_state (sync_name text, customer_key text)")
        connection.execute("insert into census_stripe.sync_state values ('s', 'old-key')")
        store = SyncStateStore(DuckDBWarehouse(connection))
        store.ensure_tables()
        store.ensure_tables()
        columns = [c[0] for c in connection.execute("describe census_stripe.sync_state").fetchall()]
        kept = connection.execute("select customer_key, status from census_stripe.sync_state").fetchall()
    assert columns[:2] == ["sync_name", "customer_key"]
    assert {"stripe_customer_id", "row_hash", "synced_values", "status", "error", "run_id"} <= set(columns)
    assert kept == [("old-key", None)]


def test_saving_replaces_a_keys_row_and_rejections_append(tmp_path):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        store = SyncStateStore(DuckDBWarehouse(connection))
        store.ensure_tables()
        store.save("s", ACCOUNT, "run1", [StateRecord("k", "cus_1", "h1", {}, None, StateStatus.SYNCED, None)])
        failed = StateRecord("k", "cus_1", "h1", {}, None, StateStatus.FAILED, "APIError (HTTP 500): boom")
        store.save("s", ACCOUNT, "run2", [failed])
        store.save("other", ACCOUNT, "run2", [StateRecord("k", "cus_9", "h9", {}, None, StateStatus.SYNCED, None)])
        for run in ("run1", "run2"):
            store.record_rejections("s", ACCOUNT, run, [Rejection("k2", "K2", "rejected", "invalid email: 'K2'", {})])
        state = connection.execute(
            "select sync_name, status, error, run_id from census_stripe.sync_state order by sync_name"
        ).fetchall()
        rejections = connection.execute("select count(*) from census_stripe.sync_rejections").fetchone()[0]
    assert state == [("other", "synced", None, "run2"), ("s", "failed", "APIError (HTTP 500): boom", "run2")]
    assert rejections == 2
