"""Benchmark 6: meter events at Stripe's limits, engine vs the naive loop.

    python -m benchmarks.meter_events [--v1-events 20000] [--stream-events 1000000]  # needs PostgreSQL up

The Stripe test double answers every request after 150 ms and enforces Stripe's live limits on
the meter event endpoints (1,000 requests/s for v1, 10,000 for the stream). The key is a live-mode
one: in test mode Stripe counts v1 meter events against the account's basic limit (25/s), and so
do the engine and the double, which would measure that limit instead. The engine is driven
directly (census_stripe_tests/usage.py), so the stripe resource's `allow_live_mode` opt-in, which
guards live keys in a Dagster run, does not come into it. The meter `api_calls` is created first, as
the runs check for it. A day of usage (one partition) is synthesized in DuckDB, one event per
customer and second. Side by side, in one run:

- v1, naive loop: the official SDK, one `meter_events.create` after another.
- v1, engine: census_stripe's meter event sync over v1 (events/s against the 1,000/s limit).
- stream, engine: the same over the v2 meter event stream (100 events per request), for a
  smaller and a larger partition: events/s, and the peak memory of each (flat if it does not grow
  with the events).
- rerun of the larger partition, every event already sent: Stripe calls and seconds.
- stream, engine, the larger partition on PostgreSQL (127.0.0.1:5432, trust auth, a database of
  its own, dropped after): the ledger's marks and settles committed on a server.

Each engine variant runs in a fresh process (`--variant`), so its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import psycopg

from benchmarks.common import Stopwatch, peak_rss_mib, print_table, run_variant
from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.stripe_client.client import make_client
from census_stripe.stripe_client.meter_types import MeterLimits
from census_stripe.warehouse.postgres import PostgresWarehouse
from census_stripe.warehouse.state import utc_now
from census_stripe_tests.meters import create_meter
from census_stripe_tests.usage import day_slice, meter_spec, run_usage_sync, run_usage_sync_on

LATENCY = 0.15
STRIPE_LIVE = {"meter_event_rate": 1000, "meter_event_stream_rate": 10000}
NAIVE_EVENTS = 50
# Live mode: v1's own 1,000/s limit applies only to live-mode keys (a test-mode key shares the account's 25/s).
KEY = "sk_live_meter_bench"


def yesterday() -> datetime:
    day = (utc_now() - timedelta(days=1)).date()
    return datetime(day.year, day.month, day.day)


def make_day_of_usage(path: Path, events: int, customers: str) -> None:
    """`events` rows in yesterday's partition: customers `customers`<n>, one row per customer and second."""
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            f"""
            create or replace table main.usage as
            select '{customers}' || (i // 86400) as customer_id,
                   timestamp '{yesterday()}' + to_seconds(i % 86400) as day,
                   (i % 97)::bigint as calls
            from range({events}) as t(i)
            """
        )


def make_postgres_usage(database: str, events: int, customers: str) -> None:
    """The same day of usage in a new PostgreSQL database `database` (127.0.0.1:5432, trust auth)."""
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test", autocommit=True) as server:
        server.execute(f"CREATE DATABASE {database}")
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=database, autocommit=True) as connection:
        connection.execute("CREATE SCHEMA main")
        connection.execute(
            f"""
            create table main.usage as
            select '{customers}' || (i / 86400) as customer_id,
                   timestamp '{yesterday()}' + (i % 86400) * interval '1 second' as day,
                   (i % 97)::bigint as calls
            from generate_series(0, {events - 1}) as t(i)
            """
        )


