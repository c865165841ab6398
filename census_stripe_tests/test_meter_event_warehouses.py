"""What a usage row turns into is the same on every warehouse and in every time zone: DuckDB,
PostgreSQL and Snowflake (fakesnow), each in a session set to New York's time, the process too.
Against the Stripe double as a real server."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest
import sqlglot

from census_stripe.meter_sync import MeterEventReport, MeterRunOptions, as_stored, run_meter_event_sync
from census_stripe.plan.meter_events import CustomerSource, column_kinds, events_query
from census_stripe.plan.sql import ModelSlice
from census_stripe.spec import MeterCustomer, MeterEventSpec, SyncSpec, parse_sync_spec
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.stripe_client.meter_events import MeterEventStream
from census_stripe.sync import SyncReport, run_sync
from census_stripe.warehouse.base import Relation, Warehouse, literal
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.ledger import LEDGER_COLUMNS, MeterEventLedger, in_dialect
from census_stripe.warehouse.state import SyncStateStore, ensure_table, utc_now
from census_stripe_tests.key_warehouses import open_warehouse
from census_stripe_tests.meters import create_meter
from census_stripe_tests.synthetic import make_model as make_customer_model
from census_stripe_tests.test_delivery import MODEL as CUSTOMER_MODEL
from census_stripe_tests.test_delivery import SPEC as CUSTOMER_SPEC
from census_stripe_tests.test_delivery import customers_for
from census_stripe_tests.test_trust import delete_in_stripe
from census_stripe_tests.usage import ACCOUNT, API_KEY, UNLIMITED, WHOLE_MODEL

ZONE = "America/New_York"  # five hours behind UTC in winter, four in summer


@pytest.fixture(scope="module", params=["duckdb", "postgres_c", "snowflake"])
def warehouse(request, tmp_path_factory) -> Iterator[Warehouse]:
    """Each warehouse, its session set to New York's time where the warehouse lets a session choose."""
    server = request.getfixturevalue("fakesnow_server") if request.param == "snowflake" else None
    with open_warehouse(request.param, tmp_path_factory.mktemp(request.param), server) as opened:
        if request.param == "duckdb":
            opened.execute(f"SET TimeZone = '{ZONE}'")
        elif request.param.startswith("postgres"):
            opened.execute(f"SET TIME ZONE '{ZONE}'")  # a session setting: it outlives the transaction
        yield opened


@pytest.fixture(autouse=True)
def new_york_process(monkeypatch) -> Iterator[None]:
    """The process's own time zone too: nothing may read a naive time as local."""
    monkeypatch.setenv("TZ", ZONE)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def schema(warehouse) -> str:
    """A schema of the test's own, for its model and its state tables."""
    name = f"usage_{uuid.uuid4().hex[:8]}"
    warehouse.execute_ddl(f"CREATE SCHEMA {name}")
    return name


@pytest.fixture
def customers(double) -> list[str]:
    create_meter(double.url)
    return double.load([{"email": f"user{i}@example.com"} for i in range(4)])


def usage_spec(identity: str = "[customer_id, day]", timestamp: str = "day", extra: str = "") -> MeterEventSpec:
    spec = parse_sync_spec(
        f"""
model: usage
object: meter_event
meter_event:
  event_name: api_calls
  customer: {{column: customer_id}}
  value_column: calls
  timestamp_column: {timestamp}
  identity: {identity}
{extra}
""",
        "defs/api_usage/defs.yaml",
    )
    assert isinstance(spec, MeterEventSpec)
    return spec


def make_model(warehouse: Warehouse, schema: str, columns: str, rows: list[str]) -> None:
    """The model `usage`, created unquoted as dbt would, from DuckDB's SQL."""

    def sql(statement: str) -> str:
        return sqlglot.transpile(statement, read="duckdb", write=warehouse.dialect)[0]

    warehouse.execute_ddl(sql(f"CREATE TABLE {schema}.usage ({columns})"))
    warehouse.execute(*(sql(f"INSERT INTO {schema}.usage VALUES {row}") for row in rows))


