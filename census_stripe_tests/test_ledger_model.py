"""The meter event ledger, checked as a model: runs of a sync (corrections on or off, lost answers,
429s) crashed at random ledger writes, the clock moved on, the model's values changed, in any order
hypothesis finds; after every step Stripe bills no event twice and whatever the ledger calls
accepted is in Stripe as the ledger says. Also: no ledger statement grows with a chunk, and the
ledger's SQL reads the same in every warehouse's dialect."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import pytest
import sqlglot
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from census_stripe.apply.meter_events import Chunk, DeliveryReport, deliver
from census_stripe.meter_sync import chunk_of, run_meter_event_sync
from census_stripe.plan.meter_events import CustomerSource
from census_stripe.stripe_client.meter_types import BatchOutcome, Delivery, MeterEvent
from census_stripe.stripe_client.meters import BillingMeter
from census_stripe.warehouse.base import Relation
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.ledger import OUTCOME_ROWS_PER_INSERT, MeterEventLedger
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.usage import ACCOUNT, meter_spec

DAY = timedelta(hours=24)
START = datetime(2026, 3, 10, 12, 0)
CUSTOMERS = ["cus_a", "cus_b", "cus_c"]
DAYS = 3


class Crash(Exception):
    """The process is killed: no write after it happens."""


class CrashingWarehouse(DuckDBWarehouse):
    """DuckDB that dies before its `crash_at`-th transaction, and stays dead until revived."""

    crash_at: int | None = None
    writes = 0
    dead = False

    def execute(self, *statements: str) -> None:
        self.writes += 1
        if self.dead or self.writes == self.crash_at:
            self.dead = True
            raise Crash
        super().execute(*statements)

    def fetch_columns(self, sql: str) -> dict[str, list]:
        if self.dead:
            raise Crash
        return super().fetch_columns(sql)


@dataclass
class Counted:
    received: datetime
    times: int
    value: str
    cancelled: bool = False


class FakeStripe:
    """Meter events as Stripe keeps them: an identifier counted within 24 hours is dropped, and
    counted again after; a cancel takes an event counted within 24 hours out. Each request takes
    the next fault: `429` (nothing done), `lost_before` (no answer, nothing done), `lost_after`
    (done, the answer lost)."""

    batch_size = 1
    calls = 0
    rate_limited = 0

    def __init__(self, clock: list[datetime]):
        self.clock = clock
        self.counted: dict[str, Counted] = {}
        self.faults: deque[str] = deque()

    def _fault(self) -> str:
        return self.faults.popleft() if self.faults else "ok"

    def _answer(self, fault: str, apply) -> BatchOutcome:
        if fault == "429":
            return BatchOutcome(Delivery.UNSENT, "429")
        if fault == "lost_before":
            return BatchOutcome(Delivery.IN_DOUBT, "500")
        outcome = apply()
        return BatchOutcome(Delivery.IN_DOUBT, "lost") if fault == "lost_after" else outcome

    async def send(self, events: list[MeterEvent]) -> BatchOutcome:
        [event] = events

        def count() -> BatchOutcome:
            now = self.clock[0]
            known = self.counted.get(event.identifier)
            if known is None or now - known.received >= DAY:
                self.counted[event.identifier] = Counted(now, (known.times if known else 0) + 1, event.value)
            return BatchOutcome(Delivery.ACCEPTED)

        return self._answer(self._fault(), count)

    async def cancel(self, event_name: str, identifier: str) -> BatchOutcome:
        def cancel() -> BatchOutcome:
            known = self.counted.get(identifier)
            if known is None or known.cancelled or self.clock[0] - known.received >= DAY:
                return BatchOutcome(Delivery.REFUSED, "nothing to cancel")
            known.cancelled = True
            return BatchOutcome(Delivery.ACCEPTED)

        return self._answer(self._fault(), cancel)

    async def meters(self) -> list[BillingMeter]:
        return [BillingMeter("mtr_1", "api_calls", "API calls", True, "stripe_customer_id", "value")]

    async def close(self) -> None:
        pass

    def live(self, identifier: str) -> int:
        """How many times Stripe bills this identifier now."""
        known = self.counted[identifier]
        return known.times - known.cancelled


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.clock = [START]
        self.connection = duckdb.connect()
        self.warehouse = CrashingWarehouse(self.connection)
        self.stripe = FakeStripe(self.clock)
        self.runs = 0
        rows = ", ".join(
            f"('{customer}', DATE '{(START - timedelta(days=ago)).date()}', 1)"
            for customer in CUSTOMERS
            for ago in range(1, DAYS + 1)
        )
        self.connection.execute(
            f"CREATE TABLE main.usage AS SELECT * FROM (VALUES {rows}) AS t(customer_id, day, calls)"
        )

    def teardown(self):
        self.connection.close()

    @rule(
        crash_at=st.one_of(st.none(), st.integers(1, 14)),
        faults=st.lists(st.sampled_from(["ok", "429", "lost_before", "lost_after"]), max_size=6),
        correct=st.booleans(),
    )
    def run(self, crash_at, faults, correct):
        self.runs += 1
        self.warehouse.crash_at, self.warehouse.writes, self.warehouse.dead = crash_at, 0, False
        self.stripe.faults = deque(faults)
        try:
            run_meter_event_sync(
                meter_spec("v1", correct, partitioned=False),
                model=Relation("main", "usage"),
                store=SyncStateStore(self.warehouse),
                api=lambda: self.stripe,
                account_of=lambda: ACCOUNT,
                customers=CustomerSource(),
                run_id=f"run-{self.runs}",
                concurrency=2,
                now=lambda: self.clock[0],
            )
        except Crash:
            pass
        self.warehouse.dead = False

    @rule(hours=st.sampled_from([1, 12, 25]))
    def wait(self, hours):
        self.clock[0] += timedelta(hours=hours)

    @rule(customer=st.sampled_from(CUSTOMERS), calls=st.integers(1, 4))
    def change(self, customer, calls):
        self.connection.execute("UPDATE main.usage SET calls = ? WHERE customer_id = ?", [calls, customer])

    @invariant()
    def no_event_is_billed_twice(self):
        billed: dict[str, int] = {}
        for identifier in self.stripe.counted:
            event = identifier.split("-r")[0]
            billed[event] = billed.get(event, 0) + self.stripe.live(identifier)
        assert all(times <= 1 for times in billed.values()), billed

    @invariant()
    def what_the_ledger_calls_accepted_stripe_bills(self):
        accepted = (
            self.connection.execute(
                "SELECT identifier, value FROM census_stripe.meter_event_ledger WHERE accepted_at IS NOT NULL "
                "AND cancel_identifier IS NULL"
            ).fetchall()
            if self._has_ledger()
            else []
        )
        for identifier, value in accepted:
            counted = self.stripe.counted.get(identifier)
            assert counted is not None and self.stripe.live(identifier) == 1, identifier
            assert counted.value == value

    def _has_ledger(self) -> bool:
        return bool(
            self.connection.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = 'census_stripe' "
                "AND table_name = 'meter_event_ledger'"
            ).fetchall()
        )


LedgerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=10,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.too_slow],
)
test_the_ledger_never_bills_twice_through_crashes_at_random_steps = LedgerMachine.TestCase


class Recording(DuckDBWarehouse):
    """DuckDB that keeps every statement it runs."""

    def __init__(self, connection):
        super().__init__(connection)
        self.statements: list[str] = []

    def execute(self, *statements: str) -> None:
        self.statements += statements
        super().execute(*statements)


class Unanswered:
    """Stripe answering nothing: every event of a chunk stays open, the most the settle must write."""

    batch_size = 100
    calls = rate_limited = 0

    async def send(self, events: list[MeterEvent]) -> BatchOutcome:
        return BatchOutcome(Delivery.IN_DOUBT, "no answer")


@pytest.mark.parametrize("events", [1_000, 5_000])
def test_no_ledger_statement_grows_with_the_chunk(events):
    """Marking and settling a chunk of `events`, all in doubt: every statement stays within the
    same size, whatever the chunk holds (Snowflake and BigQuery cap a statement's size)."""
    with duckdb.connect() as connection:
        warehouse = Recording(connection)
        ledger = MeterEventLedger(warehouse, Relation("census_stripe", "meter_event_ledger"), "usage", "acct")
        SyncStateStore(warehouse).ensure_tables()
        ledger.ensure_table()
        ledger.queue(
            f"SELECT md5(CAST(i AS TEXT)) AS event_key, 'api_calls' AS event_name, 'cus_a' AS stripe_customer_id, "
            f"'1' AS value, TIMESTAMP '{START}' AS event_time FROM range({events}) AS t(i)",
            "run",
        )
        warehouse.statements.clear()

        def mark(chunk: Chunk, start: int, end: int) -> None:
            ledger.mark_attempted("run", *chunk.identifiers(start, end), START)

        def settle(chunk: Chunk, open_events) -> None:
            first, last = chunk.identifiers(0, chunk.marked)
            ledger.settle("run", first, last, START, [(event.identifier, kind.value) for event, kind, _ in open_events])

        chunks = (chunk_of(columns, Unanswered.batch_size) for columns in ledger.to_send("run", events))
        report = DeliveryReport()
        asyncio.run(
            deliver(chunks, Unanswered(), concurrency=8, before_sending=mark, after_answers=settle, report=report)
        )
        assert report.in_doubt == events
        in_doubt = connection.execute(
            "SELECT count(*) FROM census_stripe.meter_event_ledger "
            "WHERE attempted_at IS NOT NULL AND accepted_at IS NULL"
        ).fetchone()[0]
    assert in_doubt == events
    longest = max(map(len, warehouse.statements))
    # The outcomes' inserts are the longest: OUTCOME_ROWS_PER_INSERT rows of about 60 characters.
    assert longest < OUTCOME_ROWS_PER_INSERT * 100, longest
    assert len(warehouse.statements) > events // OUTCOME_ROWS_PER_INSERT  # the inserts are split, not one


@pytest.mark.parametrize(("events", "sizes"), [(25, [10, 10, 5]), (20, [10, 10]), (3, [3]), (0, [])])
def test_a_run_reads_its_events_in_whole_chunks_in_identifier_order(events, sizes):
    """Each chunk is read between bounds found once: `chunk_rows` events each, the last one what is
    left, no empty chunk; every event once, in identifier order; another run's events never."""
    with duckdb.connect() as connection:
        warehouse = DuckDBWarehouse(connection)
        ledger = MeterEventLedger(warehouse, Relation("census_stripe", "meter_event_ledger"), "usage", "acct")
        SyncStateStore(warehouse).ensure_tables()
        ledger.ensure_table()
        for run, count in (("run", events), ("other", 7)):
            ledger.queue(
                f"SELECT md5('{run}' || i) AS event_key, 'api_calls' AS event_name, 'cus_a' AS stripe_customer_id, "
                f"'1' AS value, TIMESTAMP '{START}' AS event_time FROM range({count}) AS t(i)",
                run,
            )
        chunks = [columns["identifier"] for columns in ledger.to_send("run", 10)]
        queued = connection.execute(
            "SELECT identifier FROM census_stripe.meter_event_ledger WHERE run_id = 'run' ORDER BY identifier"
        ).fetchall()
    assert [len(chunk) for chunk in chunks] == sizes
    assert [identifier for chunk in chunks for identifier in chunk] == [identifier for (identifier,) in queued]


def ledger_statements() -> list[str]:
    """Every statement the ledger issues, in DuckDB's SQL, as it writes them."""
    captured: list[str] = []

    class Capturing(DuckDBWarehouse):
        def execute(self, *statements: str) -> None:
            captured.extend(statements)

        def fetch_columns(self, sql: str) -> dict[str, list]:
            captured.append(sql)
            # One identifier found each time: a chunk bound, then the chunks before and after it.
            return {"identifier": ["m"], "event_key": [], "event_name": [], "cancel_identifier": []}

    with duckdb.connect() as connection:
        ledger = MeterEventLedger(
            Capturing(connection), Relation("census_stripe", "meter_event_ledger"), "usage", "acct"
        )
        keys = "SELECT 'k' AS event_key, '2' AS value"
        ledger.drop_queued()
        ledger.expire_corrections(START)
        ledger.adopt_legacy("SELECT 'k' AS event_key, 'old' AS legacy_key")
        ledger.queue(
            "SELECT 'k' AS event_key, 'api_calls' AS event_name, 'cus_a' AS stripe_customer_id, '1' AS value, "
            f"TIMESTAMP '{START}' AS event_time",
            "run",
        )
        ledger.claim("SELECT 'k' AS event_key", "run")
        ledger.intend_corrections(keys, "run", START)
        ledger.pending_cancels("run", START)
        ledger.cancel_sending("k", START)
        ledger.cancelled("k")
        list(ledger.to_send("run", 10))
        ledger.mark_attempted("run", "a", "z", START)
        ledger.settle("run", "a", "z", START, [("b", "refused"), ("c", "unsent"), ("d", "in_doubt")])
        ledger.forget_unsent("run")
    return captured


@pytest.mark.parametrize("dialect", ["postgres", "redshift", "snowflake", "bigquery"])
def test_the_ledgers_statements_read_the_same_in_every_dialect(dialect):
    """Each statement, written for `dialect` and read back, is the statement DuckDB runs: sqlglot
    translates the ledger's SQL without losing a condition or a column on the way."""
    for statement in ledger_statements():
        written = sqlglot.transpile(statement, read="duckdb", write=dialect, identify=True)[0]
        back = sqlglot.transpile(written, read=dialect, write="duckdb", identify=True)[0]
        original = sqlglot.transpile(statement, read="duckdb", write="duckdb", identify=True)[0]
        assert _normal(back) == _normal(original), (dialect, statement, written)


def _normal(sql: str) -> str:
    """Differences that change nothing: the casts' spelling of text (Redshift's VARCHAR(MAX))."""
    return sql.replace("TEXT(MAX)", "VARCHAR").replace("TEXT", "VARCHAR")
