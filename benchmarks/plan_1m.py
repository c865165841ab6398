"""Benchmark 2: plan a sync over a 1M-row model with 1% changed, against the obvious alternative.

    python -m benchmarks.plan_1m [--rows 1000000]

Set-up: a synthetic 1M-row model in DuckDB and a state table as a full sync would have left it
(written by SQL with the engine's own key and hash expressions, instead of 1M Stripe writes);
then 1% of the rows change. Each variant runs in a fresh process, so its peak RSS is its own:

- engine:  census_stripe's plan: the SQL join on hashes in DuckDB, then only changed rows in Python.
- pandas:  load the model and the last-synced values into pandas and compare every mapped column.

No Stripe call is needed (every changed row's customer id is known); the engine's client points
at a closed port, so a call would fail the benchmark.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import duckdb
import pandas as pd

from benchmarks.common import (
    MODEL,
    SPEC,
    Stopwatch,
    change_every_hundredth_row,
    peak_rss_mib,
    print_table,
    run_variant,
    unthrottled_customers,
)
from census_stripe.plan import sql
from census_stripe.stripe_client.values import StripeAccount
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.synthetic import make_model

ACCOUNT = StripeAccount("acct_benchmark", livemode=False)

CLOSED_PORT = "http://127.0.0.1:9"


def _values_as_json() -> str:
    pairs = []
    for field, column in SPEC.columns_by_field.items():
        value = sql.exp.cast(sql.exp.column(column, quoted=True), "text").sql("duckdb")
        pairs += [f"'{field}'", f"trim({value})" if field == "email" else value]
    for field, value in SPEC.constant_values.items():
        pairs += [f"'{field}'", f"'{value}'"]
    return f"json_object({', '.join(pairs)})"


def write_synced_state(path: Path) -> None:
    with duckdb.connect(str(path)) as connection:
        store = SyncStateStore(DuckDBWarehouse(connection))
        store.ensure_tables()
        key = sql.key_expression(SPEC).sql("duckdb")
        row_hash = sql.row_hash_expression(SPEC).sql("duckdb")
        connection.execute(
            f"""
            insert into census_stripe.sync_state by name
            select '{SPEC.name}' as sync_name, '{ACCOUNT.key}' as stripe_account, {key} as customer_key,
                   'cus_' || substr(md5({key}), 1, 14) as stripe_customer_id, {row_hash} as row_hash,
                   cast({_values_as_json()} as varchar) as synced_values, now() as synced_at,
                   'synced' as status, 'benchmark' as run_id, now() as updated_at
            from main.stripe_customers
            """
        )


def engine(path: Path) -> dict:
    from census_stripe.plan.planner import Action
    from census_stripe.sync import RunOptions, plan_sync

    customers = unthrottled_customers("sk_test_benchmark", CLOSED_PORT)
    with duckdb.connect(str(path), read_only=False) as connection, Stopwatch() as watch:
        store = SyncStateStore(DuckDBWarehouse(connection))
        plan, _ = plan_sync(SPEC, MODEL, store, customers, RunOptions(), ACCOUNT)
    counts = plan.counts()
    return {
        "variant": "engine (SQL diff)",
        "seconds": round(watch.seconds, 2),
        "peak_rss_mib": round(peak_rss_mib()),
        "changed_rows": counts[Action.UPDATE],
        "stripe_calls": customers.calls.total,
    }


def pandas_diff(path: Path) -> dict:
    columns = SPEC.columns_by_field
    select = ", ".join(f'cast("{column}" as varchar) as "{field}"' for field, column in columns.items())
    with Stopwatch() as watch:
        with duckdb.connect(str(path), read_only=True) as connection:
            model = connection.execute(f"select {select} from main.stripe_customers").df()
            state = connection.execute(
                f"select customer_key, synced_values from census_stripe.sync_state where sync_name = '{SPEC.name}'"
            ).df()
        model["customer_key"] = model["email"].str.strip().str.lower()
        synced = pd.json_normalize(state["synced_values"].map(json.loads).tolist())
        synced["customer_key"] = state["customer_key"].values
        both = model.merge(synced, on="customer_key", how="left", suffixes=("", "_synced"))
        changed = pd.Series(False, index=both.index)
        for field in columns:
            now, before = both[field], both[f"{field}_synced"]
            changed |= ~((now == before) | (now.isna() & before.isna()))
        changed_rows = int(changed.sum())
    return {
        "variant": "pandas (load both, diff)",
        "seconds": round(watch.seconds, 2),
        "peak_rss_mib": round(peak_rss_mib()),
        "changed_rows": changed_rows,
        "stripe_calls": 0,
    }


VARIANTS = {"engine": engine, "pandas": pandas_diff}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--variant", choices=VARIANTS)
    parser.add_argument("--db")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(VARIANTS[args.variant](Path(args.db))))
        return
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "warehouse.duckdb"
        make_model(db, args.rows)
        write_synced_state(db)
        changed = change_every_hundredth_row(db)
        print(f"model: {args.rows:,} rows, {changed:,} changed since the last sync")
        rows = [run_variant(__spec__.name, "--variant", name, "--db", str(db)) for name in VARIANTS]
    print_table(f"Plan over {args.rows:,} rows, {changed:,} changed (2 cores)", rows)


if __name__ == "__main__":
    main()
