"""One run of the demo sync in a process of its own, so that tests can kill it at any moment or
run two at once.

    python -m census_stripe_tests.sync_process --db warehouse.duckdb --url http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import json
import uuid

import duckdb

from census_stripe.settings import DEFS_DIR
from census_stripe.spec import load_sync_spec
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.stripe_client.rate_limit import RateLimits, shared_budget
from census_stripe.sync import run_sync
from census_stripe.warehouse.base import Relation
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import SyncStateStore

API_KEY = "sk_test_sync_process"
MODEL = Relation("main", "stripe_customers")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=1000, help="requests/s, for the account and each endpoint")
    args = parser.parse_args()
    limits = RateLimits(account=args.rate, endpoints=(("create", args.rate), ("update", args.rate)))
    customers = StripeObjects(API_KEY, args.url, shared_budget(API_KEY, args.url, limits))
    spec = load_sync_spec(DEFS_DIR / "customers" / "defs.yaml")
    with duckdb.connect(args.db) as connection:
        store = SyncStateStore(DuckDBWarehouse(connection))
        report = run_sync(
            spec,
            model=MODEL,
            store=store,
            stripe=customers,
            run_id=f"process-{uuid.uuid4()}",
            concurrency=args.concurrency,
        )
    print(json.dumps(report.counts()))


if __name__ == "__main__":
    main()
