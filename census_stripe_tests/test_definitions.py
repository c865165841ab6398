"""What Dagster loads: the dbt models as assets with their tests as checks, one sync asset per file,
and the same definitions driven from the `dagster` command line."""

import subprocess

import dagster as dg
import pytest

from census_stripe.orchestration.sync_asset import load_sync
from census_stripe.settings import PROJECT_ROOT
from census_stripe_tests.conftest import API_KEY, DEMO_SYNC, MATERIALIZE_DEMO_SYNC, dagster_process_env


@pytest.fixture(scope="module")
def defs(built_warehouse) -> dg.Definitions:
    from census_stripe.definitions import defs

    return defs


def test_sync_asset_sits_downstream_of_its_dbt_model(defs):
    graph = defs.resolve_asset_graph()
    sync = graph.get(dg.AssetKey(["stripe", "customers"]))
    assert sync.parent_keys == {dg.AssetKey(["stripe_customers"])}
    assert sync.group_name == "stripe"
    assert set(sync.kinds) == {"stripe", "duckdb"}
    assert sync.description.startswith("Every product user becomes a Stripe Customer, matched on email.\n")
    assert "| `name` | `full_name` |" in sync.description  # the mapping, for a reviewer
    model = graph.get(dg.AssetKey(["stripe_customers"]))
    assert model.group_name == "warehouse" and set(model.kinds) == {"dbt", "duckdb"}
    assert defs.resolve_job_def("sync_to_stripe")


def test_dbt_tests_are_asset_checks_and_report_the_deliberately_bad_seed(built_warehouse):
    evaluations = {e.check_name: e for e in built_warehouse.dbt_result.get_asset_check_evaluations()}
    assert evaluations["unique_stripe_customers_external_id"].passed
    null_email = evaluations["not_null_stripe_customers_email"]
    assert not null_email.passed
    assert null_email.severity == dg.AssetCheckSeverity.WARN
    materialized = {e.asset_key for e in built_warehouse.dbt_result.get_asset_materialization_events()}
    assert dg.AssetKey(["stripe_customers"]) in materialized


def test_a_sync_naming_a_missing_model_fails_at_load_naming_file_and_field(tmp_path):
    path = tmp_path / "typo" / "defs.yaml"
    path.parent.mkdir()
    path.write_text(DEMO_SYNC.read_text().replace("model: stripe_customers", "model: stripe_customer"))
    with pytest.raises(ValueError) as raised:
        load_sync(path)
    assert str(raised.value).startswith(f"{path}: attributes.model: no dbt model named 'stripe_customer' (models: ")


def test_a_sync_reading_a_column_the_model_lacks_fails_at_load(tmp_path):
    path = tmp_path / "bad_column" / "defs.yaml"
    path.parent.mkdir()
    path.write_text(DEMO_SYNC.read_text().replace("name: full_name", "name: fullname"))
    with pytest.raises(
        ValueError, match=r"bad_column/defs.yaml: attributes.mapping.name: column 'fullname' is not in model"
    ):
        load_sync(path)


def test_materialize_from_the_dagster_cli(warehouse_path, stripe_url, stripe_customers, tmp_path):
    env = dagster_process_env(tmp_path, warehouse_path, stripe_url)
    completed = subprocess.run(
        MATERIALIZE_DEMO_SYNC, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "RUN_SUCCESS" in completed.stderr
    assert len(list(stripe_customers.iter_all())) == 294
    assert API_KEY not in completed.stdout + completed.stderr


def test_triggers_are_defined_from_the_sync_files(defs):
    sensors = {sensor.name: sensor for sensor in defs.sensors}
    assert set(sensors) == {"customers_model_changed", "customers_on_model_change"}
    assert sensors["customers_model_changed"].minimum_interval_seconds == 30
    graph = defs.resolve_asset_graph()
    assert graph.get(dg.AssetKey(["stripe", "customers"])).automation_condition is not None
    regions = graph.get(dg.AssetKey(["stripe", "customer_regions"]))
    assert regions.partitions_def.get_partition_keys() == ["NA", "EU", "APAC"]
    assert regions.automation_condition is None
    # The main job runs the whole-model syncs and their models; partitions run on their own.
    main_job = defs.resolve_job_def("sync_to_stripe").asset_layer.selected_asset_keys
    assert dg.AssetKey(["stripe", "customers"]) in main_job
    assert dg.AssetKey(["stripe", "customer_regions"]) not in main_job
    assert dg.AssetKey(["daily_revenue"]) not in main_job


def test_a_bad_cron_fails_at_load_naming_file_and_field(tmp_path):
    from census_stripe.orchestration.triggers import sync_triggers

    path = tmp_path / "cron" / "defs.yaml"
    path.parent.mkdir()
    path.write_text(DEMO_SYNC.read_text().replace('    # cron: "0 6 * * *"', '    cron: "61 * * * *"'))
    with pytest.raises(ValueError, match=r"cron/defs.yaml: attributes.automation.cron: .*61 \* \* \* \*"):
        sync_triggers(load_sync(path))
