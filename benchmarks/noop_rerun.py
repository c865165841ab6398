"""Benchmark 1: rerun a sync of a 100k-row model that nothing changed since the last full sync.

    python -m benchmarks.noop_rerun [--rows 100000]

Set-up: a synthetic model in DuckDB, fully synced through the engine into the Stripe test double
(no latency, no limits). Then, side by side in the same run:

- engine:   the normal rerun: the warehouse finds no changed row; Stripe is not called.
- baseline: what a sync without a state table must do to know nothing changed: read every
  customer back from Stripe and compare (the engine's own full resync, 100 customers per call).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import duckdb

from benchmarks.common import MODEL, SPEC, Stopwatch, print_table, unthrottled_customers
from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.sync import RunOptions, run_sync
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.synthetic import make_model


def timed_run(db: Path, url: str, label: str, options: RunOptions) -> dict:
    customers = unthrottled_customers("sk_test_benchmark", url)
    with duckdb.connect(str(db)) as connection, Stopwatch() as watch:
        report = run_sync(
            SPEC,
            model=MODEL,
            store=SyncStateStore(DuckDBWarehouse(connection)),
            stripe=customers,
            run_id=label,
            options=options,
        )
    counts = report.counts()
    return {
        "variant": label,
        "seconds": round(watch.seconds, 2),
        "stripe_calls": counts["stripe_api_calls"],
        "unchanged": counts["unchanged"],
        "writes": counts["created"] + counts["updated"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, StripeDoubleServer() as double:
        db = Path(folder) / "warehouse.duckdb"
        make_model(db, args.rows)
        first = timed_run(db, double.url, "first full sync (set-up)", RunOptions())
        print(f"set-up: {first['writes']:,} customers created in {first['seconds']} s")
        rows = [
            timed_run(db, double.url, "engine: no-op rerun", RunOptions()),
            timed_run(db, double.url, "baseline: re-read Stripe and compare", RunOptions(full_resync=True)),
        ]
    print_table(f"No-op rerun of a {args.rows:,}-row model (2 cores)", rows)


if __name__ == "__main__":
    main()
