"""Benchmark 4: write throughput against Stripe's rate limits, engine vs the naive loop.

    python -m benchmarks.throughput [--rows 3000]

The Stripe test double enforces Stripe's limits (25 requests/s for creating customers, 25/s for
updating them, 100/s for the account) and answers each request after 150 ms. Half the changed
rows are updates of existing customers, half are new customers. Side by side, in the same run:

- naive loop: what a user would write with the official SDK: for each row, serially,
  `list(email=...)`, then `create` or `update`.
- engine: census_stripe's run, its rate budget set to the same limits with 5% headroom.
- engine, raised limits: an account whose limits Stripe raised to 100/s per endpoint and 200/s
  overall (and more writes in flight); the engine goes as fast as the new limits allow.

The binding limit for the engine is create + update = 50 rows/s (each row is one write).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import duckdb

from benchmarks.common import MODEL, SPEC, UNLIMITED, Stopwatch, print_table
from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.stripe_client.client import StripeObjects, make_client
from census_stripe.stripe_client.rate_limit import RateLimits, shared_budget
from census_stripe.sync import run_sync
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.synthetic import add_customers, make_model

LATENCY = 0.15
NAIVE_ROWS = 100
STRIPE_DEFAULT_LIMITS = {"account_rate": 100, "endpoint_rate": 25}
RAISED_LIMITS = {"account_rate": 200, "endpoint_rate": 100}


def binding_rate(account_rate: float, endpoint_rate: float) -> float:
    """Each changed row is one create or one update: the two endpoints together bind, unless the account does."""
    return min(2 * endpoint_rate, account_rate)


def engine_run(db: Path, url: str, limits: RateLimits, concurrency: int, key: str) -> tuple[dict, float]:
    customers = StripeObjects(key, url, shared_budget(key, url, limits))
    with duckdb.connect(str(db)) as connection, Stopwatch() as watch:
        report = run_sync(
            SPEC,
            model=MODEL,
            store=SyncStateStore(DuckDBWarehouse(connection)),
            stripe=customers,
            run_id=key,
            concurrency=concurrency,
        )
    return report.counts(), watch.seconds


def prepare(folder: Path, name: str, rows: int, double: StripeDoubleServer) -> Path:
    """A model whose first half is already in Stripe and has since changed; the second half is new."""
    db = folder / f"{name}.duckdb"
    make_model(db, rows // 2)
    double.reset()
    double.configure(latency=0, account_rate=0, endpoint_rate=0)
    engine_run(db, double.url, UNLIMITED, 16, f"sk_test_{name}_setup")
    with duckdb.connect(str(db)) as connection:
        connection.execute("update main.stripe_customers set plan = 'enterprise'")
    add_customers(db, rows // 2, rows - rows // 2)
    return db


def naive_loop(url: str, rows: int) -> dict:
    """For each row: find the customer by email, then create or update it; one row at a time."""
    client = make_client("sk_test_naive", url)
    changed = [(f"naive{i}@example.com", f"Naive {i}") for i in range(rows)]
    writes = 0
    with Stopwatch() as watch:
        for email, name in changed:
            found = client.v1.customers.list(params={"email": email, "limit": 1}).data
            if found:
                client.v1.customers.update(found[0].id, params={"name": name})
            else:
                client.v1.customers.create(params={"email": email, "name": name})
            writes += 1
    return {"writes": writes, "seconds": watch.seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, StripeDoubleServer() as double:
        double.load([{"email": f"naive{i}@example.com"} for i in range(0, NAIVE_ROWS, 2)])
        double.configure(latency=LATENCY, **STRIPE_DEFAULT_LIMITS)
        naive = naive_loop(double.url, NAIVE_ROWS)
        naive_rate = naive["writes"] / naive["seconds"]
        table = [
            _row(
                "naive loop (serial: list, then create or update)",
                naive["writes"],
                naive["seconds"],
                naive_rate,
                binding_rate(**STRIPE_DEFAULT_LIMITS),
                0,
            ),
            engine_variant(
                "engine (25/s create, 25/s update, 100/s account)",
                Path(folder),
                args.rows,
                double,
                naive_rate,
                concurrency=16,
                **STRIPE_DEFAULT_LIMITS,
            ),
            engine_variant(
                "engine, limits raised (100/s each, 200/s account)",
                Path(folder),
                args.rows,
                double,
                naive_rate,
                concurrency=48,
                **RAISED_LIMITS,
            ),
        ]
    print_table(f"Writing changed rows at {LATENCY * 1000:.0f} ms per request (half creates, half updates)", table)


def engine_variant(
    variant: str,
    folder: Path,
    rows: int,
    double: StripeDoubleServer,
    naive_rate: float,
    *,
    account_rate: float,
    endpoint_rate: float,
    concurrency: int,
) -> dict:
    """The engine against the double set to these limits, its own rate budget set to the same."""
    name = f"engine_{endpoint_rate:.0f}"
    db = prepare(folder, name, rows, double)
    double.configure(latency=LATENCY, account_rate=account_rate, endpoint_rate=endpoint_rate)
    limits = RateLimits(
        account=account_rate, endpoints=(("create", endpoint_rate), ("update", endpoint_rate)), headroom=0.05
    )
    counts, seconds = engine_run(db, double.url, limits, concurrency, f"sk_test_{name}")
    writes = counts["created"] + counts["updated"]
    binding = binding_rate(account_rate, endpoint_rate)
    return _row(variant, writes, seconds, naive_rate, binding, counts["stripe_rate_limited"])


def _row(variant: str, writes: int, seconds: float, naive_rate: float, binding: float, rate_limited: int) -> dict:
    rate = writes / seconds
    return {
        "variant": variant,
        "rows written": writes,
        "seconds": round(seconds, 1),
        "rows/s": round(rate, 1),
        "x naive": round(rate / naive_rate, 1),
        "of binding limit": f"{rate / binding:.0%} of {binding:.0f}/s",
        "429s": rate_limited,
    }


if __name__ == "__main__":
    main()
