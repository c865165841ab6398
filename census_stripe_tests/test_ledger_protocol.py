"""The meter event ledger's protocol, one conformance suite on DuckDB, PostgreSQL and Snowflake
(fakesnow): the sending process SIGKILLed at each step (after the read, after marking, mid-send,
after the answers before settling, after settling, at each step of a correction), then rerun: Stripe
(the double) holds each event once and bills the model's values, also once its identifier window
(24 hours) has passed.

The steps between two ledger writes are landed by the process killing itself there
(ledger_process.py); the steps that wait on Stripe by the double's pause points, the requests held
then served, as Stripe serves a request whose client died after sending it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlglot

from census_stripe.settings import PROJECT_ROOT
from census_stripe.warehouse.state import utc_now
from census_stripe_tests.conftest import postgres_sql, require_postgres
from census_stripe_tests.ledger_process import SCHEMA, connect, run
from census_stripe_tests.meters import create_meter

DAYS = 6
CHUNK = 8  # events per chunk in the killed process: 24 events, three chunks
CONCURRENCY = 4  # requests in flight (ledger_process.run's)


@pytest.fixture(params=["duckdb", "postgres", "snowflake"])
def target(request, tmp_path) -> Iterator[dict]:
    if request.param == "duckdb":
        yield {"kind": "duckdb", "path": str(tmp_path / "warehouse.duckdb")}
    elif request.param == "postgres":
        require_postgres()
        database = f"ledger_{uuid.uuid4().hex[:8]}"
        postgres_sql(f"CREATE DATABASE {database}")
        try:
            yield {"kind": "postgres", "dbname": database}
        finally:
            postgres_sql(f"DROP DATABASE {database} WITH (FORCE)")
    else:
        server = request.getfixturevalue("fakesnow_server")
        database = f"LEDGER_{uuid.uuid4().hex[:8].upper()}"
        with connect({"kind": "snowflake", "server": server, "database": None}) as warehouse:
            warehouse.execute_ddl(f"CREATE DATABASE {database}")
        yield {"kind": "snowflake", "server": server, "database": database}


@pytest.fixture
def customers(double) -> list[str]:
    create_meter(double.url)
    return double.load([{"email": f"user{i}@example.com"} for i in range(4)])


def write_model(target: dict, values: dict[tuple[str, int], int]) -> None:
    """The model `usage`: (customer, days ago) -> calls, created unquoted as dbt would."""
    today = utc_now().date()
    rows = [
        f"('{customer}', DATE '{today - timedelta(days=ago)}', {calls})" for (customer, ago), calls in values.items()
    ]
    with connect(target) as warehouse:

        def sql(statement: str) -> str:
            return sqlglot.transpile(statement, read="duckdb", write=warehouse.dialect)[0]

        warehouse.execute_ddl(
            sql(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"),
            sql(f"DROP TABLE IF EXISTS {SCHEMA}.usage"),
            sql(f"CREATE TABLE {SCHEMA}.usage (customer_id TEXT, day DATE, calls BIGINT)"),
        )
        warehouse.execute(sql(f"INSERT INTO {SCHEMA}.usage VALUES {', '.join(rows)}"))


def usage(customers: list[str], factor: dict[str, int] | None = None) -> dict[tuple[str, int], int]:
    return {
        (customer, ago): (10 * index + ago) * (factor or {}).get(customer, 1)
        for index, customer in enumerate(customers)
        for ago in range(1, DAYS + 1)
    }


def billed(values: dict[tuple[str, int], int]) -> dict[str, int]:
    sums: dict[str, int] = {}
    for (customer, _), calls in values.items():
        sums[customer] = sums.get(customer, 0) + calls
    return sums


def start(
    target: dict, double, run_id: str, kill: tuple | None, correct_changed: bool = False, concurrency: int = CONCURRENCY
) -> subprocess.Popen:
    config = {
        "concurrency": concurrency,
        "target": target,
        "url": double.url,
        "run_id": run_id,
        "api": "v1",
        "correct_changed": correct_changed,
        "kill": kill,
        "chunk_events": CHUNK,
    }
    command = [sys.executable, "-m", "census_stripe_tests.ledger_process", json.dumps(config)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, start_new_session=True)


def killed_run(target: dict, double, kill: tuple | None, pause: tuple[str, int] | None, **options) -> None:
    """A run SIGKILLed at `kill` (by itself) or at `pause` (endpoint, requests accepted: by the test)."""
    if pause:
        double.pause_after(pause[1], pause[0])
    process = start(target, double, f"killed-{uuid.uuid4().hex[:6]}", kill, **options)
    try:
        if pause:
            # Every sender's request held: none is left between the process and the double.
            double.wait_until_paused(
                waiting=options.get("concurrency", CONCURRENCY) if pause[0] == "meter_event_create" else 1,
                client=process,
                timeout=120,
            )
            os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(timeout=120) == -signal.SIGKILL, "the run ended before its kill point"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if pause:
            double.resume()  # the requests held are served: they left the process before it died


def rerun_later(target: dict, double, advance: float, since_start: float, run_id: str, **options):
    """A run once the double's clock has moved on `advance` hours, `since_start` hours after the
    first run in all: the run's own clock moves with it."""
    double.advance_clock(advance * 3600)
    return run(target, double.url, run_id, now=lambda: utc_now() + timedelta(hours=since_start), **options)


