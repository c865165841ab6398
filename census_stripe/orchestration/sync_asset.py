"""One Dagster asset per sync (a StripeSyncComponent instance), downstream of the dbt model it reads.

Materializing it runs the sync and records the plan and its outcome as metadata, with asset
checks: the share of rows rejected, the share of writes Stripe refused (blocking), and the guards
on destructive change (blocking, plan/guards.py): the share of the sync's objects a run archives,
and how far the model's row count moved since the last sync. A run a guard refuses writes nothing
and records its plan as an observation, its failed check naming the counts. With `dry_run: true`
in the run config (Launchpad) it records the same plan as an observation and writes nothing; the
guards' thresholds can be overridden there for one run. A partitioned sync writes its partition's
rows again on every run.
"""

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dagster as dg
from pydantic import Field

from census_stripe.orchestration.dbt_models import DbtModel, find_model, model_names
from census_stripe.orchestration.metadata import report_metadata
from census_stripe.orchestration.resources import StripeResource
from census_stripe.orchestration.warehouses import WarehouseResource
from census_stripe.plan.guards import MAX_ARCHIVE_RATE, MAX_ROW_COUNT_CHANGE, Verdict, guards_of, percent
from census_stripe.plan.sql import ModelSlice
from census_stripe.settings import PROJECT_ROOT, dagster_project_root, warehouse_kind
from census_stripe.spec import (
    ATTRIBUTES,
    AnySyncSpec,
    PartitionsSpec,
    SyncConfigError,
    SyncSpec,
    check_model_columns,
    load_sync_spec,
)
from census_stripe.sync import RunOptions, SyncReport, run_sync
from census_stripe.warehouse.state import SyncStateStore

SYNC_GROUP = "stripe"
REJECTED_CHECK = "rejected_rows_below_threshold"
FAILED_CHECK = "failed_writes_below_threshold"
# Each guard's check, by the setting that sets its threshold.
GUARD_CHECKS = {
    MAX_ARCHIVE_RATE: "archives_below_threshold",
    MAX_ROW_COUNT_CHANGE: "row_count_change_below_threshold",
}
SYNC_FILE_METADATA = "sync_file"
WAREHOUSE_RESOURCE = "warehouse"


class SyncRunConfig(dg.Config):
    dry_run: bool = Field(default=False, description="Compute and record the plan; write nothing to Stripe.")
    full_resync: bool = Field(
        default=False,
        description="Compare every row with what Stripe holds now and repair any difference, "
        "including edits made by hand in Stripe.",
    )
    max_archive_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="For this run only, in place of the sync file's max_archive_rate: the share of the sync's "
        "objects in Stripe it may archive. 1 lets it archive everything, even from an empty model.",
    )
    max_row_count_change: float | None = Field(
        default=None,
        ge=0,
        description="For this run only, in place of the sync file's max_row_count_change: how far the model's "
        "row count may have moved since the last sync (0.5: 50 %; a large number lets any change through).",
    )


@dataclass(frozen=True)
class Sync:
    spec: AnySyncSpec
    path: Path
    model: DbtModel


DEFAULT_DBT_PROJECT = "dbt_project"


def manifest_path(spec: AnySyncSpec, project_root: Path) -> Path:
    """The manifest of the sync's dbt project (`dbt_project`, a folder of the Dagster project):
    target/<warehouse>/manifest.json where one is prepared per warehouse (as this repository's
    `make` does), else dbt's own target/manifest.json."""
    target = project_root / (spec.dbt_project or DEFAULT_DBT_PROJECT) / "target"
    per_warehouse = target / warehouse_kind() / "manifest.json"
    return per_warehouse if per_warehouse.exists() else target / "manifest.json"


def resolve_sync(spec: AnySyncSpec, path: Path, manifest: Path) -> Sync:
    """The sync checked against its dbt model; SyncConfigError names the file and field if not."""
    if not manifest.exists():
        where = f"{ATTRIBUTES}.dbt_project" if spec.dbt_project else ATTRIBUTES
        raise SyncConfigError(path, [(where, f"no dbt manifest at {manifest}: run `dbt parse` in the dbt project")])
    model = find_model(spec.model, manifest)
    if model is None:
        models = ", ".join(model_names(manifest))
        raise SyncConfigError(path, [(f"{ATTRIBUTES}.model", f"no dbt model named {spec.model!r} (models: {models})")])
    check_model_columns(spec, model.columns, path)
    return Sync(spec, path, model)


