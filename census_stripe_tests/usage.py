"""Synthetic usage in DuckDB and one meter event sync run over it, for the meter event tests and
benchmarks. Also a process of its own (`python -m census_stripe_tests.usage WAREHOUSE URL API RUN_ID`),
for the tests that kill a run mid-partition."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from census_stripe.meter_sync import MeterEventReport, MeterRunOptions, run_meter_event_sync
from census_stripe.plan.meter_events import CustomerSource
from census_stripe.spec import MeterEventSpec, parse_sync_spec
from census_stripe.stripe_client.meter_events import MeterEventStream, V1MeterEvents
from census_stripe.stripe_client.meter_types import MeterLimits
from census_stripe.stripe_client.rate_limit import RateLimits
from census_stripe.stripe_client.values import StripeAccount
from census_stripe.warehouse.base import Relation, Warehouse
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import DEFAULT_SCHEMA, SyncStateStore, utc_now

API_KEY = "sk_test_usage"
MODEL = Relation("main", "usage")
ACCOUNT = StripeAccount("acct_double", False)
WHOLE_MODEL = MeterRunOptions()
# A test-mode key's v1 meter events share the account's budget: unlimited too, for fast tests.
UNLIMITED_ACCOUNT = RateLimits(account=100_000, endpoints=(), endpoint_default=100_000)
UNLIMITED = MeterLimits(
    v1_requests_per_second=100_000, stream_requests_per_second=100_000, concurrency=64, account=UNLIMITED_ACCOUNT
)


def meter_spec(api: str = "stream", correct_changed: bool = False, partitioned: bool = True) -> MeterEventSpec:
    partitions = "partitions: {time: {column: day, granularity: daily, start: '2026-01-01'}}" if partitioned else ""
    spec = parse_sync_spec(
        f"""
model: usage
object: meter_event
meter_event:
  event_name: api_calls
  customer: {{column: customer_id}}
  value_column: calls
  timestamp_column: day
  identity: [customer_id, day]
  api: {api}
  correct_changed: {str(correct_changed).lower()}
{partitions}
""",
        "defs/api_usage/defs.yaml",
    )
    assert isinstance(spec, MeterEventSpec)
    return spec


def make_usage(path: Path, customers: list[str], days: int, end: datetime | None = None) -> int:
    """Calls per customer and day for the `days` days before `end` (default today); returns the rows."""
    end_day = (end or utc_now()).date()
    values = ", ".join(f"('{customer}')" for customer in customers)
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            f"""
            create or replace table main.usage as
            select customer_id, cast(date '{end_day}' - cast(d as integer) as date) as day,
                   (hash(customer_id || d) % 1000)::bigint as calls
            from (values {values}) as c(customer_id), range(1, {days + 1}) as t(d)
            """
        )
    return len(customers) * days


def day_slice(day) -> MeterRunOptions:
    from census_stripe.plan.sql import ModelSlice

    start = datetime(day.year, day.month, day.day)
    return MeterRunOptions(model_slice=ModelSlice("day", start=start, end=start + timedelta(days=1)))


def run_usage_sync(
    path: Path,
    url: str,
    spec: MeterEventSpec,
    run_id: str,
    options: MeterRunOptions = WHOLE_MODEL,
    now: Callable[[], datetime] = utc_now,
    limits: MeterLimits = UNLIMITED,
    api_key: str = API_KEY,
) -> MeterEventReport:
    with duckdb.connect(str(path)) as connection:
        return run_usage_sync_on(DuckDBWarehouse(connection), url, spec, run_id, options, now, limits, api_key)


def run_usage_sync_on(
    warehouse: Warehouse,
    url: str,
    spec: MeterEventSpec,
    run_id: str,
    options: MeterRunOptions = WHOLE_MODEL,
    now: Callable[[], datetime] = utc_now,
    limits: MeterLimits = UNLIMITED,
    api_key: str = API_KEY,
    model: Relation = MODEL,
    state_schema: str = DEFAULT_SCHEMA,
) -> MeterEventReport:
    """The same run on any warehouse holding the model (`main.usage` unless told)."""
    meter = spec.meter_event
    endpoint = MeterEventStream if meter.api == "stream" else V1MeterEvents
    payload_keys = (meter.customer_payload_key, meter.value_payload_key)
    return run_meter_event_sync(
        spec,
        model=model,
        store=SyncStateStore(warehouse, state_schema),
        api=lambda: endpoint(api_key, url, limits, payload_keys),
        account_of=lambda: ACCOUNT,
        customers=CustomerSource(),
        run_id=run_id,
        options=options,
        concurrency=limits.concurrency,
        now=now,
    )


def ledger_counts(path: Path) -> dict[str, int]:
    with duckdb.connect(str(path)) as connection:
        total, attempted, accepted = connection.execute(
            "select count(*), count(attempted_at), count(accepted_at) from census_stripe.meter_event_ledger"
        ).fetchone()
    return {"rows": total, "attempted": attempted, "accepted": accepted}


if __name__ == "__main__":
    warehouse, url, api, run_id = sys.argv[1:5]
    # A few requests in flight, so that a test can kill the run while it is sending.
    slow = replace(UNLIMITED, concurrency=4)
    report = run_usage_sync(Path(warehouse), url, meter_spec(api, partitioned=False), run_id, limits=slow)
    print(report.counts())