def previewed(report) -> dict[str, int]:
    """Per customer, the units the run's preview says were billed (all four customers are shown)."""
    units: dict[str, int] = {}
    for row in report.billed:
        units[row["stripe_customer_id"]] = units.get(row["stripe_customer_id"], 0) + int(Decimal(str(row["units"])))
    return units


def assert_billed_once(double, values: dict[tuple[str, int], int]) -> None:
    summary = double.meter_events()
    assert (summary["counted"], summary["counted_more_than_once"]) == (len(values), 0), summary
    assert summary["sums"]["api_calls"] == billed(values)


SENDING_KILLS = {
    # point: the ledger step the process dies at, or the double's pause; requests in flight; hours
    # until the rerun. One request in flight where the kill is to land between ledger writes with no
    # other request just marked (with more, a kill there is also a kill "after marking" for them).
    "after_read": (("mark_attempted", "before", 1), None, CONCURRENCY, 25),
    # Marked, not sent: in doubt, resent only within Stripe's 24 hours (docs/usage-billing.md).
    "after_marking": (("mark_attempted", "after", 2), None, CONCURRENCY, 1),
    "mid_send": (None, ("meter_event_create", 6), CONCURRENCY, 25),
    "after_answers_before_settling": (("settle", "before", 2), None, 1, 25),
    "after_settling": (("settle", "after", 1), None, 1, 25),
}


@pytest.mark.parametrize("point", list(SENDING_KILLS))
def test_a_run_killed_at_each_step_then_rerun_bills_every_event_once(target, double, customers, point):
    kill, pause, concurrency, hours = SENDING_KILLS[point]
    values = usage(customers)
    write_model(target, values)
    killed_run(target, double, kill, pause, concurrency=concurrency)

    report = rerun_later(target, double, hours, hours, "rerun")
    rerun = report.counts()
    assert (rerun["in_doubt"], rerun["unsent"], rerun["refused"]) == (0, 0, 0), rerun
    # Each event either was in Stripe before (in the ledger as accepted, or in doubt past the 24
    # hours: reported, not sent), or is sent now.
    assert rerun["already_sent"] + rerun["unconfirmed"] + rerun["accepted"] == len(values), rerun
    assert_billed_once(double, values)
    # A day later still: nothing is sent again, nothing is lost.
    quiet_report = rerun_later(target, double, 25, hours + 25, "a-day-later")
    quiet = quiet_report.counts()
    assert (quiet["accepted"], quiet["resent_in_doubt"]) == (0, 0), quiet
    assert_billed_once(double, values)
    # The rerun's preview, counted before it sent, is what the ledger bills once Stripe accepted it all.
    assert previewed(report) == previewed(quiet_report)
    if not rerun["unconfirmed"]:
        assert previewed(report) == billed(values)


CORRECTION_KILLS = {
    "after_the_intent": (("intend_corrections", "after", 1), None),
    "cancel_marked_not_sent": (("cancel_sending", "after", 2), None),
    "cancel_answered_not_recorded": (("cancelled", "before", 3), None),
    "mid_correction": (None, ("meter_event_adjustment_create", 2)),
    "new_values_answered_not_settled": (("settle", "before", 1), None),
}


@pytest.mark.parametrize("point", list(CORRECTION_KILLS))
def test_a_correction_killed_at_each_step_then_rerun_bills_the_models_values_exactly(target, double, customers, point):
    kill, pause = CORRECTION_KILLS[point]
    values = usage(customers)
    write_model(target, values)
    assert run(target, double.url, "first").counts()["accepted"] == len(values)
    changed = usage(customers, {customers[0]: 7})
    write_model(target, changed)
    killed_run(target, double, kill, pause, correct_changed=True)

    # Within Stripe's 24 hours, while it can still cancel what the correction began with.
    report = rerun_later(target, double, 1, 1, "rerun", correct_changed=True)
    rerun = report.counts()
    assert (rerun["in_doubt"], rerun["unconfirmed"], rerun["changed_after_sent"]) == (0, 0, 0), rerun
    assert_billed_once(double, changed)
    assert previewed(report) == billed(changed)  # the corrected values, not those the run began with
    quiet = rerun_later(target, double, 25, 26, "a-day-later", correct_changed=True).counts()
    assert (quiet["already_sent"], quiet["stripe_api_calls"]) == (len(changed), 0), quiet
    assert_billed_once(double, changed)
