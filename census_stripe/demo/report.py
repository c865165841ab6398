"""What the demo prints after its run, read back from the Dagster instance: the counts of a run that
worked, or of one that failed, its failed checks, its first error and the reasons rows failed."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, cast

import dagster as dg
from dagster import DagsterEventType, EventLogEntry

from census_stripe.orchestration.warehouses import (
    BigQueryWarehouseResource,
    DuckDBWarehouseResource,
    PostgresWarehouseResource,
    RedshiftWarehouseResource,
    WarehouseResource,
)

if TYPE_CHECKING:
    from census_stripe.orchestration.snowflake_warehouse import SnowflakeWarehouseResource

# Failing rows shown in the terminal; the run's metadata in the UI has them all.
ROWS_SHOWN = 5


def describe_warehouse(warehouse: WarehouseResource) -> str:
    """The warehouse a run used, by kind and location (never a password)."""
    if isinstance(warehouse, DuckDBWarehouseResource):
        return f"DuckDB file {warehouse.duckdb.database}"
    if isinstance(warehouse, PostgresWarehouseResource):
        label = "Redshift" if isinstance(warehouse, RedshiftWarehouseResource) else "PostgreSQL"
        return f"{label} database {warehouse.database!r} at {warehouse.host}:{warehouse.port} as {warehouse.user}"
    if warehouse.kind == "snowflake":  # its class is imported only where Snowflake is used
        snowflake = cast("SnowflakeWarehouseResource", warehouse).snowflake
        return f"Snowflake account {snowflake.account}, database {snowflake.database}, schema {snowflake.schema_}"
    if isinstance(warehouse, BigQueryWarehouseResource):
        return f"BigQuery project {warehouse.project}"
    return type(warehouse).__name__


def failed_run(instance: dg.DagsterInstance, since: datetime) -> dg.DagsterRun | None:
    """The newest run created since then that failed: the job's, or a usage sync's that followed it;
    an older one is not this attempt's."""
    failed = dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], created_after=since)
    runs = instance.get_runs(filters=failed, limit=1)
    return runs[0] if runs else None


def run_name(run: dg.DagsterRun) -> str:
    """The job, or for a `dagster asset materialize` (an implicit job) the assets it materialized."""
    if run.job_name.startswith("__") and run.asset_selection:
        return ", ".join(sorted(key.to_user_string() for key in run.asset_selection))
    return run.job_name


def _event_data(entry: EventLogEntry) -> object:
    return entry.dagster_event.event_specific_data if entry.dagster_event else None


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    lines = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = _event_data(entry)
        if isinstance(evaluation, dg.AssetCheckEvaluation) and not evaluation.passed:
            asset = evaluation.asset_key.to_user_string()
            description = f": {evaluation.description}" if evaluation.description else ""
            lines.append(f"{asset} {evaluation.check_name} ({evaluation.severity.value}){description}")
    return lines


def first_error(instance: dg.DagsterInstance, run_id: str) -> str | None:
    for entry in instance.all_logs(run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}):
        error = getattr(_event_data(entry), "error", None)  # a step's failure, or the run's
        # An exception the sync raised comes wrapped in Dagster's: say the sync's own.
        while error is not None and error.cls_name == "DagsterExecutionStepExecutionError" and error.cause:
            error = error.cause
        if error is not None:
            return f"{entry.step_key or 'run'}: {error.message.strip()}"
    return None


def _table_records(value: dg.MetadataValue) -> Sequence[dg.TableRecord]:
    return value.records if isinstance(value, dg.TableMetadataValue) else []


def _first(records: Sequence[dg.TableRecord], total: int, indent: str, line) -> list[str]:
    lines = [indent + line(record.data) for record in records[:ROWS_SHOWN]]
    if total > ROWS_SHOWN:
        lines.append(f"{indent}... and {total - ROWS_SHOWN} more (the run's metadata in the UI)")
    return lines


def failing_rows(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Per synced asset with failed writes: Stripe's reasons, most common first, then the first failed rows."""
    lines = []
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        materialization = entry.asset_materialization
        metadata = materialization.metadata if materialization else {}
        failed = metadata["failed"].value if "failed" in metadata else 0
        if not (materialization and isinstance(failed, int) and failed):
            continue
        reasons = _table_records(metadata["failure_reasons"])
        lines.append(f"{materialization.asset_key.to_user_string()}: {failed} rows failed. Stripe's reasons:")
        lines += _first(reasons, len(reasons), "  ", lambda data: f"{data['rows']} x {data['reason']}")
        lines.append("The first rows:")
        lines += _first(
            _table_records(metadata["failed_rows"]), failed, "  ", lambda data: f"{data['key']!r}: {data['reason']}"
        )
    return lines


def failure_report(instance: dg.DagsterInstance, since: datetime) -> list[str]:
    """The run since then that failed: what a person needs to see first, in plain text."""
    run = failed_run(instance, since)
    if run is None:
        return ["The job did not start (its definitions did not load)."]
    lines = [f"Run {run.run_id} of {run_name(run)!r} failed."]
    checks = failed_checks(instance, run.run_id)
    if checks:
        lines += ["Failed checks:", *(f"  - {check}" for check in checks)]
    error = first_error(instance, run.run_id)
    if error:
        lines += ["First error:", *(f"  {line}" for line in error.splitlines())]
    rows = failing_rows(instance, run.run_id)
    if rows:
        lines += ["Failing rows:", *(f"  {row}" for row in rows)]
    return lines
