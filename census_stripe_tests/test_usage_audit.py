"""Usage a finance team can audit: a backfill records each partition's own counts, rejections and
preview of what was billed; the warehouse keeps the whole list (a view over the ledger, on DuckDB,
PostgreSQL and Snowflake); a rejected row names its column and customer; the demo prints it all.
Against the Stripe double as a real server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import sqlglot
from dagster_duckdb import DuckDBResource

from census_stripe.demo.usage_report import usage_lines
from census_stripe.meter_sync import MeterRunOptions
from census_stripe.orchestration.meter_event_asset import MeterEventSync, build_meter_event_asset, meter_event_metadata
from census_stripe.orchestration.resources import StripeResource
from census_stripe.orchestration.sync_asset import load_sync
from census_stripe.orchestration.warehouses import DuckDBWarehouseResource
from census_stripe.plan.meter_events import CustomerSource
from census_stripe.plan.sql import ModelSlice
from census_stripe.warehouse.base import Warehouse
from census_stripe.warehouse.state import utc_now
from census_stripe_tests.key_warehouses import open_warehouse
from census_stripe_tests.meters import create_meter
from census_stripe_tests.test_meter_event_warehouses import make_model, run, usage_spec
from census_stripe_tests.usage import API_KEY, meter_spec, run_usage_sync

DAYS = 7
SYNC_FILE = """
model: stripe_api_usage
object: meter_event
meter_event:
  event_name: api_calls
  customer: {column: email}
  value_column: api_calls
  timestamp_column: usage_date
  identity: [email, usage_date]
partitions:
  time: {column: usage_date, granularity: daily, start: "2026-01-01"}
"""


def words(text: str) -> str:
    """Text as read, whatever lines it was wrapped into."""
    return " ".join(text.split())


def metadata_of(event) -> dict:
    return {name: value.value for name, value in event.metadata.items()}


def records(value) -> list[dict]:
    return [dict(record.data) for record in value.records]


@pytest.fixture
def week(double, tmp_path) -> tuple[Path, list[str], list[date]]:
    """A week of usage of 5 customers in the model `stripe_api_usage` (its `email` column holds their
    Stripe ids), with two bad rows on the week's third day and one on its sixth."""
    create_meter(double.url)
    customers = double.load([{"email": f"user{i}@example.com"} for i in range(5)])
    today = utc_now().date()
    days = [today - timedelta(days=n) for n in range(DAYS, 0, -1)]
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("create table main.stripe_api_usage (email text, usage_date date, api_calls bigint)")
        connection.executemany(
            "insert into main.stripe_api_usage values (?, ?, ?)",
            [[customer, day, (i + 1) * 100 + n] for n, day in enumerate(days) for i, customer in enumerate(customers)],
        )
        connection.executemany(
            "insert into main.stripe_api_usage values (?, ?, ?)",
            [["not-a-customer", days[2], 5], ["cus_nobody", days[2], None], ["someone-else", days[5], 3]],
        )
    return path, customers, days


def backfill(path: Path, double, tmp_path: Path, days: list[date], instance: dg.DagsterInstance, dry_run=False):
    sync_file = tmp_path / "api_usage.yaml"
    sync_file.write_text(SYNC_FILE)
    sync = load_sync(sync_file)
    asset = build_meter_event_asset(MeterEventSync(sync, sync.spec, CustomerSource()), "duckdb")  # type: ignore[arg-type]
    return dg.materialize(
        [asset],
        resources={
            "stripe": StripeResource(api_key=API_KEY, api_base=double.url),
            "warehouse": DuckDBWarehouseResource(duckdb=DuckDBResource(database=str(path))),
        },
        instance=instance,
        run_config={"ops": {asset.op.name: {"config": {"dry_run": dry_run}}}},
        # A single-run backfill over the week, as the UI (and the demo) launch one.
        tags={"dagster/asset_partition_range_start": str(days[0]), "dagster/asset_partition_range_end": str(days[-1])},
    )


