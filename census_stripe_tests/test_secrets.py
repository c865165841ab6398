"""The Stripe key comes from the environment and is never written anywhere: not in logs, metadata,
exceptions or the event log, also when Stripe refuses it."""

import logging
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from census_stripe.defs.resources import StripeResource
from census_stripe.defs.sync_asset import build_sync_asset, load_sync
from census_stripe.defs.warehouses import DuckDBWarehouseResource
from census_stripe_tests.conftest import DEMO_SYNC


def materialize_with_key_from_env(monkeypatch, key: str, warehouse_path: Path, stripe_url: str, instance):
    monkeypatch.setenv("STRIPE_API_KEY", key)
    return dg.materialize(
        [build_sync_asset(load_sync(DEMO_SYNC), "duckdb")],
        resources={
            "stripe": StripeResource(api_key=dg.EnvVar("STRIPE_API_KEY"), api_base=stripe_url),
            "warehouse": DuckDBWarehouseResource(duckdb=DuckDBResource(database=str(warehouse_path))),
        },
        instance=instance,
        raise_on_error=False,
    )


def everything_recorded(instance: dg.DagsterInstance, run_id: str, root: Path) -> str:
    """The event log as stored, plus every file the instance wrote (runs, events, captured logs)."""
    events = "\n".join(dg.serialize_value(entry) for entry in instance.all_logs(run_id))
    files = "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())
    return events + files


def test_key_never_recorded_on_success(monkeypatch, warehouse_path, stripe_url, tmp_path, caplog):
    key = "sk_test_CANARYsuccess0123456789"
    caplog.set_level(logging.DEBUG)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = materialize_with_key_from_env(monkeypatch, key, warehouse_path, stripe_url, instance)
        assert result.success
        recorded = everything_recorded(instance, result.run_id, tmp_path)
    assert "ASSET_MATERIALIZATION" in recorded  # the sweep did read the event log
    assert key not in recorded
    assert key not in caplog.text


def test_key_never_recorded_when_stripe_refuses_it(monkeypatch, warehouse_path, stripe_url, tmp_path, caplog):
    # localstripe, like Stripe, answers 401 to a key it does not accept.
    key = "rk_test_CANARYrefused0123456789"
    caplog.set_level(logging.DEBUG)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = materialize_with_key_from_env(monkeypatch, key, warehouse_path, stripe_url, instance)
        assert not result.success
        failure = result.get_step_failure_events()[0].step_failure_data.error
        recorded = everything_recorded(instance, result.run_id, tmp_path)
    assert failure.cause.message.startswith(
        "census_stripe.stripe_api.StripeAccessError: AuthenticationError (HTTP 401): Unauthorized"
    )
    assert key not in recorded
    assert key not in caplog.text
