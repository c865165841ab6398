"""One Dagster asset per sync file, downstream of the dbt model it reads.
Materializing it runs the sync and records the plan and its outcome as metadata. With
`dry_run: true` in the run config (Launchpad) it records the same plan as an observation and
writes nothing.
"""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from census_stripe.defs.dbt import DbtModel, find_model, model_names
from census_stripe.defs.metadata import report_metadata
from census_stripe.defs.resources import StripeResource, WarehouseResource
from census_stripe.spec import SyncConfigError, SyncSpec, check_model_columns, load_sync_spec
from census_stripe.sync import RunOptions, run_sync
from census_stripe.warehouse.state import SyncStateStore

SYNC_GROUP = "stripe"


class SyncRunConfig(dg.Config):
    dry_run: bool = Field(default=False, description="Compute and record the plan; write nothing to Stripe.")
    full_resync: bool = Field(
        default=False,
        description="Compare every row with what Stripe holds now and repair any difference, "
        "including edits made by hand in Stripe.",
    )


@dataclass(frozen=True)
class Sync:
    spec: SyncSpec
    path: Path
    model: DbtModel


def load_sync(path: Path) -> Sync:
    """A sync file checked against its dbt model; SyncConfigError names the file and field if not."""
    spec = load_sync_spec(path)
    model = find_model(spec.model)
    if model is None:
        raise SyncConfigError(
            path, [("model", f"no dbt model named {spec.model!r} (models: {', '.join(model_names())})")]
        )
    check_model_columns(spec, model.columns, path)
    return Sync(spec, path, model)


def sync_asset_key(spec: SyncSpec) -> dg.AssetKey:
    return dg.AssetKey(["stripe", spec.name])


def build_sync_asset(sync: Sync, warehouse_kind: str) -> dg.AssetsDefinition:
    spec, model = sync.spec, sync.model

    @dg.asset(
        key=sync_asset_key(spec),
        deps=[model.asset_key],
        group_name=SYNC_GROUP,
        kinds={"stripe", warehouse_kind},
        description=spec.description or f"Sync of {model.name} to Stripe customers.",
        metadata={
            "sync_file": dg.MetadataValue.path(str(sync.path)),
            "behavior": spec.behavior,
            "mapping_key": f"{spec.key.field} <- {spec.key.column}",
            "mapping": dg.MetadataValue.json(spec.columns_by_field | spec.constant_values),
        },
        output_required=False,
        # One run of a sync at a time: pools cap ops in flight across runs (the instance sets the
        # limit, e.g. `concurrency: pools: default_limit: 1` in dagster.yaml).
        pool=f"stripe_sync_{spec.name}",
    )
    def _sync(
        context: dg.AssetExecutionContext, config: SyncRunConfig, stripe: StripeResource, warehouse: WarehouseResource
    ):
        options = RunOptions(dry_run=config.dry_run, full_resync=config.full_resync)
        with warehouse.open() as session:
            store = SyncStateStore(session, warehouse.state_schema)
            report = run_sync(
                spec,
                model.relation,
                store,
                stripe.customers(),
                context.run.run_id,
                options,
                context.log,
                concurrency=stripe.concurrency,
            )
        metadata = report_metadata(report, stripe.customer_url)
        if options.dry_run:
            context.log_event(dg.AssetObservation(asset_key=context.asset_key, metadata=metadata))
            return
        if report.failure_rate > spec.max_failure_rate:
            raise dg.Failure(
                description=f"{report.counts()['failed']} of {len(report.outcomes)} Stripe writes failed "
                f"({report.failure_rate:.0%}, more than max_failure_rate {spec.max_failure_rate:.0%}); "
                "see failed_rows and failure_reasons",
                metadata=metadata,
            )
        yield dg.MaterializeResult(metadata=metadata)

    return _sync