def load_sync(path: Path, manifest: Path | None = None) -> Sync:
    """A sync instance's defs.yaml, read without the defs folder (tests, tools); by default against
    the manifest of this repository's dbt project."""
    spec = load_sync_spec(path)
    return resolve_sync(spec, path, manifest or manifest_path(spec, PROJECT_ROOT))


def shown_path(path: Path) -> str:
    """The sync file as a person finds it in the Dagster project."""
    path, project = path.resolve(), dagster_project_root()
    return str(path.relative_to(project)) if path.is_relative_to(project) else str(path)


BEHAVIORS = {
    "update_or_create": "updates the Stripe {plural} it finds and creates the others",
    "update_only": "updates the Stripe {plural} it finds and never creates one",
    "create_only": "creates the Stripe {plural} it does not find and never touches one it finds",
}


def sync_description(spec: SyncSpec, model_name: str) -> str:
    """The sync's contract as Markdown, for the asset page: what it reads, how it matches, what it writes."""
    object_type = spec.object_type
    intro = spec.description or f"Sync of {model_name} to Stripe {object_type.plural}."
    rows = [f"| `{spec.key.field}` (the key) | `{spec.key.column}` |"]
    rows += [f"| `{field}` | `{column}` |" for field, column in spec.mapping.items()]
    rows += [f"| `{field}` | `{value!r}`, a constant |" for field, value in spec.constant_values.items()]
    behavior = BEHAVIORS[spec.behavior].format(plural=object_type.plural)
    extras = []
    if spec.product_sync:
        extras.append(f"`product` holds keys of the sync `{spec.product_sync}`, sent as their Stripe product ids.")
    if spec.archive_missing:
        extras.append(f"Archives (`active: false`) the {object_type.plural} of keys that left the model.")
    if object_type.has_versions:
        extras.append(
            f"A change to {', '.join(sorted(object_type.immutable))} creates a new {object_type.name} that takes "
            f"the {spec.key.field} over, and archives the old one."
        )
    return "\n".join(
        [
            intro,
            "",
            f"Reads the dbt model `{model_name}`, matches each row to a Stripe {object_type.name} by "
            f"`{spec.key.field}` (column `{spec.key.column}`), and {behavior} (`{spec.behavior}`).",
            *(["", " ".join(extras)] if extras else []),
            "",
            "| Stripe field | Model column |",
            "|---|---|",
            *rows,
        ]
    )


def sync_asset_key(spec: AnySyncSpec) -> dg.AssetKey:
    return sync_asset_key_of(spec.name)


def sync_asset_key_of(sync_name: str) -> dg.AssetKey:
    return dg.AssetKey(["stripe", sync_name])


def partitions_definition(partitions: PartitionsSpec | None) -> dg.PartitionsDefinition | None:
    if partitions is None:
        return None
    if partitions.values:
        return dg.StaticPartitionsDefinition(partitions.values.values)
    time = partitions.time
    assert time is not None, "a partitions setting is either values or time"
    by_granularity = {
        "daily": dg.DailyPartitionsDefinition,
        "weekly": dg.WeeklyPartitionsDefinition,
        "monthly": dg.MonthlyPartitionsDefinition,
    }
    return by_granularity[time.granularity](start_date=time.start.isoformat())


def model_slice(partitions: PartitionsSpec, context: dg.AssetExecutionContext) -> ModelSlice:
    """The rows of the partition, or of the range of partitions a single-run backfill covers."""
    if partitions.values:
        return ModelSlice(partitions.column, values=tuple(context.partition_keys))
    window = context.partition_time_window
    return ModelSlice(partitions.column, start=window.start.replace(tzinfo=None), end=window.end.replace(tzinfo=None))


def partition_slices(
    partitions: PartitionsSpec, context: dg.AssetExecutionContext
) -> tuple[tuple[str, ModelSlice], ...]:
    """Each partition of the run with its rows, for a run that reports per partition (`model_slice`
    is their union)."""
    if partitions.values:
        return tuple((key, ModelSlice(partitions.column, values=(key,))) for key in context.partition_keys)
    definition = context.assets_def.partitions_def
    assert isinstance(definition, dg.TimeWindowPartitionsDefinition), "a time partitions setting makes time windows"
    windows = ((key, definition.time_window_for_partition_key(key)) for key in context.partition_keys)
    return tuple(
        (key, ModelSlice(partitions.column, start=w.start.replace(tzinfo=None), end=w.end.replace(tzinfo=None)))
        for key, w in windows
    )


