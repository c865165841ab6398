"""Syncs that start themselves (a model materialized in Dagster, a table changed outside it) and
partitioned syncs (one slice, a rerun, a backfill), on a real DuckDB and a real local Stripe."""

from datetime import date

import dagster as dg
import duckdb
import pytest
from dagster_duckdb import DuckDBResource

from census_stripe.orchestration.dbt import daily_partitioned_models, dbt_resource
from census_stripe.orchestration.sync_asset import load_sync
from census_stripe.orchestration.triggers import model_change_sensor
from census_stripe.orchestration.warehouses import DuckDBWarehouseResource
from census_stripe.settings import DEFS_DIR
from census_stripe_tests.conftest import DEMO_SYNC
from census_stripe_tests.test_sync_to_stripe import execute, query, write_sync

REGIONS_SYNC = DEFS_DIR / "customer_regions" / "defs.yaml"


def sensor_tick(sensor, warehouse_path, cursor=None):
    resources = {"warehouse": DuckDBWarehouseResource(duckdb=DuckDBResource(database=str(warehouse_path)))}
    with dg.build_sensor_context(cursor=cursor, resources=resources) as context:
        return sensor.evaluate_tick(context)


def test_the_watch_sensor_requests_one_run_per_change_made_outside_dagster(warehouse_path):
    sensor = model_change_sensor(load_sync(DEMO_SYNC))

    first = sensor_tick(sensor, warehouse_path)
    assert first.run_requests == [] and "watching stripe_customers" in first.skip_message
    # The cursor is what Dagster stores between ticks, and across restarts.
    quiet = sensor_tick(sensor, warehouse_path, cursor=first.cursor)
    assert quiet.run_requests == [] and quiet.skip_message == "stripe_customers has not changed"

    # A loader (or dbt run by another scheduler) changes the table behind Dagster's back.
    execute(warehouse_path, "update main.stripe_customers set plan = 'pro' where external_id = 'usr_000001'")
    changed = sensor_tick(sensor, warehouse_path, cursor=quiet.cursor)
    [request] = changed.run_requests
    assert request.run_key == f"customers:{changed.cursor}"
    assert request.asset_selection == [dg.AssetKey(["stripe", "customers"])]
    assert changed.cursor != first.cursor

    after = sensor_tick(sensor, warehouse_path, cursor=changed.cursor)
    assert after.run_requests == []


def test_the_watch_sensor_skips_while_another_process_writes_the_warehouse(warehouse_path):
    sensor = model_change_sensor(load_sync(DEMO_SYNC))
    with duckdb.connect(str(warehouse_path)):  # a writer holds the file
        busy = sensor_tick(sensor, warehouse_path, cursor="abc")
    assert busy.run_requests == [] and busy.skip_message.startswith("could not read stripe_customers this time")


def test_the_sync_follows_its_model_when_the_model_materializes_in_dagster(built_warehouse):
    from census_stripe.definitions import defs  # the demo's: its customers sync sets automation.eager

    model, sync_key = dg.AssetKey(["stripe_customers"]), dg.AssetKey(["stripe", "customers"])
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(model))
        instance.report_runless_asset_event(dg.AssetMaterialization(sync_key))
        settled = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        assert settled.get_requested_partitions(sync_key) == set()

        instance.report_runless_asset_event(dg.AssetMaterialization(model))
        after_model = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=settled.cursor)
        assert after_model.get_num_requested(sync_key) == 1

        again = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=after_model.cursor)
        assert again.get_num_requested(sync_key) == 0


