"""Benchmark 3: the first sync of a model against an account that already has customers.

    python -m benchmarks.first_sync_lookup [--customers 10000]

Set-up: the Stripe test double holds `--customers` existing customers; the model has as many
rows, 30% of whose emails belong to existing customers (some in other letter case). The sync
knows none of them yet, so every key must be looked up. Side by side, in the same run:

- engine:   a dry run of the sync (the plan only), which picks the cheaper lookup by itself.
- baseline: the per-row lookup a hand-written loop does: one `list(email=...)` per row.

A second scenario shows the other side of the choice: the first sync is applied, 50 users sign
up, and the sync runs again. Only the 50 are new to it, and the account is known to be large, so
it asks for them one by one; the loop, which keeps no state, looks every row up again.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import duckdb

from benchmarks.common import MODEL, SPEC, Stopwatch, print_table, unthrottled_customers
from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.plan.planner import Action
from census_stripe.stripe_client.client import make_client
from census_stripe.sync import RunOptions, run_sync
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.synthetic import add_customers, make_model

MATCHING = 0.3


def existing_customers(count: int, model_rows: int) -> list[dict]:
    """30% with a model row's email (every third of those upper-cased), the rest strangers."""
    matching = int(model_rows * MATCHING)
    step = model_rows // matching
    emails = [f"user{i * step}@example.com" for i in range(matching)]
    emails = [email.upper() if i % 3 == 0 else email for i, email in enumerate(emails)]
    emails += [f"stranger{i}@example.org" for i in range(count - matching)]
    return [{"email": email, "name": "Existing"} for email in emails]


def engine(db: Path, url: str, label: str, options: RunOptions) -> dict:
    customers = unthrottled_customers("sk_test_benchmark", url)
    with duckdb.connect(str(db)) as connection, Stopwatch() as watch:
        store = SyncStateStore(DuckDBWarehouse(connection))
        report = run_sync(SPEC, model=MODEL, store=store, stripe=customers, run_id=label, options=options)
    return {
        "variant": label,
        "lookup": report.plan.lookup,
        "lookup_calls": customers.calls.counts["list"],
        "seconds": round(watch.seconds, 2),
        "matched": sum(1 for row in report.plan.of(Action.UPDATE, Action.UNCHANGED) if row.candidate.prior is None),
        "to_create": report.plan.counts()[Action.CREATE],
    }


def per_row_baseline(db: Path, url: str, label: str) -> dict:
    """The naive loop: for each row, ask Stripe for that exact email."""
    client = make_client("sk_test_benchmark", url)
    with duckdb.connect(str(db), read_only=True) as connection:
        emails = [row[0] for row in connection.execute("select email from main.stripe_customers").fetchall()]
    calls = matched = 0
    with Stopwatch() as watch:
        for email in emails:
            calls += 1
            matched += bool(client.v1.customers.list(params={"email": email, "limit": 1}).data)
    return {
        "variant": label,
        "lookup": "per_row",
        "lookup_calls": calls,
        "seconds": round(watch.seconds, 2),
        "matched": matched,
        "to_create": len(emails) - matched,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=10_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder, StripeDoubleServer() as double:
        double.load(existing_customers(args.customers, args.customers))
        db = Path(folder) / "warehouse.duckdb"
        make_model(db, args.customers)
        rows.append(engine(db, double.url, "first sync: engine", RunOptions(dry_run=True)))
        rows.append(per_row_baseline(db, double.url, "first sync: per-row loop"))
        engine(db, double.url, "first sync, applied (set-up)", RunOptions())
        add_customers(db, args.customers, 50)
        rows.append(engine(db, double.url, "50 sign-ups later: engine", RunOptions(dry_run=True)))
        rows.append(per_row_baseline(db, double.url, "50 sign-ups later: per-row loop"))
    print_table(f"Finding keys among {args.customers:,} existing Stripe customers", rows)


if __name__ == "__main__":
    main()