def drop_postgres(database: str) -> None:
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test", autocommit=True) as server:
        server.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def engine_variant(api: str, warehouse: str, url: str) -> dict:
    """`warehouse`: a DuckDB file, or `postgresql:<database>` on this machine's PostgreSQL."""
    options = {"options": day_slice(yesterday().date()), "limits": MeterLimits(concurrency=200), "api_key": KEY}
    run_id = f"bench-{api}-{time.time()}"
    with Stopwatch() as watch:
        if warehouse.startswith("postgresql:"):
            with psycopg.connect(host="127.0.0.1", user="postgres", dbname=warehouse.split(":", 1)[1]) as connection:
                report = run_usage_sync_on(PostgresWarehouse(connection), url, meter_spec(api), run_id, **options)
        else:
            report = run_usage_sync(Path(warehouse), url, meter_spec(api), run_id, **options)
    counts = report.counts()
    return {
        "events": counts["rows_read"],
        "accepted": counts["accepted"],
        "already_sent": counts["already_sent"],
        "seconds": round(watch.seconds, 2),
        "events_per_s": round(counts["accepted"] / watch.seconds, 1),
        "sending_events_per_s": round(report.delivery.events_per_second, 1),
        "stripe_calls": counts["stripe_api_calls"],
        "rate_limited": counts["stripe_rate_limited"],
        "peak_rss_mib": round(peak_rss_mib()),
    }


def naive_v1(url: str, events: int) -> dict:
    """What a user would write first: one event per request, one request after another."""
    client = make_client(KEY, url, max_network_retries=2).v1.billing.meter_events
    start = yesterday()
    with Stopwatch() as watch:
        for i in range(events):
            client.create(
                params={
                    "event_name": "api_calls",
                    "identifier": f"naive-{time.time()}-{i}",
                    "timestamp": int(start.timestamp()) + i,
                    "payload": {"stripe_customer_id": "cus_bench_0", "value": "1"},
                }
            )
    return {
        "events": events,
        "accepted": events,
        "already_sent": 0,
        "seconds": round(watch.seconds, 2),
        "events_per_s": round(events / watch.seconds, 1),
        "sending_events_per_s": round(events / watch.seconds, 1),
        "stripe_calls": events,
        "rate_limited": 0,
        "peak_rss_mib": "-",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--v1-events", type=int, default=20_000)
    parser.add_argument("--stream-events", type=int, default=1_000_000)
    parser.add_argument("--variant", nargs=3, metavar=("API", "WAREHOUSE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(engine_variant(*args.variant)))
        return
    small = args.stream_events // 10
    with (
        tempfile.TemporaryDirectory() as folder,
        StripeDoubleServer(latency=LATENCY, meter_customers_elsewhere=True, **STRIPE_LIVE) as double,
    ):
        create_meter(double.url, "api_calls", api_key=KEY)
        rows = [{"variant": "v1, naive loop (SDK, serial)", **naive_v1(double.url, NAIVE_EVENTS)}]
        for api, events in (("v1", args.v1_events), ("stream", small), ("stream", args.stream_events)):
            warehouse = Path(folder) / f"{api}-{events}.duckdb"
            make_day_of_usage(warehouse, events, customers=f"cus_{api}{events}_")
            figures = run_variant("benchmarks.meter_events", "--variant", api, str(warehouse), double.url)
            rows.append({"variant": f"{api}, engine, {events:,} events", **figures})
        rerun = run_variant("benchmarks.meter_events", "--variant", "stream", str(warehouse), double.url)
        rows.append({"variant": f"stream, rerun of the sent {args.stream_events:,}", **rerun})
        database = f"bench_meter_{os.getpid()}"
        make_postgres_usage(database, args.stream_events, customers="cus_pg_")
        try:
            on_postgres = run_variant(
                "benchmarks.meter_events", "--variant", "stream", f"postgresql:{database}", double.url
            )
        finally:
            drop_postgres(database)
        rows.append({"variant": f"stream on PostgreSQL, {args.stream_events:,} events", **on_postgres})
        summary = double.meter_events()
    print_table(f"Meter events, {LATENCY * 1000:.0f} ms per request, Stripe's live limits, a live-mode key", rows)
    print(
        "\nA live-mode key (sk_live_...) against the double, so that v1 meter events have Stripe's live limit of "
        "1,000/s; with a test-mode key they share the account's 25/s."
    )
    print(f"\nThe double counted {summary['counted']:,} events, {summary['counted_more_than_once']} more than once.")


if __name__ == "__main__":
    main()
