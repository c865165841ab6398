"""A failed `make demo` says why where it is run: the root cause of each failed step (the exception's own
type and message, the key redacted), the file, line and field of a sync file that does not load, and the
checks that failed by severity. Through the real `python -m census_stripe.demo run`, then the pure parts."""

import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pydantic
import pytest
from dagster._utils.error import SerializableErrorInfo

from census_stripe.demo.report import LOG_LINES_SHOWN, definitions_error, error_text, failure_report, root_cause
from census_stripe.settings import PROJECT_ROOT
from census_stripe.spec import SyncConfigError, SyncSettings
from census_stripe_tests.test_demo import YOUR_KEY, demo

PUBLISHABLE_KEY = "pk_test_123"


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the repository's project (package, dbt project with its prepared manifest), for a test
    that breaks a file of it; the demo run from it imports this copy."""
    copy = tmp_path / "project"
    copy.mkdir()
    ignored = shutil.ignore_patterns("__pycache__", "*.egg-info", "logs", "dbt_packages")
    shutil.copytree(PROJECT_ROOT / "census_stripe", copy / "census_stripe", ignore=ignored)
    shutil.copytree(PROJECT_ROOT / "dbt_project", copy / "dbt_project", ignore=ignored)
    for name in ("pyproject.toml", "workspace.yaml"):
        shutil.copyfile(PROJECT_ROOT / name, copy / name)
    return copy


def demo_from(processes, project: Path, data_dir: Path, **settings):
    return demo(processes, data_dir, cwd=project, PYTHONPATH=str(project), **settings)


def test_a_publishable_key_says_so_without_the_key(tmp_path, processes):
    completed = demo(processes, tmp_path, STRIPE_API_KEY=PUBLISHABLE_KEY)
    assert completed.returncode != 0
    output = completed.stdout + completed.stderr
    assert "Why it failed:\n  stripe__customers: MalformedKeyError: STRIPE_API_KEY is a publishable key (pk_...)" in (
        output
    )
    assert "DagsterExecutionStepExecutionError" not in output and "census_stripe.stripe_client" not in output
    # dbt's tests of WARN severity failed too: said apart, as warnings, never as failed checks.
    assert "Failed checks:" not in output
    warnings = output.split("Warnings (checks of WARN severity; they fail nothing):\n", 1)[1]
    assert "  - stripe_customers not_null_stripe_customers_email" in warnings
    assert PUBLISHABLE_KEY not in output


def test_a_sync_file_that_does_not_load_is_named_with_its_line_and_field(tmp_path, processes, project):
    sync_file = project / "census_stripe" / "defs" / "customers" / "defs.yaml"
    text = sync_file.read_text()
    assert "\n  object: customer\n" in text
    sync_file.write_text(text.replace("\n  object: customer\n", "\n  object: customr\n"))
    line = text[: text.index("  object: customer")].count("\n") + 1
    completed = demo_from(processes, project, tmp_path)
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith("The definitions did not load, so nothing was started:\n")
    assert (
        f"  {sync_file}:{line}: attributes.object: Input should be 'customer', 'product', 'price' or 'meter_event' "
        "(given: 'customr')"
    ) in completed.stderr
    assert "did not start" not in completed.stdout + completed.stderr
    assert not (tmp_path / "demo.log").exists()  # no job, no local Stripe server was started


def test_an_unreachable_stripe_is_the_root_cause_printed(tmp_path, processes, unreachable_url):
    completed = demo(processes, tmp_path, STRIPE_API_KEY=YOUR_KEY, STRIPE_API_BASE=unreachable_url)
    assert completed.returncode != 0
    output = completed.stdout
    assert (
        f"Why it failed:\n  stripe__customers: StripeUnreachableError: Stripe unreachable at {unreachable_url} ("
        in (output)
    )
    assert "stopped while planning, before any write" in output
    assert YOUR_KEY not in output + completed.stderr


def test_a_model_with_no_table_names_the_warehouse_file_and_the_model(tmp_path, processes, project):
    """dbt builds the customers' model into another schema than the manifest Dagster loaded says (one
    prepared before the model moved): the sync finds no table where it looks, and says where that is."""
    model = project / "dbt_project" / "models" / "marts" / "stripe_customers.sql"
    model.write_text('{{ config(schema="elsewhere") }}\n' + model.read_text())
    completed = demo_from(processes, project, tmp_path)
    assert completed.returncode != 0
    assert (
        "  stripe__customers: ModelTableMissingError: model 'stripe_customers' has no table or view "
        f"main.stripe_customers in the DuckDB file {tmp_path / 'warehouse.duckdb'}: build it there first"
    ) in completed.stdout


def error(cls_name: str, module: str, message: str, cause=None, context=None) -> SerializableErrorInfo:
    """As Dagster records an exception: its message is `traceback.format_exception_only`'s line."""
    return SerializableErrorInfo(f"{module}.{cls_name}: {message}\n", [], cls_name, cause, context)


