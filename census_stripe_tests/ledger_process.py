"""A meter event sync run on DuckDB, PostgreSQL or Snowflake (fakesnow), in this process or as a
process of its own that the ledger protocol tests SIGKILL at a chosen step:

    python -m census_stripe_tests.ledger_process '{"target": {...}, "url": ..., "kill": ["settle", "before", 1]}'

`kill` names a step of the protocol as a ledger method, `before` or `after` its n-th call: the
process kills itself there, with SIGKILL, exactly between two of its ledger writes (the steps that
wait on Stripe are killed from outside instead, at the double's pause points).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from functools import wraps

import duckdb

from census_stripe import meter_sync
from census_stripe.meter_sync import MeterEventReport
from census_stripe.warehouse.base import Relation, Warehouse
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.ledger import MeterEventLedger
from census_stripe.warehouse.state import utc_now
from census_stripe_tests.usage import UNLIMITED, meter_spec, run_usage_sync_on

SCHEMA = "usage_model"
STATE_SCHEMA = "usage_state"


@contextmanager
def connect(target: dict) -> Iterator[Warehouse]:
    """The warehouse `target` names: {"kind": "duckdb", "path": ...}, {"kind": "postgres", "dbname": ...}
    or {"kind": "snowflake", "server": fakesnow's connection kwargs, "database": ...}."""
    if target["kind"] == "duckdb":
        with duckdb.connect(target["path"]) as connection:
            yield DuckDBWarehouse(connection)
    elif target["kind"] == "postgres":
        import psycopg

        from census_stripe.warehouse.postgres import PostgresWarehouse

        with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=target["dbname"]) as connection:
            yield PostgresWarehouse(connection)
    else:
        import snowflake.connector

        from census_stripe.warehouse.snowflake import SnowflakeWarehouse

        with snowflake.connector.connect(**target["server"], database=target["database"]) as connection:
            yield SnowflakeWarehouse(connection)


def run(
    target: dict,
    url: str,
    run_id: str,
    api: str = "v1",
    correct_changed: bool = False,
    concurrency: int = 4,
    now: Callable[[], datetime] = utc_now,
) -> MeterEventReport:
    with connect(target) as warehouse:
        return run_usage_sync_on(
            warehouse,
            url,
            meter_spec(api, correct_changed, partitioned=False),
            run_id,
            now=now,
            limits=replace(UNLIMITED, concurrency=concurrency),
            model=Relation(SCHEMA, "usage"),
            state_schema=STATE_SCHEMA,
        )


def kill_at(method: str, when: str, nth: int) -> None:
    """SIGKILL this process before or after the `nth` call of the ledger's `method`."""
    original = getattr(MeterEventLedger, method)
    calls = 0

    @wraps(original)
    def wrapped(*args, **kwargs):
        nonlocal calls
        calls += 1
        if when == "before" and calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        result = original(*args, **kwargs)
        if when == "after" and calls == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(MeterEventLedger, method, wrapped)


if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    meter_sync.CHUNK_EVENTS = config["chunk_events"]  # several chunks of a few events: each step happens
    if config.get("kill"):
        kill_at(*config["kill"])
    report = run(
        config["target"],
        config["url"],
        config["run_id"],
        config["api"],
        config["correct_changed"],
        config["concurrency"],
    )
    print(report.counts())
