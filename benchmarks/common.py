"""Shared set-up for the benchmarks: a synthetic model in DuckDB, the demo sync, measuring helpers.

Benchmarks run on this machine's DuckDB and on the Stripe test double
(census_stripe_tests/stripe_double.py): localstripe pickles its whole store on every write and
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

from census_stripe.settings import PROJECT_ROOT, SYNCS_DIR
from census_stripe.spec import load_sync_spec
from census_stripe.warehouse.base import Relation

SPEC = load_sync_spec(SYNCS_DIR / "customers.yaml")
MODEL = Relation("main", "stripe_customers")


def _synthetic_customers(first: int, stop: int) -> str:
    """SQL for customers `first` to `stop - 1`: the demo mart's shape, valid and distinct."""
    return f"""
        select
            'usr_' || lpad(i::varchar, 8, '0') as external_id,
            'user' || i || '@example.com' as email,
            'User ' || i as full_name,
            '+1 415 555 ' || lpad((i % 10000)::varchar, 4, '0') as phone,
            (i % 999 + 1) || ' Market St' as address_line1,
            case when i % 3 = 0 then 'Suite ' || (i % 900) end as address_line2,
            'San Francisco' as city,
            'CA' as state,
            '94103' as postal_code,
            'US' as country,
            'NA' as region,
            ['free', 'starter', 'growth', 'pro'][i % 4 + 1] as plan,
            (i % 5000)::decimal(12, 2) as lifetime_value,
            date '2024-01-01' + (i % 700)::int as signup_date,
            timestamp '2024-01-01' as updated_at
        from range({first}, {stop}) as t(i)
    """


def make_model(path: Path, rows: int) -> None:
    """A model of `rows` synthetic customers."""
    with duckdb.connect(str(path)) as connection:
        connection.execute(f"create or replace table main.stripe_customers as {_synthetic_customers(0, rows)}")


def add_customers(path: Path, first: int, count: int) -> None:
    """New users signed up: `count` more rows, numbered from `first`."""
    with duckdb.connect(str(path)) as connection:
        connection.execute(f"insert into main.stripe_customers {_synthetic_customers(first, first + count)}")


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