def test_a_backfill_records_each_partitions_own_counts_rejections_and_preview(double, week, tmp_path):
    path, customers, days = week
    with dg.instance_for_test() as instance:
        result = backfill(path, double, tmp_path, days, instance)
        assert result.success
        by_day = {
            event.partition: metadata_of(event.materialization) for event in result.get_asset_materialization_events()
        }
        assert sorted(by_day) == [str(day) for day in days]

        for n, day in enumerate(days):
            metadata = by_day[str(day)]
            bad = {2: 2, 5: 1}.get(n, 0)
            assert (metadata["rows_read"], metadata["accepted"], metadata["rejected"]) == (5 + bad, 5, bad)
            assert f"partition {day}, one of {DAYS} in this run" in words(metadata["summary"])
            # What this day billed: per customer its units, the largest first, and the meter's total.
            preview = records(metadata["preview"])
            assert [row["stripe_customer_id"] for row in preview] == customers[::-1]
            assert [row["units"] for row in preview] == [str((i + 1) * 100 + n) for i in range(5)][::-1]
            assert records(metadata["billed_per_meter"]) == [
                {"meter": "api_calls", "customers": "5", "events": "5", "units": f"{1500 + 5 * n:,}"}
            ]
            # Only the rejections dated within the day.
            rejected = records(metadata["rejected_rows"]) if bad else []
            assert {row["timestamp"][:10] for row in rejected} <= {str(day)} and len(rejected) == bad
        third = by_day[str(days[2])]
        assert {(row["customer"], row["column"]) for row in records(third["rejected_rows"])} == {
            ("not-a-customer", "email"),
            ("cus_nobody", "api_calls"),
        }
        reasons = {(row["column"], row["reason"], row["rows"]) for row in records(third["rejection_reasons"])}
        assert reasons == {
            ("email", "not a Stripe customer id (cus_...)", "1"),
            ("api_calls", "the value is empty", "1"),
        }
        assert double.meter_events()["counted"] == 5 * DAYS

        # The demo's printout of that run: the run's counts, a line per day, the reasons rows were rejected.
        printed = "\n".join(usage_lines(instance, dg.AssetKey(["stripe", "api_usage"])))
    assert "rows_read: 38" in printed and "accepted: 35" in printed and "rejected: 3" in printed
    for n, day in enumerate(days):
        bad = {2: 2, 5: 1}.get(n, 0)
        assert any(line.split()[:5] == [str(day), str(5 + bad), "5", "0", str(bad)] for line in printed.splitlines())
    assert "2 x email: not a Stripe customer id (cus_...)" in printed
    assert "1 x api_calls: the value is empty" in printed
    assert f"cus_nobody, {days[2]}: api_calls: the value is empty" in printed


def test_a_dry_run_previews_per_partition_what_would_be_billed(double, week, tmp_path):
    path, _, days = week
    with dg.instance_for_test() as instance:
        result = backfill(path, double, tmp_path, days[:2], instance, dry_run=True)
    observed = {e.partition: e.asset_observation_data.asset_observation for e in result.get_asset_observation_events()}
    assert sorted(observed) == [str(days[0]), str(days[1])]
    first = metadata_of(observed[str(days[0])])
    assert first["rows_read"] == 5 and words(first["summary"]).startswith("**Dry run: would send 5 meter")
    assert [row["units"] for row in records(first["preview"])] == ["500", "400", "300", "200", "100"]
    assert double.meter_events()["counted"] == 0


# --- the view over the ledger, on every warehouse -----------------------------------------------------


@pytest.fixture(scope="module", params=["duckdb", "postgres_c", "snowflake"])
def warehouse(request, tmp_path_factory) -> Iterator[Warehouse]:
    server = request.getfixturevalue("fakesnow_server") if request.param == "snowflake" else None
    with open_warehouse(request.param, tmp_path_factory.mktemp(request.param), server) as opened:
        yield opened


@pytest.fixture
def schema(warehouse) -> str:
    name = f"billed_{uuid.uuid4().hex[:8]}"
    warehouse.execute_ddl(f"CREATE SCHEMA {name}")
    return name


