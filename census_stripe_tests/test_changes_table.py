"""The whole plan of every run, kept in the warehouse (`census_stripe.sync_changes`): recorded by
real runs into a real DuckDB file and a real local Stripe server, in batches, and deleted after
the sync's `keep_changes_days`."""

import json
from datetime import timedelta

import duckdb
import pytest

from census_stripe.settings import DEFS_DIR
from census_stripe.warehouse import state
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import ChangeRecord, RunRecord, SyncStateStore, utc_now
from census_stripe_tests.test_sync_to_stripe import execute, model_row, query, stripe_by_email

REGIONS_SYNC = DEFS_DIR / "customer_regions" / "defs.yaml"


def change(key: str, action: str = "create") -> ChangeRecord:
    return ChangeRecord(key, key, action, None, {"name": {"before": None, "after": key}}, "planned", None)


def run(name: str, run_id: str, keep_days: int = 30) -> RunRecord:
    return RunRecord(name, run_id, dry_run=True, stripe_account="acct_1", keep_days=keep_days)


class CountingWarehouse(DuckDBWarehouse):
    """DuckDB, counting the appends."""

    appends = 0

    def append_rows(self, table, rows):
        self.appends += 1
        super().append_rows(table, rows)


def test_a_run_records_its_plan_and_what_became_of_each_row(sync_runner, stripe_customers, warehouse_path):
    runner = sync_runner()
    first = runner.run()
    changes = query(
        warehouse_path,
        "select action, outcome, count(*), count(stripe_customer_id), bool_and(not dry_run) "
        "from census_stripe.sync_changes group by all order by 1",
    )
    assert changes == [("create", "created", 294, 294, True), ("reject", "rejected", 6, 0, True)]

    row = model_row(warehouse_path, "usr_000001")
    [(stripe_id, recorded)] = query(
        warehouse_path,
        f"select stripe_customer_id, changes from census_stripe.sync_changes where key_value = '{row['email']}'",
    )
    assert stripe_id == stripe_by_email(stripe_customers)[row["email"]]["id"]
    assert json.loads(recorded)["metadata.plan"] == {"before": None, "after": row["plan"]}
    # The metadata says where every row of the plan is, as SQL that runs.
    every_row = runner.metadata(first)["sql_for_every_row"]
    assert len(query(warehouse_path, every_row)) == 300

    # A rerun with nothing to change lists no unchanged row, only the rejected ones again (as
    # sync_rejections does); a change records just its row, field by field.
    noop = runner.run()
    assert runner.counts(noop)["unchanged"] == 294
    listed = f"select action, count(*) from census_stripe.sync_changes where run_id = '{noop.run_id}' group by 1"
    assert query(warehouse_path, listed) == [("reject", 6)]
    execute(warehouse_path, "update main.stripe_customers set plan = 'enterprise' where external_id = 'usr_000001'")
    second = runner.run()
    rows = query(
        warehouse_path,
        f"select key_value, action, outcome, changes from census_stripe.sync_changes "
        f"where run_id = '{second.run_id}' and action <> 'reject'",
    )
    plan_change = {"metadata.plan": {"after": "enterprise", "before": row["plan"]}}
    assert rows == [(row["email"], "update", "updated", json.dumps(plan_change))]


def test_a_dry_run_records_its_plan_as_planned(sync_runner, warehouse_path):
    sync_runner().run(dry_run=True)
    assert query(
        warehouse_path,
        "select action, outcome, dry_run, count(*) from census_stripe.sync_changes group by all order by 1",
    ) == [("create", "planned", True, 294), ("reject", "rejected", True, 6)]


def test_a_partition_rerun_writes_every_row_again_and_shows_no_false_change(sync_runner, warehouse_path):
    sync_runner().run()
    regions = sync_runner(REGIONS_SYNC)
    first = regions.run(partition_key="EU")
    again = regions.run(partition_key="EU")

    # The key, email, is never listed as a change with before equal to after.
    tagged = {record.data["changes"] for record in regions.metadata(first)["preview"].records}
    assert tagged == {"update — metadata.region: (empty) → EU"}
    rewritten = {record.data["changes"] for record in regions.metadata(again)["preview"].records}
    assert rewritten == {"update — no change; written again, as a partition run writes all its rows"}
    assert regions.counts(again)["updated"] == regions.counts(first)["updated"] > 0
    recorded = query(
        warehouse_path,
        f"select distinct changes from census_stripe.sync_changes where run_id = '{again.run_id}' "
        "and action = 'update'",
    )
    assert recorded == [("{}",)]


def test_changes_are_appended_in_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(state, "CHANGES_PER_WRITE", 3)
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        warehouse = CountingWarehouse(connection)
        store = SyncStateStore(warehouse)
        store.ensure_tables()
        store.record_changes(run("s", "r1"), (change(f"k{n}") for n in range(7)))
        rows = connection.execute("select customer_key, stripe_account, dry_run from census_stripe.sync_changes")
        assert sorted(rows.fetchall()) == [(f"k{n}", "acct_1", True) for n in range(7)]
    assert warehouse.appends == 3


@pytest.mark.parametrize("keep_days, kept", [(30, {"old", "new", "other sync"}), (7, {"new", "other sync"})])
def test_a_run_deletes_its_syncs_changes_older_than_it_keeps(tmp_path, keep_days, kept):
    with duckdb.connect(str(tmp_path / "w.duckdb")) as connection:
        store = SyncStateStore(DuckDBWarehouse(connection))
        store.ensure_tables()
        store.record_changes(run("s", "old"), [change("a")])
        store.record_changes(run("t", "other sync"), [change("a")])
        ten_days_ago = utc_now() - timedelta(days=10)
        connection.execute("update census_stripe.sync_changes set recorded_at = ?", [ten_days_ago])
        # A run with nothing to record leaves the table alone, so a no-op rerun costs nothing here.
        store.record_changes(run("s", "no-op", keep_days), [])
        store.record_changes(run("s", "new", keep_days), [change("b")])
        runs = {run_id for (run_id,) in connection.execute("select run_id from census_stripe.sync_changes").fetchall()}
    assert runs == kept