def guard_description(spec: SyncSpec, guard: str) -> str:
    if guard == MAX_ARCHIVE_RATE:
        return (
            f"A run archives at most {percent(spec.max_archive_rate)} of the {spec.object_type.plural} the sync has "
            "in Stripe, and nothing because the model is empty; one that would is refused before any write."
        )
    where = "Each partition's" if spec.partitions else "The model's"
    if spec.max_row_count_change is None:
        return f"{where} row count against the last sync's (max_row_count_change not set: reported, never refused)."
    return (
        f"{where} row count within {percent(spec.max_row_count_change)} of the last sync's; a run beyond it is "
        "refused before any write."
    )


def sync_check_specs(spec: AnySyncSpec, key: dg.AssetKey, failed_what: str) -> list[dg.AssetCheckSpec]:
    """Every sync's two checks, rows rejected (a warning) and `failed_what` (blocking), then the
    guards a sync of Stripe objects is judged by (blocking)."""
    guards = (
        [
            dg.AssetCheckSpec(GUARD_CHECKS[guard], asset=key, blocking=True, description=guard_description(spec, guard))
            for guard in guards_of(spec)
        ]
        if isinstance(spec, SyncSpec)
        else []
    )
    return [
        dg.AssetCheckSpec(
            REJECTED_CHECK, asset=key, description=f"At most {spec.max_rejected_rate:.0%} of rows rejected."
        ),
        dg.AssetCheckSpec(
            FAILED_CHECK,
            asset=key,
            blocking=True,
            description=f"At most {spec.max_failure_rate:.0%} of {failed_what}.",
        ),
        *guards,
    ]


def sync_check_results(
    spec: AnySyncSpec,
    *,
    rejected: str,
    rejected_of: tuple[int, int],
    failed: str,
    failed_of: tuple[int, int],
    guards: Sequence[Verdict] = (),
    dry_run: bool = False,
) -> list[dg.AssetCheckResult]:
    """The checks judged: `rejected_of` and `failed_of` are (how many, out of how many);
    `rejected` and `failed` finish their descriptions. A guard that failed fails its check; in a
    dry run only as a warning, which blocks nothing, since the dry run wrote nothing either."""
    (rejected_count, rows), (failed_count, attempts) = rejected_of, failed_of
    rejected_share = rejected_count / rows if rows else 0.0
    failed_share = failed_count / attempts if attempts else 0.0
    return [
        dg.AssetCheckResult(
            check_name=REJECTED_CHECK,
            passed=rejected_share <= spec.max_rejected_rate,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{rejected_count} of {rows} {rejected}",
            metadata={"rejected_share": rejected_share, "max_rejected_rate": spec.max_rejected_rate},
        ),
        dg.AssetCheckResult(
            check_name=FAILED_CHECK,
            passed=failed_share <= spec.max_failure_rate,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"{failed_count} of {attempts} {failed}",
            metadata={"failed_share": failed_share, "max_failure_rate": spec.max_failure_rate},
        ),
        *(
            dg.AssetCheckResult(
                check_name=GUARD_CHECKS[verdict.guard],
                passed=verdict.passed,
                severity=dg.AssetCheckSeverity.WARN if dry_run else dg.AssetCheckSeverity.ERROR,
                description=_guard_outcome(verdict, dry_run),
                metadata=dict(verdict.counts),
            )
            for verdict in guards
        ),
    ]


def _guard_outcome(verdict: Verdict, dry_run: bool) -> str:
    if verdict.passed:
        return verdict.text
    if dry_run:
        return f"dry run: {verdict.text}"
    return (
        f"{verdict.text}. Nothing was written to Stripe. To let this run through, set {verdict.guard} "
        "in its run config (Launchpad)."
    )


def check_results(spec: SyncSpec, report: SyncReport) -> list[dg.AssetCheckResult]:
    counts = report.counts()
    planned = " (dry run: planned)" if report.options.dry_run else ""
    return sync_check_results(
        spec,
        rejected=f"rows rejected{planned}",
        rejected_of=(counts["rejected"], counts["rows_read"]),
        failed="Stripe writes failed",
        failed_of=(counts["failed"], len(report.outcomes)),
        guards=report.guards,
        dry_run=report.options.dry_run,
    )