def run(
    warehouse: Warehouse,
    schema: str,
    double,
    spec: MeterEventSpec,
    run_id: str,
    options: MeterRunOptions = WHOLE_MODEL,
    now: Callable[[], datetime] = utc_now,
) -> MeterEventReport:
    meter = spec.meter_event
    return run_meter_event_sync(
        spec,
        model=Relation(schema, "usage"),
        store=SyncStateStore(warehouse, f"{schema}_state"),
        api=lambda: MeterEventStream(API_KEY, double.url, UNLIMITED, (meter.customer_payload_key, "value")),
        account_of=lambda: ACCOUNT,
        customers=CustomerSource(),
        run_id=run_id,
        options=options,
        concurrency=UNLIMITED.concurrency,
        now=now,
    )


def sent_times(warehouse: Warehouse, schema: str) -> dict[str, datetime]:
    """Customer -> the time its event was sent to Stripe with (the ledger's, UTC)."""
    ledger = f'"{schema}_state"."meter_event_ledger"'
    rows = warehouse.query(f"SELECT stripe_customer_id, event_time FROM {ledger}")
    return {str(customer): moment.to_pydatetime() for customer, moment in rows.itertuples(index=False)}


def test_dates_and_timestamps_with_and_without_zone_are_the_same_utc_instant_everywhere(
    warehouse, schema, double, customers
):
    noon = utc_now().replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=2)
    day = noon.date()
    make_model(
        warehouse,
        schema,
        "customer_id TEXT, day DATE, at_instant TIMESTAMPTZ, at_naive TIMESTAMP, at_text TEXT, calls BIGINT",
        [
            # 12:00 UTC written as 07:00 in New York (winter) or 08:00 (summer): one instant.
            f"('{customers[0]}', DATE '{day}', TIMESTAMPTZ '{noon:%Y-%m-%d} 12:00:00+00', "
            f"TIMESTAMP '{noon:%Y-%m-%d} 12:00:00', '{noon:%Y-%m-%d}T12:00:00Z', 1)",
            f"('{customers[1]}', DATE '{day}', TIMESTAMPTZ '{noon:%Y-%m-%d} 14:00:00+02', "
            f"TIMESTAMP '{noon:%Y-%m-%d} 12:00:00', '{noon:%Y-%m-%d} 12:00:00', 2)",
        ],
    )
    midnight = noon.replace(hour=0)
    for column, expected in [("day", midnight), ("at_instant", noon), ("at_naive", noon), ("at_text", noon)]:
        spec = usage_spec(identity="[customer_id]", timestamp=column)
        report = run(warehouse, schema, double, spec, column)
        assert report.counts()["accepted"] == 2, (column, report.verdicts, report.rejected_sample)
        assert sent_times(warehouse, schema) == {customers[0]: expected, customers[1]: expected}, column
        warehouse.execute(f'DELETE FROM "{schema}_state"."meter_event_ledger"')