def test_the_root_cause_is_the_steps_own_exception_inside_dagsters_wrappers():
    own = error("StripeUnreachableError", "census_stripe.stripe_client.errors", "Stripe unreachable", cause=None)
    wrapped = error(
        "DagsterExecutionStepExecutionError",
        "dagster._core.errors",
        'Error occurred while executing op "stripe__customers":',
        cause=own,
    )
    assert root_cause(wrapped) is own
    # A wrapper raised while handling the step's error keeps it as its context, not its cause.
    assert root_cause(error("DagsterUserCodeExecutionError", "dagster._core.errors", "x", context=own)) is own
    # The step's own exception is said as raised, even when it has a cause of its own.
    raised_from = error("MeterCheckError", "census_stripe.meter_sync", "sent nothing", cause=own)
    assert root_cause(raised_from) is raised_from
    checks = error("DagsterAssetCheckFailedError", "dagster._core.errors", "1 blocking asset check failed")
    assert root_cause(checks) is checks  # nothing inside: Dagster's own is the cause


def test_error_text_is_type_and_message_without_module_and_without_the_key():
    assert error_text(error("MalformedKeyError", "census_stripe.stripe_client.errors", "a publishable key")) == (
        "MalformedKeyError: a publishable key"
    )
    refused = error("AuthenticationError", "stripe._error", f"Invalid API Key provided: {YOUR_KEY}")
    assert error_text(refused, YOUR_KEY) == "AuthenticationError: Invalid API Key provided: [redacted]"
    builtin = SerializableErrorInfo("KeyError: 'email'\n", [], "KeyError")
    assert error_text(builtin) == "KeyError: 'email'"


def test_definitions_errors_name_the_file_and_field():
    problems = [("attributes.key.field", "unknown Stripe field 'mail'"), ("attributes.model", "no dbt model")]
    sync_error = SyncConfigError("defs/customers/defs.yaml", problems)
    try:
        raise RuntimeError("Error while loading component customers[0]") from sync_error
    except RuntimeError as wrapped:
        assert definitions_error(wrapped) == [
            "defs/customers/defs.yaml: attributes.key.field: unknown Stripe field 'mail'",
            "defs/customers/defs.yaml: attributes.model: no dbt model",
        ]
    with pytest.raises(pydantic.ValidationError) as invalid:
        SyncSettings.model_validate({"model": "m", "object": "customr", "key": {"field": "email", "column": "email"}})
    [line] = [line for line in definitions_error(invalid.value) if line.startswith("(sync file): object:")]
    assert line.endswith("(given: 'customr')")
    try:
        raise ValueError(f"no model for the key {YOUR_KEY}") from OSError("disk full")
    except ValueError as plain:
        assert definitions_error(plain, YOUR_KEY) == ["ValueError: no model for the key [redacted]"]


def test_a_job_that_never_made_a_run_shows_the_end_of_its_log_without_the_key():
    log = "\n".join(f"line {n}" for n in range(40)) + f"\nDagsterError: could not reach the instance with {YOUR_KEY}\n"
    with dg.DagsterInstance.ephemeral() as instance:
        report = failure_report(instance, datetime.now(UTC), YOUR_KEY, log)
    assert report[0] == "The job did not start. The end of its log:"
    assert report[-1] == "  DagsterError: could not reach the instance with [redacted]"
    assert len(report) == 1 + LOG_LINES_SHOWN and YOUR_KEY not in "\n".join(report)
