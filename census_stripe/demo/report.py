"""What the demo prints: before its run, why the definitions did not load (file, line, field); after
it, read back from the Dagster instance, the counts of a run that worked, or of one that failed, its
failed checks (ERROR severity; the WARNs apart), the root cause of each failed step and the reasons
rows failed. The Stripe key is redacted from all of it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, cast

import dagster as dg
import pydantic
from dagster import DagsterEventType, EventLogEntry
from dagster._utils.error import SerializableErrorInfo
from pydantic_core import ErrorDetails

from census_stripe.orchestration.metadata import NO_KEY
from census_stripe.orchestration.warehouses import (
    BigQueryWarehouseResource,
    DuckDBWarehouseResource,
    PostgresWarehouseResource,
    RedshiftWarehouseResource,
    WarehouseResource,
)
from census_stripe.spec import SyncConfigError
from census_stripe.stripe_client.errors import redact

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


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> dict[dg.AssetCheckSeverity, list[str]]:
    """The checks that failed, by severity: an ERROR fails the run (a blocking one stops its asset), a
    WARN (dbt's `severity: warn` tests among them) only warns."""
    lines: dict[dg.AssetCheckSeverity, list[str]] = {severity: [] for severity in dg.AssetCheckSeverity}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = _event_data(entry)
        if isinstance(evaluation, dg.AssetCheckEvaluation) and not evaluation.passed:
            asset = evaluation.asset_key.to_user_string()
            description = f": {evaluation.description}" if evaluation.description else ""
            lines[evaluation.severity].append(f"{asset} {evaluation.check_name}{description}")
    return lines


def _is_dagsters(error: SerializableErrorInfo) -> bool:
    """Dagster's own wrapper around what a step raised (its message names its module, dagster.…)."""
    return error.message.startswith("dagster.") or (error.cls_name or "").startswith("Dagster")


def root_cause(error: SerializableErrorInfo) -> SerializableErrorInfo:
    """The exception the step's own code raised, inside Dagster's wrappers (followed through their
    cause, else the exception they were raised while handling); Dagster's innermost when there is none."""
    while _is_dagsters(error) and (error.cause or error.context):
        error = error.cause or error.context  # type: ignore[assignment]
    return error


def error_text(error: SerializableErrorInfo, secret: str = "") -> str:
    """`Type: message`, as the exception says it, without its module, with the secret redacted."""
    name, message = error.cls_name or "Error", error.message.strip()
    qualified = re.match(rf"(?:[\w.]*\.)?{re.escape(name)}: ", message)
    return redact(f"{name}: {message[qualified.end() :] if qualified else message}", secret)


def step_errors(instance: dg.DagsterInstance, run_id: str, secret: str = "") -> list[str]:
    """Per failed step, `step: Type: message` of its root cause; the run's own failure when no step failed."""
    lines: dict[str, str] = {}
    for entry in instance.all_logs(run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}):
        error = getattr(_event_data(entry), "error", None)  # a step's failure, or the run's
        step = entry.step_key or "run"
        if error is not None and step not in lines and not (step == "run" and lines):
            lines[step] = f"{step}: {error_text(root_cause(error), secret)}"
    return list(lines.values())


def key_text(key: object) -> str:
    """A row's key as the terminal shows it: quoted, or in words for a row without one."""
    return NO_KEY if key in (None, "", NO_KEY) else repr(key)


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
            _table_records(metadata["failed_rows"]),
            failed,
            "  ",
            lambda data: f"{key_text(data['key'])}: {data['reason']}",
        )
    return lines


# The lines of the log shown when no run was recorded: Dagster's own error is at its end.
LOG_LINES_SHOWN = 15


def failure_report(instance: dg.DagsterInstance, since: datetime, secret: str = "", log: str = "") -> list[str]:
    """The run since then that failed: what a person needs to see first, in plain text. When no run
    was recorded (Dagster stopped before it), the end of `log`, the command's output."""
    run = failed_run(instance, since)
    if run is None:
        tail = [f"  {line}" for line in redact(log, secret).strip().splitlines()[-LOG_LINES_SHOWN:]]
        return ["The job did not start. The end of its log:", *tail]
    lines = [f"Run {run.run_id} of {run_name(run)!r} failed."]
    checks = failed_checks(instance, run.run_id)
    if checks[dg.AssetCheckSeverity.ERROR]:
        lines += ["Failed checks:", *(f"  - {check}" for check in checks[dg.AssetCheckSeverity.ERROR])]
    errors = step_errors(instance, run.run_id, secret)
    if errors:
        lines += ["Why it failed:", *(f"  {line}" for error in errors for line in error.splitlines())]
    rows = failing_rows(instance, run.run_id)
    if rows:
        lines += ["Failing rows:", *(f"  {row}" for row in rows)]
    if checks[dg.AssetCheckSeverity.WARN]:
        lines += ["Warnings (checks of WARN severity; they fail nothing):"]
        lines += [f"  - {check}" for check in checks[dg.AssetCheckSeverity.WARN]]
    return lines


def _short(value: object, width: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _source_position(error: ErrorDetails) -> str | None:
    position = (error.get("ctx") or {}).get("source_position")
    return f"{position.filename}:{position.start.line}" if position is not None else None


def definitions_error(error: BaseException, secret: str = "") -> list[str]:
    """Why the definitions did not load, a problem a line: `file:line: field: problem` for a sync file
    Dagster validated, the sync's own `file: field: problem`, else `Type: message` of the first
    exception that is not Dagster's (its component tree error only says which component failed)."""
    chain = [error]
    while chain[-1].__cause__ or chain[-1].__context__:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)  # type: ignore[arg-type]
    for cause in chain:
        if isinstance(cause, pydantic.ValidationError):
            lines = []
            for problem in cause.errors():
                where, _, place = str(problem["loc"][0]).rpartition(" at ")
                field = ".".join(map(str, (where or place, *problem["loc"][1:])))
                position = _source_position(problem) or (place if where else "")
                given = f" (given: {_short(problem['input'])})" if problem["type"] != "missing" else ""
                lines.append(f"{position or '(sync file)'}: {field}: {problem['msg']}{given}")
            return [redact(line, secret) for line in lines]
        if isinstance(cause, SyncConfigError):
            return redact(str(cause), secret).splitlines()
    own = next((cause for cause in chain if not type(cause).__module__.startswith("dagster")), chain[-1])
    return redact(f"{type(own).__name__}: {own}", secret).splitlines()


def load_definitions(secret: str = "") -> list[str]:
    """The project's definitions loaded as every Dagster process loads them (`-m census_stripe.definitions`,
    `dg check defs`): nothing when they load, else why not."""
    try:
        import census_stripe.definitions  # noqa: F401
    except Exception as error:  # any error a user's sync file or model can cause, said as the user can act on it
        return definitions_error(error, secret)
    return []