def test_a_daily_partition_holds_the_instants_of_its_utc_day(warehouse, schema, double, customers):
    day = (utc_now() - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    inside = [day + timedelta(minutes=1), day + timedelta(hours=23, minutes=59)]
    outside = [day - timedelta(minutes=1), day + timedelta(hours=24)]
    make_model(
        warehouse,
        schema,
        "customer_id TEXT, at_instant TIMESTAMPTZ, calls BIGINT",
        [f"('{customers[0]}', TIMESTAMPTZ '{moment:%Y-%m-%d %H:%M:%S}+00', 1)" for moment in inside + outside],
    )
    spec = usage_spec(
        identity="[customer_id, at_instant]",
        timestamp="at_instant",
        extra="partitions: {time: {column: at_instant, granularity: daily, start: '2026-01-01'}}",
    )
    one_day = MeterRunOptions(model_slice=ModelSlice("at_instant", start=day, end=day + timedelta(days=1)))
    report = run(warehouse, schema, double, spec, "one-day", one_day)
    assert (report.rows_read, report.counts()["accepted"]) == (2, 2)
    ledger = f'"{schema}_state"."meter_event_ledger"'
    sent = sorted(moment.to_pydatetime() for moment in warehouse.query(f"SELECT event_time FROM {ledger}").iloc[:, 0])
    assert sent == inside


@pytest.mark.parametrize("days", [1, 2])
def test_events_stripe_rate_limited_on_every_try_are_unsent_not_refused_in_each_partition(
    warehouse, schema, double, customers, monkeypatch, days
):
    """Over one partition the run's own delivery is the partition's; over several, each partition's
    is judged against the ledger: an event whose 429s ran out is unsent there too, never refused."""
    from census_stripe.stripe_client import meter_events

    first = (utc_now() - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    dates = [first + timedelta(days=n) for n in range(days)]
    make_model(
        warehouse,
        schema,
        "customer_id TEXT, day DATE, calls BIGINT",
        [f"('{customer}', DATE '{day:%Y-%m-%d}', 3)" for day in dates for customer in customers[:2]],
    )
    spec = usage_spec(extra="partitions: {time: {column: day, granularity: daily, start: '2026-01-01'}}")
    options = MeterRunOptions(
        model_slice=ModelSlice("day", start=first, end=dates[-1] + timedelta(days=1)),
        partitions=tuple(
            (f"{day:%Y-%m-%d}", ModelSlice("day", start=day, end=day + timedelta(days=1))) for day in dates
        ),
    )
    monkeypatch.setattr(meter_events, "MAX_ATTEMPTS", 1)
    double.configure(meter_event_stream_rate=0.001)  # the stream answers every request 429
    limited = run(warehouse, schema, double, spec, "limited", options)
    assert (limited.delivery.unsent, limited.delivery.refused, limited.delivery.accepted) == (2 * days, 0, 0)
    assert limited.billed == []  # planned, never accepted: nothing billed
    for key, _ in options.partitions:
        delivery = limited.of_partition(key).delivery
        assert (delivery.accepted, delivery.in_doubt, delivery.refused) == (0, 0, 0), key

    double.configure(meter_event_stream_rate=0)
    sent = run(warehouse, schema, double, spec, "sent", options)
    assert sent.verdicts == {"new": 2 * days}
    for key, _ in options.partitions:
        delivery = sent.of_partition(key).delivery
        assert (delivery.accepted, delivery.in_doubt, delivery.refused) == (2, 0, 0), key
    assert {row["partition_key"]: float(row["meter_units"]) for row in sent.billed} == {
        key: 6.0 for key, _ in options.partitions
    }
    assert double.meter_events()["counted"] == 2 * days


def test_bad_values_and_times_are_rejections_with_their_reason_on_every_warehouse(warehouse, schema, double, customers):
    now = utc_now()

    def at(moment: datetime) -> str:
        return f"'{moment:%Y-%m-%dT%H:%M:%S}'"

    rows = {
        "new": [(at(now - timedelta(days=1)), "'5'"), (at(now - timedelta(days=2)), "' 1.50 '")],
        "bad_value": [(at(now - timedelta(days=1)), "'n/a'"), (at(now), "'1e3'"), (at(now), "'1,5'")],
        "negative_value": [(at(now - timedelta(days=1)), "'-3'")],
        "no_value": [(at(now), "NULL"), (at(now), "''")],
        "too_old": [(at(now - timedelta(days=40)), "'1'")],
        "in_future": [(at(now + timedelta(minutes=10)), "'1'")],
        "bad_timestamp": [("'yesterday'", "'1'"), ("'2026-01-01T12:00:00+02:00'", "'1'")],
        "no_timestamp": [("NULL", "'1'")],
    }
    values = [
        f"({number}, '{customers[number % len(customers)]}', {moment}, {calls})"
        for number, (moment, calls) in enumerate(row for verdict_rows in rows.values() for row in verdict_rows)
    ]
    make_model(warehouse, schema, "id INTEGER, customer_id TEXT, happened TEXT, calls TEXT", values)
    spec = usage_spec(identity="[id]", timestamp="happened")
    report = run(warehouse, schema, double, spec, "checked")
    assert report.verdicts == {verdict: len(verdict_rows) for verdict, verdict_rows in rows.items()}
    assert report.counts()["accepted"] == 2
    reasons = {row["verdict"] for row in report.rejected_sample}
    assert reasons == set(rows) - {"new"}

    sums = double.meter_events()["sums"]["api_calls"]
    credits = usage_spec(identity="[id]", timestamp="happened", extra="  allow_negative_values: true")
    allowed = run(warehouse, schema, double, credits, "credits")
    assert (allowed.verdicts.get("negative_value"), allowed.counts()["accepted"]) == (None, 1)
    after = double.meter_events()["sums"]["api_calls"]
    credited = {customer: total - sums.get(customer, 0) for customer, total in after.items()}
    assert sorted(credited.values()) == [-3, 0]


# Golden vectors: an event's key is md5 of the event name and its identity values in their one
# canonical text, joined by U+001F. These identifiers are in Stripe: they may never change.
GOLDEN = {
    "f995e3234c326f526d1af7a57c4b7631": "\x1f".join(
        [
            "api_calls",
            "Zoë",
            "42",
            "1.5",
            "0.1",
            "2026-03-01",
            "2026-03-01T12:00:00.500000Z",
            "2026-03-01T12:00:00.500000Z",
        ]
    ),
    "be8c4d9e71c36dabfc3d7f232b90e957": "\x1f".join(
        [
            "api_calls",
            "a",
            "-7",
            "0",
            "100.25",
            "1999-12-31",
            "2026-07-04T00:00:00.000000Z",
            "2026-07-04T00:00:00.000000Z",
        ]
    ),
}


def event_keys(warehouse: Warehouse, schema: str, spec: MeterEventSpec) -> list[str]:
    """The key of every row of the model, as the run's plan computes it."""
    stored_spec, model, _ = as_stored(spec, Relation(schema, "usage"), None, warehouse)
    store = SyncStateStore(warehouse, f"{schema}_state")
    store.ensure_tables()
    MeterEventLedger(warehouse, store.ledger, spec.name, ACCOUNT.key).ensure_table()
    kinds = column_kinds(warehouse.column_types(model), warehouse.dialect)
    source = CustomerSource()
    query = events_query(
        stored_spec, model, None, store.state, store.ledger, ACCOUNT.key, source, ACCOUNT.key, utc_now(), kinds
    )
    keys = warehouse.query(in_dialect(warehouse, f"SELECT event_key FROM ({query}) AS planned"))
    return sorted(map(str, keys.iloc[:, 0]))


def test_golden_vectors_give_the_same_identifiers_on_every_warehouse_and_session(warehouse, schema):
    assert {hashlib.md5(text.encode()).hexdigest(): text for text in GOLDEN.values()} == GOLDEN
    make_model(
        warehouse,
        schema,
        "customer_id TEXT, name TEXT, n_int BIGINT, n_dec DECIMAL(12, 4), n_float DOUBLE, d DATE, ts TIMESTAMP, "
        "tstz TIMESTAMPTZ, calls BIGINT",
        [
            "('cus_golden', 'Zoë', 42, 1.5, 0.1, DATE '2026-03-01', TIMESTAMP '2026-03-01 12:00:00.5', "
            "TIMESTAMPTZ '2026-03-01 07:00:00.5-05', 1)",
            "('cus_golden', 'a', -7, 0, 100.25, DATE '1999-12-31', TIMESTAMP '2026-07-04 00:00:00', "
            "TIMESTAMPTZ '2026-07-04 02:00:00+02', 1)",
        ],
    )
    identity = "[name, n_int, n_dec, n_float, d, ts, tstz]"
    assert event_keys(warehouse, schema, usage_spec(identity=identity, timestamp="ts")) == sorted(GOLDEN)


def test_a_null_identity_value_is_a_rejection(warehouse, schema, double, customers):
    make_model(
        warehouse,
        schema,
        "customer_id TEXT, day DATE, calls BIGINT",
        [f"('{customers[0]}', NULL, 1)", f"(NULL, DATE '{utc_now():%Y-%m-%d}', 1)"],
    )
    report = run(warehouse, schema, double, usage_spec(), "nulls")
    assert report.verdicts == {"no_identity": 2}


UPGRADE_FIXTURE = Path(__file__).parent / "fixtures" / "ledger_main_5142fe9.json"
# The fixture's time: its runs sent the events at 08:26 that day.
UPGRADED_AT = datetime(2026, 12, 5, 9, 0)


def load_upgrade_fixture(warehouse: Warehouse, schema: str) -> dict:
    """The model and the ledger main's meter event sync wrote for it (at commit 5142fe9, the
    version before event keys left out the sync's name), as that version's table holds it."""
    import pandas as pd

    fixture = json.loads(UPGRADE_FIXTURE.read_text())
    make_model(
        warehouse,
        schema,
        "customer_id TEXT, day DATE, calls BIGINT",
        [f"('{customer}', DATE '{day}', {calls})" for customer, day, calls in fixture["model"]],
    )
    store = SyncStateStore(warehouse, f"{schema}_state")
    store.ensure_tables()
    old_columns = {name: LEDGER_COLUMNS[name] for name in fixture["ledger_columns"]}
    ensure_table(warehouse, store.ledger, old_columns)
    rows = pd.DataFrame(fixture["ledger"], columns=fixture["ledger_columns"])
    rows["revision"] = rows["revision"].astype(int)
    for column in ("event_time", "attempted_at", "accepted_at"):
        rows[column] = pd.to_datetime(rows[column])
    warehouse.append_rows(store.ledger, rows)
    return fixture


def test_upgrading_recognises_the_events_sent_under_the_old_keys_and_a_rename_then_sends_nothing(
    warehouse, schema, double, customers
):
    fixture = load_upgrade_fixture(warehouse, schema)
    ledger = f'"{schema}_state"."meter_event_ledger"'
    # One event as a run killed mid-send leaves it, an hour before the upgrade: in doubt.
    in_doubt = fixture["ledger"][0][3]
    warehouse.execute(
        f"UPDATE {ledger} SET accepted_at = NULL, attempted_at = "
        f"{literal(UPGRADED_AT - timedelta(hours=1)).sql(warehouse.dialect)} WHERE identifier = '{in_doubt}'"
    )
    double.advance_clock((UPGRADED_AT - utc_now()).total_seconds())  # Stripe's clock at the fixture's time
    double.configure(meter_customers_elsewhere=True)  # the fixture's customers are in the double that made it
    new_day = datetime(2026, 12, 4).date()
    warehouse.execute(
        sqlglot.transpile(
            f"INSERT INTO {schema}.usage VALUES ('{customers[0]}', DATE '{new_day}', 7)",
            read="duckdb",
            write=warehouse.dialect,
        )[0]
    )
    spec = usage_spec()
    assert spec.name == fixture["sync_name"], "the fixture's sync, by the name its keys digest"

    upgraded = run(warehouse, schema, double, spec, "upgraded", now=lambda: UPGRADED_AT)
    counts = upgraded.counts()
    assert (counts["already_sent"], counts["resent_in_doubt"], counts["accepted"]) == (11, 1, 2), upgraded.verdicts
    # The event in doubt went again under the identifier Stripe may have it by.
    identifiers = warehouse.query(f"SELECT identifier, key_scheme FROM {ledger} ORDER BY identifier")
    assert in_doubt in set(identifiers.iloc[:, 0])
    assert set(identifiers.iloc[:, 1]) == {2}, "every row filed under its event's key"
    assert double.meter_events()["counted"] == 2

    renamed = spec.model_copy(update={"name": "usage_renamed"})
    double.advance_clock(25 * 3600)  # past Stripe's deduplication: only the ledger stands between
    later = run(warehouse, schema, double, renamed, "renamed", now=lambda: UPGRADED_AT + timedelta(hours=25))
    assert later.verdicts == {"sent": 13}
    assert later.counts()["stripe_api_calls"] == 0
    summary = double.meter_events()
    assert (summary["counted"], summary["counted_more_than_once"]) == (2, 0)


def sync_customers(path: Path, customers: StripeObjects, spec: SyncSpec, run_id: str) -> SyncReport:
    """The demo's customer sync, or `spec`, on the DuckDB file at `path`, against the double."""
    with duckdb.connect(str(path)) as connection:
        store = SyncStateStore(DuckDBWarehouse(connection))
        return run_sync(spec, model=CUSTOMER_MODEL, store=store, stripe=customers, run_id=run_id)


def test_a_customer_deleted_in_stripe_gets_no_more_usage(double, tmp_path):
    """The customer sync (Update Only) finds a customer deleted in Stripe; its usage rows are then
    rejected with that reason, and the other customers' sent. On DuckDB: the reason comes from the
    customer sync's state, whichever warehouse holds it."""
    path = tmp_path / "warehouse.duckdb"
    make_customer_model(path, 3)
    sync_customers(path, customers_for(double), CUSTOMER_SPEC, "customers-1")
    [gone] = delete_in_stripe(double, "user1@example.com")
    # The customer sync learns of it when it next writes the customer (or on a full resync).
    with duckdb.connect(str(path)) as connection:
        connection.execute("update main.stripe_customers set plan = 'enterprise' where email = 'user1@example.com'")
    update_only = CUSTOMER_SPEC.model_copy(update={"behavior": "update_only"})
    skipped = sync_customers(path, customers_for(double), update_only, "customers-2").counts()
    assert skipped["skipped_not_found"] == 1

    create_meter(double.url)
    today = utc_now().date()
    with duckdb.connect(str(path)) as connection:
        emails = [row[0] for row in connection.execute("select email from main.stripe_customers order by 1").fetchall()]
        connection.execute("create table main.usage (customer_id text, day date, calls bigint)")
        connection.executemany("insert into main.usage values (?, ?, 5)", [[email, today] for email in emails])
        spec = usage_spec()
        by_email = MeterCustomer(column="customer_id", sync=CUSTOMER_SPEC.name)
        report = run_meter_event_sync(
            spec.model_copy(update={"meter_event": spec.meter_event.model_copy(update={"customer": by_email})}),
            model=Relation("main", "usage"),
            store=SyncStateStore(DuckDBWarehouse(connection)),
            api=lambda: MeterEventStream(API_KEY, double.url, UNLIMITED, ("stripe_customer_id", "value")),
            account_of=lambda: ACCOUNT,
            customers=CustomerSource(CUSTOMER_SPEC.name, "email", "stripe"),
            run_id="usage",
        )
    assert report.verdicts == {"new": 2, "customer_deleted": 1}
    [rejected] = report.rejected_sample
    assert (rejected["verdict"], rejected["stripe_customer_id"]) == ("customer_deleted", gone)
    assert gone not in double.meter_events()["sums"]["api_calls"]
    assert report.counts()["accepted"] == 2


def test_on_postgresql_a_runs_marks_and_reads_use_the_ledgers_index_not_a_scan_of_it(tmp_path):
    """PostgreSQL has no zone maps: without an index, every mark of a group of requests reads the
    whole ledger, which holds every event ever sent. With scans disabled for the session, the
    planner says what it would do when the ledger is large."""
    with open_warehouse("postgres_c", tmp_path) as warehouse:
        store = SyncStateStore(warehouse)
        store.ensure_tables()
        ledger = MeterEventLedger(warehouse, store.ledger, "usage", ACCOUNT.key)
        ledger.ensure_table()
        ledger.ensure_table()  # every run ensures it: the index is made once
        statements = {
            "mark": ledger.mark_sql("run-1", "a", "b", datetime(2026, 12, 6)),
            "chunk bounds": ledger.chunk_bounds_sql("run-1", 50_000),
            "chunk read": ledger.chunk_sql("run-1", "a", "b"),
        }
        warehouse.execute("SET enable_seqscan = off")
        plans = {
            name: "\n".join(warehouse.query(f"EXPLAIN {in_dialect(warehouse, sql)}").iloc[:, 0])
            for name, sql in statements.items()
        }
        indexes = warehouse.query(f"SELECT indexname FROM pg_indexes WHERE tablename = '{store.ledger.name}'")
    assert list(indexes["indexname"]) == ["meter_event_ledger_run_id_identifier"]
    for name, plan_text in plans.items():
        assert "meter_event_ledger_run_id_identifier" in plan_text, f"the {name} does not use the index:\n{plan_text}"
