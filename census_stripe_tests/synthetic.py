"""Synthetic customers in the demo mart's shape, at any size, straight into DuckDB (no dbt):
for the delivery tests and the benchmarks, which need more rows than the dbt seeds give."""

from __future__ import annotations

from pathlib import Path

import duckdb


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