def sync_outcome(
    context: dg.AssetExecutionContext,
    metadata: dict,
    checks: list[dg.AssetCheckResult],
    wrote_nothing: bool,
    per_partition: Mapping[str, dict] | None = None,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """A run's materialization with its checks; an observation instead for a run that wrote nothing
    by design (a dry run, or a run a guard refused), since nothing in Stripe changed. Its checks
    judge the plan: no write failed, since none was made; a failed blocking guard fails the run.
    `per_partition`: each partition's own metadata, in place of `metadata` (a backfill's partitions
    each get their own counts, not the run's)."""
    if wrote_nothing:
        events = (
            [
                dg.AssetObservation(asset_key=context.asset_key, metadata=own, partition=key)
                for key, own in per_partition.items()
            ]
            if per_partition
            else [dg.AssetObservation(asset_key=context.asset_key, metadata=metadata)]
        )
        for event in events:
            context.log_event(event)
        yield from checks
        return
    for key, own in (per_partition or {}).items():
        context.add_asset_metadata(own, partition_key=key)
    yield dg.MaterializeResult(metadata=metadata, check_results=checks)


def build_sync_asset(sync: Sync, warehouse_kind: str) -> dg.AssetsDefinition:
    """The asset of a customer, product or price sync (meter events: meter_event_asset.py)."""
    spec, model = sync.spec, sync.model
    if not isinstance(spec, SyncSpec):
        raise TypeError(f"sync {spec.name} sends meter events: build it with build_meter_event_asset")
    key = sync_asset_key(spec)

    @dg.asset(
        key=key,
        # A price sync reads its product sync's writeback: it runs after it.
        deps=[model.asset_key, *([sync_asset_key_of(spec.product_sync)] if spec.product_sync else [])],
        group_name=SYNC_GROUP,
        kinds={"stripe", warehouse_kind},
        description=sync_description(spec, model.name),
        metadata={
            SYNC_FILE_METADATA: dg.MetadataValue.path(shown_path(sync.path)),
            "object": spec.object,
            "behavior": spec.behavior,
            "mapping_key": f"{spec.key.field} <- {spec.key.column}",
            "mapping": dg.MetadataValue.json(spec.columns_by_field | spec.constant_values),
        },
        output_required=False,
        # The Stripe resource is named by the sync (`stripe_resource`), so resources are looked up by key.
        required_resource_keys={spec.stripe_resource, WAREHOUSE_RESOURCE},
        # One run of a sync at a time: pools cap ops in flight across runs (the instance sets the
        # limit, e.g. `concurrency: pools: default_limit: 1` in dagster.yaml).
        pool=f"stripe_sync_{spec.name}",
        partitions_def=partitions_definition(spec.partitions),
        # A backfill over many partitions is one run over their combined rows.
        backfill_policy=dg.BackfillPolicy.single_run() if spec.partitions else None,
        automation_condition=dg.AutomationCondition.eager() if spec.automation.eager else None,
        check_specs=sync_check_specs(spec, key, "Stripe writes failed"),
    )
    def _sync(context: dg.AssetExecutionContext, config: SyncRunConfig):
        stripe: StripeResource = getattr(context.resources, spec.stripe_resource)
        warehouse: WarehouseResource = getattr(context.resources, WAREHOUSE_RESOURCE)
        options = RunOptions(
            dry_run=config.dry_run,
            full_resync=config.full_resync,
            model_slice=model_slice(spec.partitions, context) if spec.partitions else None,
            max_archive_rate=config.max_archive_rate,
            max_row_count_change=config.max_row_count_change,
        )
        with warehouse.open() as session:
            store = SyncStateStore(session, warehouse.state_schema)
            report = run_sync(
                spec,
                model=model.relation,
                store=store,
                stripe=stripe.objects(spec.object_type),
                run_id=context.run.run_id,
                options=options,
                log=context.log,
                concurrency=stripe.concurrency,
            )
        metadata = report_metadata(report, partial(stripe.dashboard_url, plural=spec.object_type.plural))
        wrote_nothing = options.dry_run or report.refused
        yield from sync_outcome(context, metadata, check_results(spec, report), wrote_nothing)

    return _sync
