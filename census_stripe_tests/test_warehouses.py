"""The same sync on every warehouse that can run here: dbt builds the demo models there, the sync
writes to the local Stripe server, state and writeback land in that warehouse, and a rerun sends
nothing.

- DuckDB: a file.
- PostgreSQL: the server on this machine (127.0.0.1:5432, trust auth, database `test`), in a
  schema of the test's own, dropped afterwards.
- Snowflake: fakesnow's server, which speaks Snowflake's protocol to the official connector
  and to dbt-snowflake.
- Redshift and BigQuery have no local stand-in: their generated SQL is checked with sqlglot,
  and Redshift's adapter (PostgreSQL's protocol) runs against PostgreSQL.
"""

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pytest
import sqlglot
from dagster_duckdb import DuckDBResource
from dagster_snowflake import SnowflakeResource

from census_stripe.component import customer_source
from census_stripe.demo.seed_data import DEFAULT_CUSTOMERS, write_seeds
from census_stripe.orchestration.meter_event_asset import MeterEventSync, build_meter_event_asset
from census_stripe.orchestration.resources import StripeResource
from census_stripe.orchestration.snowflake_warehouse import SnowflakeWarehouseResource
from census_stripe.orchestration.sync_asset import build_sync_asset, load_sync
from census_stripe.orchestration.warehouses import (
    DuckDBWarehouseResource,
    PostgresWarehouseResource,
    WarehouseResource,
    warehouse_from_env,
)
from census_stripe.plan import sql
from census_stripe.settings import DBT_PROJECT_DIR, DEFS_DIR
from census_stripe.spec import MeterEventSpec
from census_stripe.stripe_client.client import local_account
from census_stripe.warehouse.base import Relation
from census_stripe.warehouse.postgres import RedshiftWarehouse
from census_stripe.warehouse.state import StateRecord, StateStatus, SyncStateStore, utc_now
from census_stripe_tests.conftest import API_KEY, DEMO_SYNC, postgres_sql, require_postgres
from census_stripe_tests.meters import create_meter

USAGE_SYNC = DEFS_DIR / "api_usage" / "defs.yaml"
PRODUCT_SYNC = DEFS_DIR / "products" / "defs.yaml"

POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "test"}
STATE_SCHEMA = "census_stripe_test_state"


@dataclass
class WarehouseUnderTest:
    kind: str
    resource: WarehouseResource
    manifest: Path
    sql: Callable[[str], list[tuple]]