def test_a_region_partition_pushes_only_its_rows_and_a_rerun_pushes_them_again(
    sync_runner, stripe_customers, warehouse_path
):
    sync_runner().run()  # the customers exist; the regions sync only updates them
    regions = sync_runner(REGIONS_SYNC)

    first = regions.counts(regions.run(partition_key="EU"))
    assert first["rows_read"] == 132  # the EU rows of the model
    assert first["updated"] + first["rejected"] + first["skipped_not_found"] == 132
    assert first["created"] == 0
    tagged = {c.values["email"].lower() for c in stripe_customers.iter_all() if c.values.get("metadata.region")}
    assert len(tagged) == first["updated"]
    eu = {
        email.strip().lower()
        for (email,) in query(
            warehouse_path, "select email from main.stripe_customers where region = 'EU' and email is not null"
        )
    }
    assert tagged <= eu
    assert {c.values.get("metadata.region") for c in stripe_customers.iter_all()} == {"EU", None}

    # Nothing changed, and the rerun writes the partition again all the same.
    again = regions.counts(regions.run(partition_key="EU"))
    assert again["updated"] == first["updated"]
    assert again["stripe_api_calls"] == first["updated"] + 1  # + the write-access check


MONTHLY_SYNC = """
model: stripe_customers
behavior: update_or_create
key: {field: email, column: email}
mapping:
  name: full_name
  metadata.signup_date: signup_date
partitions:
  time: {column: signup_date, granularity: monthly, start: "2023-01-01"}
"""


def test_a_backfill_over_three_months_syncs_exactly_those_rows(sync_runner, stripe_customers, warehouse_path, tmp_path):
    path = tmp_path / "by_signup_month.yaml"
    path.write_text(MONTHLY_SYNC)
    runner = sync_runner(path)
    # A single-run backfill of February to April 2023, as the UI launches one.
    result = runner.run(
        tags={"dagster/asset_partition_range_start": "2023-02-01", "dagster/asset_partition_range_end": "2023-04-01"}
    )
    [(rows,)] = query(
        warehouse_path,
        "select count(*) from main.stripe_customers where signup_date >= '2023-02-01' and signup_date < '2023-05-01'",
    )
    assert len(result.get_asset_materialization_events()) == 3  # one per month, from one run
    counts = runner.counts(result)
    assert counts["rows_read"] == rows == 42
    synced = [c.values for c in stripe_customers.iter_all()]
    assert len(synced) == counts["created"] == rows - counts["rejected"]
    assert all(date(2023, 2, 1) <= date.fromisoformat(c["metadata.signup_date"]) < date(2023, 5, 1) for c in synced)


def test_the_rejected_rows_check_fails_past_its_threshold(sync_runner, tmp_path):
    strict = write_sync(tmp_path, "strict", **{"object: customer": "object: customer\n  max_rejected_rate: 0.01"})
    result = sync_runner(strict).run()
    assert result.success  # a warning, not a failure: the good rows synced
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    rejected = checks["rejected_rows_below_threshold"]
    assert (rejected.passed, rejected.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert rejected.description == "6 of 300 rows rejected"
    assert checks["failed_writes_below_threshold"].passed


def test_the_demo_thresholds_pass(sync_runner):
    result = sync_runner().run()
    checks = {e.check_name: (e.passed, e.description) for e in result.get_asset_check_evaluations()}
    assert checks == {
        "rejected_rows_below_threshold": (True, "6 of 300 rows rejected"),
        "failed_writes_below_threshold": (True, "0 of 294 Stripe writes failed"),
        "row_count_change_below_threshold": (True, "300 rows in stripe_customers: no earlier sync to compare with"),
    }


@pytest.mark.parametrize("day, orders", [("2024-04-22", 9)])
def test_a_partitioned_dbt_model_gets_its_window_as_vars(built_warehouse, warehouse_path, monkeypatch, day, orders):
    monkeypatch.setenv("CENSUS_STRIPE_DUCKDB_PATH", str(warehouse_path))
    result = dg.materialize([daily_partitioned_models], resources={"dbt": dbt_resource()}, partition_key=day)
    assert result.success
    assert query(warehouse_path, "select cast(order_date as varchar), paid_orders from main.daily_revenue") == [
        (day, orders)
    ]
