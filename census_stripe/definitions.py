"""Everything Dagster loads: the dbt models, one Stripe sync asset per file in syncs/, what
triggers the syncs, and the resources."""

from __future__ import annotations

import os

import dagster as dg

from census_stripe.orchestration.dbt import daily_partitioned_models, dbt_resource, warehouse_models
from census_stripe.orchestration.executor import sync_executor
from census_stripe.orchestration.resources import StripeResource
from census_stripe.orchestration.sync_asset import build_sync_asset, load_sync
from census_stripe.orchestration.triggers import sync_triggers
from census_stripe.orchestration.warehouses import warehouse_from_env
from census_stripe.settings import SYNCS_DIR

warehouse = warehouse_from_env()
syncs = [load_sync(path) for path in sorted(SYNCS_DIR.glob("*.yaml"))]
sync_assets = [build_sync_asset(sync, warehouse.kind) for sync in syncs]
sensors, schedules = sync_triggers(syncs)

# The main job: partitioned syncs run per partition (from the UI, or as backfills), not here.
whole_model_syncs = [asset for sync, asset in zip(syncs, sync_assets, strict=True) if not sync.spec.partitions]
sync_job = dg.define_asset_job(
    "sync_to_stripe",
    selection=dg.AssetSelection.assets(*whole_model_syncs).upstream(),
    description="Build the dbt models, then push them to Stripe: the whole pipeline.",
)

defs = dg.Definitions(
    assets=[warehouse_models, daily_partitioned_models, *sync_assets],
    jobs=[sync_job],
    sensors=sensors,
    schedules=schedules,
    # Steps run one after another in the run's process: DuckDB allows a single writer, and
    # a sync waits for its model anyway. Waiting for a sync's pool, a run sleeps, and frees the
    # slot of a run that died holding it (census_stripe/orchestration/executor.py).
    executor=sync_executor,
    resources={
        "dbt": dbt_resource(),
        "stripe": StripeResource(
            api_key=dg.EnvVar("STRIPE_API_KEY"),
            api_base=dg.EnvVar("STRIPE_API_BASE") if os.environ.get("STRIPE_API_BASE") else None,
        ),
        "warehouse": warehouse,
    },
)