def dbt_build(
    kind: str, target: Path, env: dict[str, str], selection: tuple[str, ...] = ("--exclude", "tag:partitioned")
) -> Path:
    """A real `dbt build` of the demo models on the warehouse; returns the manifest it wrote."""
    write_seeds(DEFAULT_CUSTOMERS)
    command = [str(Path(sys.executable).parent / "dbt"), "build", "--target", kind, "--target-path", str(target)]
    done = subprocess.run(
        [*command, *selection],
        cwd=DBT_PROJECT_DIR,
        env={**os.environ, "CENSUS_STRIPE_WAREHOUSE": kind, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    return target / "manifest.json"


@pytest.fixture(scope="module")
def postgres_schema():
    require_postgres()
    schema = f"cs_{uuid.uuid4().hex[:8]}"
    yield schema
    for name in (schema, f"{schema}_raw", f"{schema}_staging", f"{schema}_{STATE_SCHEMA}"):
        postgres_sql(f'drop schema if exists "{name}" cascade')


@pytest.fixture(scope="module", params=["duckdb", "postgres", "snowflake"])
def warehouse(request, tmp_path_factory) -> WarehouseUnderTest:
    target = tmp_path_factory.mktemp(f"dbt_{request.param}")
    if request.param == "duckdb":
        path = target / "warehouse.duckdb"
        manifest = dbt_build("duckdb", target, {"CENSUS_STRIPE_DUCKDB_PATH": str(path)})

        def duckdb_sql(statement: str) -> list[tuple]:
            with duckdb.connect(str(path), read_only=True) as connection:
                return connection.execute(statement).fetchall()

        resource = DuckDBWarehouseResource(duckdb=DuckDBResource(database=str(path)), state_schema=STATE_SCHEMA)
        return WarehouseUnderTest("duckdb", resource, manifest, duckdb_sql)
    if request.param == "postgres":
        schema = request.getfixturevalue("postgres_schema")
        env = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres", "PGDATABASE": "test"}
        manifest = dbt_build("postgres", target, {**env, "CENSUS_STRIPE_SCHEMA": schema})
        resource = PostgresWarehouseResource(**POSTGRES, state_schema=f"{schema}_{STATE_SCHEMA}")
        return WarehouseUnderTest("postgres", resource, manifest, postgres_sql)
    server = request.getfixturevalue("fakesnow_server")
    import snowflake.connector

    database = "CS_TEST"
    with snowflake.connector.connect(**server) as connection:
        connection.cursor().execute(f"create database if not exists {database}")
        connection.cursor().execute(f"create schema if not exists {database}.PUBLIC")
    env = {
        "SNOWFLAKE_ACCOUNT": server["account"],
        "SNOWFLAKE_USER": server["user"],
        "SNOWFLAKE_PASSWORD": server["password"],
        "SNOWFLAKE_DATABASE": database,
        "SNOWFLAKE_HOST": server["host"],
        "SNOWFLAKE_PORT": str(server["port"]),
        "SNOWFLAKE_PROTOCOL": server["protocol"],
        "CENSUS_STRIPE_SCHEMA": "PUBLIC",
    }
    manifest = dbt_build("snowflake", target, env)
    stand_in = {key: server[key] for key in ("host", "port", "protocol", "session_parameters", "network_timeout")}
    resource = SnowflakeWarehouseResource(
        snowflake=SnowflakeResource(
            account=server["account"],
            user=server["user"],
            password=server["password"],
            database=database,
            schema="PUBLIC",
            additional_snowflake_connection_args=stand_in,
        ),
        state_schema=STATE_SCHEMA,
    )

    def snowflake_sql(statement: str) -> list[tuple]:
        with snowflake.connector.connect(**server, database=database, schema="PUBLIC") as connection:
            return connection.cursor().execute(statement).fetchall()

    return WarehouseUnderTest("snowflake", resource, manifest, snowflake_sql)


def test_the_sync_runs_the_same_on_every_warehouse(warehouse, stripe_url, stripe_customers):
    sync = load_sync(DEMO_SYNC, warehouse.manifest)
    asset = build_sync_asset(sync, warehouse.resource.kind)
    stripe = StripeResource(
        api_key=API_KEY,
        api_base=stripe_url,
        account_requests_per_second=1000,
        create_requests_per_second=1000,
        update_requests_per_second=1000,
    )
    resources = {"stripe": stripe, "warehouse": warehouse.resource}

    def counts(result) -> dict:
        [event] = result.get_asset_materialization_events()
        return {name: value.value for name, value in event.materialization.metadata.items()}

    first = counts(dg.materialize([asset], resources=resources))
    assert (first["rows_read"], first["created"], first["rejected"], first["failed"]) == (300, 294, 6, 0)
    in_stripe = {c.values["email"].lower(): c.id for c in stripe_customers.iter_all()}
    assert len(in_stripe) == 294

    # The warehouse is the module's: the usage test syncs customers there too, to another Stripe account.
    account = f"\"stripe_account\" = '{local_account(stripe_url, API_KEY).key}'"
    state = f'"{warehouse.resource.state_schema}"."sync_state"'
    written = warehouse.sql(
        f'select "customer_key", "stripe_customer_id" from {state} where "status" = \'synced\' and {account}'
    )
    assert dict(written) == in_stripe  # the writeback: every Stripe id, in this warehouse
    rejections = f'"{warehouse.resource.state_schema}"."sync_rejections"'
    assert warehouse.sql(f"select count(*) from {rejections} where {account}") == [(6,)]

    second = counts(dg.materialize([asset], resources=resources))
    assert (second["created"], second["updated"], second["stripe_api_calls"]) == (0, 0, 0)
    assert second["unchanged"] == 294


def test_usage_is_billed_once_on_every_warehouse(warehouse, double):
    """The meter event path's SQL (verdicts, ledger) on each warehouse: yesterday's usage of the
    demo's model billed through the customers synced there, then nothing on a rerun."""
    stripe = StripeResource(
        api_key=API_KEY,
        api_base=double.url,
        account_requests_per_second=1000,
        create_requests_per_second=1000,
        update_requests_per_second=1000,
    )
    resources = {"stripe": stripe, "stripe_catalog": stripe, "warehouse": warehouse.resource}
    dg.materialize(
        [build_sync_asset(load_sync(DEMO_SYNC, warehouse.manifest), warehouse.resource.kind)], resources=resources
    )
    usage_sync = load_sync(USAGE_SYNC, warehouse.manifest)
    assert isinstance(usage_sync.spec, MeterEventSpec)
    create_meter(double.url)
    usage = MeterEventSync(usage_sync, usage_sync.spec, customer_source(usage_sync.spec, USAGE_SYNC.parent))
    asset = build_meter_event_asset(usage, warehouse.resource.kind)
    yesterday = str(utc_now().date() - timedelta(days=1))

    def bill() -> dict:
        result = dg.materialize([asset], resources=resources, partition_key=yesterday)
        [event] = result.get_asset_materialization_events()
        return {name: value.value for name, value in event.materialization.metadata.items()}

    first = bill()
    # A third of the 300 users call the API each day; the one of them the customers sync rejected has no customer.
    assert (first["rows_read"], first["accepted"], first["rejected"], first["refused"]) == (100, 99, 1, 0)
    assert double.meter_events()["counted"] == 99
    again = bill()
    assert (again["already_sent"], again["accepted"], again["stripe_api_calls"]) == (99, 0, 0)
    ledger = f'"{warehouse.resource.state_schema}"."meter_event_ledger"'
    assert warehouse.sql(f"select count(*) from {ledger} where accepted_at is not null") == [(99,)]


def test_usage_days_are_utc_days_whatever_the_warehouse_time_zone(tmp_path):
    """The usage model counts its days back from today in UTC, as the usage is billed, not from the
    warehouse session's today: built where the local date is not UTC's, the last day is UTC's yesterday."""
    utc_days = {utc_now().date()}
    # A zone whose date differs from UTC's now: 14 hours ahead from 10:00 UTC, else 11 hours behind.
    zone = "Pacific/Kiritimati" if utc_now().hour >= 10 else "Pacific/Pago_Pago"
    path = tmp_path / "warehouse.duckdb"
    env = {"CENSUS_STRIPE_DUCKDB_PATH": str(path), "TZ": zone}
    dbt_build("duckdb", tmp_path, env, selection=("--select", "+stripe_api_usage", "--exclude", "test_type:data"))
    utc_days.add(utc_now().date())  # a build across UTC midnight may count from either day
    with duckdb.connect(str(path), read_only=True) as connection:
        first, last = connection.execute(
            "select min(usage_date), max(usage_date) from main.stripe_api_usage"
        ).fetchone()
    assert any((first, last) == (today - timedelta(days=7), today - timedelta(days=1)) for today in utc_days)


def test_the_guards_read_their_counts_on_every_warehouse(warehouse, double):
    """The guards' SQL on each warehouse (the objects the sync has in Stripe, the row count of the
    last sync): a rerun of the demo's product sync judges its archives against every product it
    wrote, and its row count against the first run's."""
    stripe = StripeResource(
        api_key=API_KEY,
        api_base=double.url,
        account_requests_per_second=1000,
        create_requests_per_second=1000,
        update_requests_per_second=1000,
    )
    resources = {"stripe_catalog": stripe, "warehouse": warehouse.resource}
    asset = build_sync_asset(load_sync(PRODUCT_SYNC, warehouse.manifest), warehouse.resource.kind)
    [first] = dg.materialize([asset], resources=resources).get_asset_materialization_events()
    rows, created = (first.materialization.metadata[name].value for name in ("rows_read", "created"))
    assert created > 0

    rerun = dg.materialize([asset], resources=resources)
    checks = {e.check_name: e for e in rerun.get_asset_check_evaluations()}
    archives, row_count = checks["archives_below_threshold"], checks["row_count_change_below_threshold"]
    assert archives.passed and archives.metadata["in_stripe"].value == created
    assert row_count.passed and row_count.metadata["last_rows_read"].value == rows
    assert row_count.description == (
        f"{rows} rows in stripe_products, {rows} at the last sync (+0 %): within max_row_count_change 50 %"
    )


def test_the_redshift_adapter_runs_its_statements_over_the_postgres_protocol(postgres_schema):
    """Redshift's adapter is PostgreSQL's connection code with Redshift's dialect. Against a real
    PostgreSQL, everything but the dialect is exercised: connect, stream, transactions, state
    writes. (Its Redshift-dialect SQL is checked by the next test.)"""

    class RedshiftOverPostgres(RedshiftWarehouse):
        dialect = "postgres"

    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="test") as connection:
        store = SyncStateStore(RedshiftOverPostgres(connection), schema=f"{postgres_schema}_redshift_path")
        store.ensure_tables()
        store.save(
            "s",
            "acct_1/test",
            "r1",
            [StateRecord(f"k{i}", f"cus_{i}", "h", {"a": "1"}, None, StateStatus.SYNCED, None) for i in range(250)],
        )
        store.save("s", "acct_1/test", "r2", [StateRecord("k1", "cus_1", "h2", {}, None, StateStatus.FAILED, "boom")])
        chunks = list(store.warehouse.query_chunks(f'select * from "{store.state.schema}"."sync_state"', 100))
        assert [len(chunk) for chunk in chunks] == [100, 100, 50]
        assert store.known_customers("s", "acct_1/test") == 250
    postgres_sql(f'drop schema "{postgres_schema}_redshift_path" cascade')


def usage_sql() -> list[str]:
    """In DuckDB's SQL: a meter event sync's plan, for a partition, with every kind of identity
    column and a ledger still holding keys of the former scheme (its most involved query), then
    the queries over it of what was billed, and the view over the ledger."""
    from datetime import datetime

    from census_stripe.plan.meter_events import ColumnKind, CustomerSource, events_query
    from census_stripe.spec import parse_sync_spec
    from census_stripe.warehouse.billed import billed_view_sql, delivered_sql, summary_sql

    spec = parse_sync_spec(
        """
model: usage
object: meter_event
meter_event:
  event_name: api_calls
  customer: {column: email, sync: customers}
  value_column: calls
  timestamp_column: at
  identity: [email, day, at, naive, amount]
""",
        "defs/api_usage/defs.yaml",
    )
    assert isinstance(spec, MeterEventSpec)
    kinds = {
        "day": ColumnKind.DATE,
        "at": ColumnKind.TIMESTAMP_TZ,
        "naive": ColumnKind.TIMESTAMP,
        "amount": ColumnKind.NUMBER,
    }
    query = events_query(
        spec,
        Relation("analytics", "usage"),
        sql.ModelSlice("at", datetime(2026, 1, 1), datetime(2026, 1, 2)),
        Relation("census_stripe", "sync_state"),
        Relation("census_stripe", "meter_event_ledger"),
        "acct_1/test",
        CustomerSource("customers", "email", "stripe"),
        "acct_1/test",
        datetime(2026, 1, 3),
        kinds,
        legacy_sync="api_usage",
        partitions=(("2026-01-01", sql.ModelSlice("at", datetime(2026, 1, 1), datetime(2026, 1, 2))),),
    )
    ledger = Relation("census_stripe", "meter_event_ledger")
    return [
        query,
        summary_sql(query, 20, ("new", "resend")),
        delivered_sql(query, ledger, "acct_1/test", "run-1", "new"),
        billed_view_sql(ledger),
    ]


@pytest.mark.parametrize("dialect", ["redshift", "bigquery", "snowflake", "postgres"])
def test_generated_sql_parses_in_each_dialect(dialect):
    from datetime import datetime

    from census_stripe.spec import load_sync_spec
    from census_stripe.warehouse.state import _REJECTION_COLUMNS, _ROW_COUNT_COLUMNS, _STATE_COLUMNS, _create_table

    spec = load_sync_spec(DEMO_SYNC)
    model, state = Relation("analytics", "stripe_customers"), Relation("census_stripe", "sync_state")
    statements = [
        sql.changed_rows_query(spec, model, state, "acct_1/test", dialect),
        sql.changed_rows_query(spec, model, state, "acct_1/test", dialect, everything=True),
        sql.row_count_query(model, dialect, sql.ModelSlice("signup_date", datetime(2024, 1, 1), datetime(2024, 2, 1))),
        sql.row_count_query(model, dialect, sql.ModelSlice("region", values=("EU",))),
        sql.fingerprint_query(spec, model, dialect, "updated_at"),
        _create_table(state, _STATE_COLUMNS).sql(dialect),
        _create_table(Relation("census_stripe", "sync_rejections"), _REJECTION_COLUMNS).sql(dialect),
        _create_table(Relation("census_stripe", "sync_row_counts"), _ROW_COUNT_COLUMNS).sql(dialect),
        sql.live_objects_query(spec, state, "acct_1/test", dialect),
        *(sqlglot.transpile(usage, read="duckdb", write=dialect, identify=True)[0] for usage in usage_sql()),
    ]
    for statement in statements:
        parsed = sqlglot.parse_one(statement, read=dialect)
        assert parsed.sql(dialect) == statement  # round-trips: nothing sqlglot does not understand
    if dialect == "redshift":
        assert "VARCHAR(MAX)" in statements[0]  # never Redshift's TEXT, which is VARCHAR(256)
    if dialect == "bigquery":
        assert "TO_HEX(MD5(" in statements[0] and "`analytics`.`stripe_customers`" in statements[0]


@pytest.mark.parametrize("kind", ["duckdb", "postgres_c"])
def test_columns_are_read_as_plain_python_values(kind, tmp_path):
    """What the meter event sender reads (`fetch_columns`): naive timestamps as datetimes to the
    microsecond (DuckDB's go through numpy, PostgreSQL's skip pandas), zoned ones the same
    instant, NULLs None; an empty result still names its columns."""
    from datetime import UTC, datetime

    from census_stripe_tests.key_warehouses import open_warehouse

    select = (
        "SELECT naive, CAST(zoned AS TIMESTAMPTZ) AS zoned, text, flag, number FROM (VALUES "
        "(CAST(NULL AS TIMESTAMP), '2026-03-08 06:00:00+00', 'a', TRUE, 1), "
        "(TIMESTAMP '2026-03-08 01:59:59.123456', '2026-03-08 07:00:00+00', NULL, FALSE, 2)) "
        "AS t(naive, zoned, text, flag, number) ORDER BY number"
    )
    with open_warehouse(kind, tmp_path) as warehouse:
        warehouse.execute("SET TimeZone = 'America/New_York'")
        read = warehouse.fetch_columns(select)
        empty = warehouse.fetch_columns(f"SELECT * FROM ({select}) AS rows WHERE number > 2")
    assert read == {
        "naive": [None, datetime(2026, 3, 8, 1, 59, 59, 123456)],
        "zoned": [datetime(2026, 3, 8, 6, tzinfo=UTC), datetime(2026, 3, 8, 7, tzinfo=UTC)],
        "text": ["a", None],
        "flag": [True, False],
        "number": [1, 2],
    }
    assert all(type(value) is datetime for value in read["naive"][1:] + read["zoned"])
    assert empty == {name: [] for name in read}


def test_duckdb_plans_within_its_memory_limit(tmp_path, monkeypatch):
    """DuckDB's own default is 80 % of the machine's memory; the sync's connection is bounded."""
    monkeypatch.setenv("CENSUS_STRIPE_DUCKDB_PATH", str(tmp_path / "warehouse.duckdb"))
    monkeypatch.setenv("CENSUS_STRIPE_DUCKDB_MEMORY_LIMIT", "300MB")
    for read_only in (False, True):
        with warehouse_from_env().open(read_only=read_only) as warehouse:
            limit = warehouse.query("select current_setting('memory_limit') as limit").iloc[0, 0]
        assert limit == "286.1 MiB"  # 300 MB, as DuckDB shows it
