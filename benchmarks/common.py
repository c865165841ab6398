"""Shared set-up for the benchmarks: a synthetic model in DuckDB, the demo sync, measuring helpers.

Benchmarks run on this machine's DuckDB and on the Stripe test double
(census_stripe/demo/stripe_double.py): localstripe pickles its whole store on every write and
cannot hold 100k customers in reasonable time.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from census_stripe.settings import DEFS_DIR, PROJECT_ROOT
from census_stripe.spec import load_sync_spec
from census_stripe.stripe_client.rate_limit import RateLimits
from census_stripe.warehouse.base import Relation

SPEC = load_sync_spec(DEFS_DIR / "customers" / "defs.yaml")
MODEL = Relation("main", "stripe_customers")
# For benchmarks that measure calls and planning, not throughput: the test double does not throttle.
UNLIMITED = RateLimits(account=1e6, endpoints=(("create", 1e6), ("update", 1e6)), endpoint_default=1e6)


def unthrottled_customers(api_key: str, url: str):
    # Imported here so that the pandas baseline's process, which never calls Stripe, does not carry
    # the SDK in its peak memory.
    from census_stripe.stripe_client.client import StripeObjects
    from census_stripe.stripe_client.rate_limit import shared_budget

    return StripeObjects(api_key, url, shared_budget(api_key, url, UNLIMITED))


def change_every_hundredth_row(path: Path) -> int:
    """Change the plan of 1% of the rows; returns how many changed."""
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            "update main.stripe_customers set plan = 'enterprise' "
            "where cast(substr(external_id, 5) as integer) % 100 = 0"
        )
        return connection.execute("select count(*) from main.stripe_customers where plan = 'enterprise'").fetchone()[0]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def run_variant(module: str, *args: str) -> dict:
    """Run one variant in a fresh process (so its peak memory is its own) and return its figures."""
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=PROJECT_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))