def test_the_warehouse_keeps_what_was_billed_per_customer_and_day(warehouse, schema, double):
    create_meter(double.url)
    customers = double.load([{"email": f"user{i}@example.com"} for i in range(3)])
    today = utc_now().date()
    yesterday, before = today - timedelta(days=1), today - timedelta(days=2)
    rows = [
        f"('{customer}', DATE '{day}', {calls})"
        for customer, calls in zip(customers, (7, 300, 25), strict=True)
        for day in (yesterday, before)
    ]
    make_model(warehouse, schema, "customer_id TEXT, day DATE, calls DECIMAL(12, 2)", [*rows, "('x', NULL, 1)"])
    spec = usage_spec(extra="partitions: {time: {column: day, granularity: daily, start: '2026-01-01'}}")
    start = ModelSlice("day", start=_midnight(before), end=_midnight(today))
    days = tuple(
        (str(day), ModelSlice("day", start=_midnight(day), end=_midnight(day + timedelta(days=1))))
        for day in (before, yesterday)
    )
    report = run(warehouse, schema, double, spec, "billed", MeterRunOptions(model_slice=start, partitions=days))
    assert report.counts()["accepted"] == 6

    view = f"{schema}_state.meter_event_ledger_billed"
    found = warehouse.query(
        sqlglot.transpile(
            f"SELECT stripe_customer_id, CAST(usage_date AS TEXT), events, units FROM {view} ORDER BY 1, 2",
            read="duckdb",
            write=warehouse.dialect,
        )[0]
    )
    billed = {(str(c), str(d)[:10], int(e), Decimal(str(u))) for c, d, e, u in found.itertuples(index=False)}
    calls = dict(zip(customers, (7, 300, 25), strict=True))
    assert billed == {(c, str(day), 1, Decimal(calls[c])) for c in customers for day in (yesterday, before)}

    # The run's preview of one day: the customers by units, the largest first, with the meter's total.
    partition = report.of_partition(days[1][0])
    metadata = meter_event_metadata(partition)
    assert [row["stripe_customer_id"] for row in records(metadata["preview"])] == [
        customers[1],
        customers[2],
        customers[0],
    ]
    assert [row["units"] for row in records(metadata["preview"])] == ["300", "25", "7"]
    assert records(metadata["billed_per_meter"])[0]["units"] == "332"
    assert "preview: showing 3 of 3 customers" in words(metadata["summary"].value)

    # A rerun sends nothing; its preview, read in the same scan that judged the rows, is the same.
    again = run(warehouse, schema, double, spec, "billed-again", MeterRunOptions(model_slice=start, partitions=days))
    assert (again.counts()["already_sent"], again.counts()["accepted"], again.counts()["rejected"]) == (6, 0, 0)
    for key, _ in days:
        shown_again = meter_event_metadata(again.of_partition(key))
        shown = meter_event_metadata(report.of_partition(key))
        for name in ("preview", "billed_per_meter"):
            assert records(shown_again[name]) == records(shown[name])
    assert double.meter_events()["counted"] == 6


def _midnight(day: date):
    from datetime import datetime

    return datetime(day.year, day.month, day.day)


# --- rejections name their column and customer --------------------------------------------------------


def test_a_rejected_row_names_its_column_and_customer(double, tmp_path):
    create_meter(double.url)
    [customer] = double.load([{"email": "a@example.com"}])
    path = tmp_path / "usage.duckdb"
    today = utc_now().date()
    with duckdb.connect(str(path)) as connection:
        connection.execute("create table main.usage (customer_id text, day date, calls bigint)")
        connection.executemany(
            "insert into main.usage values (?, ?, ?)",
            [[customer, None, 1], [customer, today, -4], ["not-a-customer", today, 2]],
        )
    report = run_usage_sync(path, double.url, meter_spec(partitioned=False), "named")
    metadata = meter_event_metadata(report)
    rows = {(row["customer"], row["column"], row["reason"]) for row in records(metadata["rejected_rows"].value)}
    assert rows == {
        (customer, "day", "empty, and part of the event's identity"),
        (customer, "calls", "the value is negative (set meter_event.allow_negative_values to send credits)"),
        ("not-a-customer", "customer_id", "not a Stripe customer id (cus_...)"),
    }
    assert "event" not in metadata["rejected_rows"].value.records[0].data  # no `event: None`
    assert {row["column"]: row["rows"] for row in records(metadata["rejection_reasons"].value)} == {
        "day": "1",
        "calls": "1",
        "customer_id": "1",
    }
    with duckdb.connect(str(path)) as connection:
        recorded = connection.execute(
            "select key_value, reason from census_stripe.sync_rejections order by 1"
        ).fetchall()
    assert sorted(recorded) == sorted(
        [
            (customer, "day: empty, and part of the event's identity"),
            (customer, "calls: the value is negative (set meter_event.allow_negative_values to send credits)"),
            ("not-a-customer", "customer_id: not a Stripe customer id (cus_...)"),
        ]
    )
