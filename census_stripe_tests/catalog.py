"""Helpers of the catalog tests: small models written straight into DuckDB, syncs of any object
type read from YAML, and runs through run_sync (no Dagster) or the sync's Dagster asset."""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd

from census_stripe.objects import OBJECT_TYPES
from census_stripe.objects.base import StripeObjectType
from census_stripe.orchestration.dbt_models import DbtModel
from census_stripe.orchestration.sync_asset import Sync, build_sync_asset
from census_stripe.spec import SyncSpec, parse_sync_spec
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.stripe_client.rate_limit import RateLimits, shared_budget
from census_stripe.sync import RunOptions, SyncReport, run_sync
from census_stripe.warehouse.base import Relation
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.conftest import API_KEY

# The tests' servers have no limits worth waiting for.
FAST = RateLimits(
    account=1000,
    endpoints=tuple((t.endpoint(verb), 1000.0) for t in OBJECT_TYPES.values() for verb in ("create", "update")),
    endpoint_default=1000,
)


def write_model(path: Path, name: str, rows: list[dict]) -> Relation:
    """The model `main.<name>`, replaced by these rows (every column text, as a dbt model of strings)."""
    frame = pd.DataFrame(rows).astype(object)
    with duckdb.connect(str(path)) as connection:
        connection.register("model_rows", frame)
        columns = ", ".join(f'cast("{column}" as varchar) as "{column}"' for column in frame.columns)
        connection.execute(f"create or replace table main.{name} as select {columns} from model_rows")
    return Relation("main", name)


def sync_spec(text: str, name: str) -> SyncSpec:
    return parse_sync_spec(text, f"defs/{name}/defs.yaml").model_copy(update={"name": name})


def catalog_asset(tmp_path: Path, name: str, text: str) -> dg.AssetsDefinition:
    """The Dagster asset of a sync whose model is a table written by the test (no dbt)."""
    return build_sync_asset(catalog_sync(tmp_path, name, text), "duckdb")


def catalog_sync(tmp_path: Path, name: str, text: str) -> Sync:
    spec = sync_spec(text, name)
    model = DbtModel(spec.model, dg.AssetKey([spec.model]), Relation("main", spec.model), (), "")
    return Sync(spec, tmp_path / name / "defs.yaml", model)


def stripe_for(url: str, object_type: StripeObjectType, key: str = API_KEY) -> StripeObjects:
    return StripeObjects(key, url, shared_budget(key, url, FAST), object_type=object_type)


EVERY_CHANGED_ROW = RunOptions()


def run(
    warehouse: Path, spec: SyncSpec, url: str, run_id: str | None = None, options: RunOptions = EVERY_CHANGED_ROW
) -> SyncReport:
    """One run of the sync; a run of its own (a fresh id) unless `run_id` names one."""
    with duckdb.connect(str(warehouse)) as connection:
        return run_sync(
            spec,
            model=Relation("main", spec.model),
            store=SyncStateStore(DuckDBWarehouse(connection)),
            stripe=stripe_for(url, spec.object_type),
            run_id=run_id or f"run-{uuid.uuid4().hex[:8]}",
            options=options,
        )


def state(warehouse: Path, sync_name: str) -> dict[str, tuple[str | None, str]]:
    """Each key of a sync: (Stripe id, status)."""
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        rows = connection.execute(
            "select customer_key, stripe_customer_id, status from census_stripe.sync_state where sync_name = ?",
            [sync_name],
        ).fetchall()
    return {key: (stripe_id, status) for key, stripe_id, status in rows}


def reasons(report: SyncReport) -> dict[str | None, str | None]:
    """Each rejected row's key, as the model writes it, with its reason."""
    return {row.candidate.key_value: row.reason for row in report.plan.rows if row.action.value == "reject"}
