"""What starts a sync besides a person: the model's materialization in Dagster (declarative
automation), a change to the model's table made outside Dagster (a sensor), and a cron schedule.
Each is opt-in in the sync's `automation` settings.
"""

import hashlib
import json

import dagster as dg

from census_stripe.orchestration.sync_asset import Sync, sync_asset_key
from census_stripe.orchestration.warehouses import WarehouseResource
from census_stripe.plan.sql import fingerprint_query
from census_stripe.spec import ATTRIBUTES, SyncConfigError, SyncSpec
from census_stripe.sync import as_stored


def model_fingerprint(sync: Sync, warehouse: WarehouseResource) -> str:
    """A short digest of the model's rows as the sync reads them, computed in the warehouse."""
    assert isinstance(sync.spec, SyncSpec), "only syncs of Stripe objects have triggers"
    with warehouse.open(read_only=True) as session:
        spec, model = as_stored(sync.spec, sync.model.relation, session)
        watch = spec.automation.watch
        query = fingerprint_query(spec, model, session.dialect, watch.updated_at_column if watch else None)
        row = session.query(query).iloc[0].to_dict()
    return hashlib.sha256(json.dumps(row, default=str, sort_keys=True).encode()).hexdigest()[:16]


def model_change_sensor(sync: Sync) -> dg.SensorDefinition:
    """One run request per change of the model's table, none when nothing changed.

    The cursor (kept by Dagster, so it survives restarts) is the last fingerprint seen; the run key
    carries the new one, so a change is synced once however often it is seen. The first tick only
    starts watching.
    """
    name, watch = sync.spec.name, sync.spec.automation.watch
    if watch is None:
        raise ValueError(f"sync {name} does not watch its model (automation.watch)")

    @dg.sensor(
        name=f"{name}_model_changed",
        description=f"Syncs {name} when {sync.model.name} changes outside Dagster (checked in the warehouse).",
        minimum_interval_seconds=watch.interval_seconds,
        target=[sync_asset_key(sync.spec)],
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def _sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource):
        try:
            fingerprint = model_fingerprint(sync, warehouse)
        except Exception as error:
            return dg.SkipReason(f"could not read {sync.model.name} this time: {type(error).__name__}: {error}")
        if context.cursor is None:
            context.update_cursor(fingerprint)
            return dg.SkipReason(f"watching {sync.model.name} from now on (fingerprint {fingerprint})")
        if fingerprint == context.cursor:
            return dg.SkipReason(f"{sync.model.name} has not changed")
        context.update_cursor(fingerprint)
        return dg.RunRequest(
            run_key=f"{name}:{fingerprint}",
            asset_selection=[sync_asset_key(sync.spec)],
            tags={"census_stripe/model_fingerprint": fingerprint},
        )

    return _sensor


def cron_schedule(sync: Sync) -> dg.ScheduleDefinition:
    try:
        return dg.ScheduleDefinition(
            name=f"{sync.spec.name}_schedule",
            cron_schedule=sync.spec.automation.cron,
            target=[sync_asset_key(sync.spec)],
            default_status=dg.DefaultScheduleStatus.RUNNING,
        )
    except dg.DagsterInvalidDefinitionError as error:
        raise SyncConfigError(sync.path, [(f"{ATTRIBUTES}.automation.cron", str(error))]) from None


def sync_triggers(sync: Sync) -> tuple[list[dg.SensorDefinition], list[dg.ScheduleDefinition]]:
    """The sync's own sensors and schedule, named after it so that no two syncs' collide."""
    automation, key = sync.spec.automation, sync_asset_key(sync.spec)
    sensors = [model_change_sensor(sync)] if automation.watch else []
    if automation.eager:
        sensors.append(
            dg.AutomationConditionSensorDefinition(
                f"{sync.spec.name}_on_model_change",
                target=dg.AssetSelection.assets(key),
                default_status=dg.DefaultSensorStatus.RUNNING,
                description=f"Runs {sync.spec.name} after {sync.model.name} materializes (`automation.eager`).",
            )
        )
    return sensors, [cron_schedule(sync)] if automation.cron else []
