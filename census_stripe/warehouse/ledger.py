"""The meter event ledger: which usage events Stripe has accepted, kept next to the state tables.

Stripe deduplicates a meter event's identifier for 24 hours only; the ledger makes "send each event
once" hold for ever. One row per Stripe account and event (`event_key`, a digest of the event name
and the row's identity values: plan/meter_events.py), naming the sync that sent it last, with what
was sent and two moments:

- `attempted_at` NULL: queued by a run, never sent (or sent only to be answered 429). A later run
  queues it again from the model.
- `attempted_at` set, `accepted_at` NULL: in doubt. Marked right before its request was sent, so the
  request may have reached Stripe (the run died, or the answer was lost). Within Stripe's 24 hours
  it is sent again under the same identifier, which Stripe drops if it has it; after that it is
  reported, never sent blindly.
- `accepted_at` set: Stripe has it. Never sent again; a changed value is reported (or corrected).
- `cancel_identifier` set: a correction under way. The revision Stripe counts is to be cancelled
  (`cancel_sent_at`: its cancel may have been sent); the row's identifier and value are the next
  revision's, sent only once the cancel is done (`cancelled`).

Every mark is its own transaction, committed before the request that depends on it; a chunk is
settled in one, its events Stripe did not accept staged in `meter_event_outcomes`.

Rows written before the key left out the sync's name have `key_scheme` NULL and that sync's older
key: a run of the sync finds them under it, and gives them the event's key (`adopt_legacy`), keeping
the identifier Stripe has them under.

All statements are written in DuckDB's SQL and translated by sqlglot for the other warehouses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

import sqlglot

from census_stripe.warehouse.base import Relation, Warehouse, literal
from census_stripe.warehouse.state import ensure_table

LEDGER_COLUMNS = {
    "sync_name": "text",
    "stripe_account": "text",
    "event_key": "text",  # digest of the event name and the row's identity: the event, whatever its revision
    "identifier": "text",  # what Stripe was sent: event_key, or event_key-r<n> after n corrections
    "revision": "integer",
    "event_name": "text",
    "stripe_customer_id": "text",
    "value": "text",
    "event_time": "timestamp",
    "run_id": "text",
    "attempted_at": "timestamp",
    "accepted_at": "timestamp",
    "key_scheme": "integer",  # KEY_SCHEME; NULL: the sync's name and the identity cast to text (legacy)
    # A correction under way (`correct_changed`): the revision Stripe counts until it is cancelled.
    "cancel_identifier": "text",
    "cancel_value": "text",
    "cancel_attempted_at": "timestamp",  # when that revision was first sent: cancellable for 24 hours after
    "cancel_sent_at": "timestamp",  # the cancel's request may have left
}
KEY_SCHEME = 2
# Per run, the events of a chunk Stripe did not accept, while the chunk is settled (`settle`).
OUTCOME_COLUMNS = {"run_id": "text", "identifier": "text", "outcome": "text"}
OUTCOME_ROWS_PER_INSERT = 500
# The rows the plan finds an event's fate in: maybe in Stripe, or a correction's new revision.
IN_STRIPE_OR_CORRECTING = "(attempted_at IS NOT NULL OR revision > 0)"
# A row queued and never sent, which no correction left behind: the model plans it again.
UNSENT_EVENT = "attempted_at IS NULL AND revision = 0 AND cancel_identifier IS NULL"
RUN_EVENTS_INDEX = ("run_id", "identifier")
SEND_COLUMNS = ("identifier", "event_name", "stripe_customer_id", "value", "event_time")


def in_dialect(warehouse: Warehouse, duckdb_sql: str) -> str:
    """A statement written in DuckDB's SQL, for `warehouse`. Every identifier is quoted, as the state
    tables' columns were created: lower case is then lower case on Snowflake too, and the model's
    columns are named as the warehouse stores them (`Warehouse.model_identifier`). DuckDB's own
    statements go as written: its identifiers match whatever their case or quotes, and sqlglot's
    parse would cost each ledger mark a third of a millisecond on the sender's event loop."""
    if warehouse.dialect == "duckdb":
        return duckdb_sql
    return sqlglot.transpile(duckdb_sql, read="duckdb", write=warehouse.dialect, identify=True)[0]


def _text(value: str) -> str:
    return literal(value).sql("duckdb")


def _moment(value: datetime) -> str:
    return literal(value).sql("duckdb")


@dataclass(frozen=True)
class MeterEventLedger:
    warehouse: Warehouse
    table: Relation
    sync_name: str
    account: str

    @property
    def outcomes(self) -> Relation:
        return Relation(self.table.schema, "meter_event_outcomes", self.table.database)

    @property
    def name(self) -> str:
        return self.table.table().sql("duckdb")

    def _sql(self, duckdb_sql: str) -> str:
        return in_dialect(self.warehouse, duckdb_sql)

    def _execute(self, *duckdb_sql: str) -> None:
        self.warehouse.execute(*map(self._sql, duckdb_sql))

    @property
    def of_sync(self) -> str:
        return f"sync_name = {_text(self.sync_name)} AND stripe_account = {_text(self.account)}"

    @property
    def of_account(self) -> str:
        return f"stripe_account = {_text(self.account)}"

    def ensure_table(self) -> None:
        ensure_table(self.warehouse, self.table, LEDGER_COLUMNS)
        ensure_table(self.warehouse, self.outcomes, OUTCOME_COLUMNS)
        # A run's reads, marks and settles select its events by identifier range: on a warehouse
        # with indexes they then read that range, not the whole ledger, which only grows.
        self.warehouse.ensure_index(self.table, RUN_EVENTS_INDEX)

    def has_legacy(self) -> bool:
        """Whether this sync has rows under the key of an earlier version."""
        found = self.warehouse.query(
            self._sql(f"SELECT event_key FROM {self.name} WHERE {self.of_sync} AND key_scheme IS NULL LIMIT 1")
        )
        return not found.empty

    def adopt_legacy(self, pairs_sql: str) -> None:
        """File this sync's legacy rows under their events' keys (`pairs_sql`: columns event_key,
        legacy_key), in one statement. Their identifiers stay: Stripe has them under those."""
        self._execute(
            f"UPDATE {self.name} SET event_key = adopted_key, key_scheme = {KEY_SCHEME} "
            f"FROM (SELECT event_key AS adopted_key, legacy_key FROM ({pairs_sql}) AS found) AS pairs "
            f"WHERE event_key = legacy_key AND {self.of_sync} AND key_scheme IS NULL"
        )

    def drop_queued(self) -> None:
        """Events a run queued and never sent: the model says again what to send."""
        self._execute(f"DELETE FROM {self.name} WHERE {self.of_sync} AND {UNSENT_EVENT}")

    def queue(self, new_events_sql: str, run_id: str) -> None:
        """Queue the events `new_events_sql` selects (columns event_key, event_name, stripe_customer_id,
        value, event_time), in one statement, inside the warehouse. In identifier order: a mark or
        a settle of a range of identifiers then touches the storage blocks holding that range only
        (DuckDB's zone maps, Snowflake's micro-partitions), however large the ledger has grown."""
        self._execute(
            f"INSERT INTO {self.name} (sync_name, stripe_account, event_key, identifier, revision, event_name, "
            "stripe_customer_id, value, event_time, run_id, key_scheme) "
            f"SELECT {_text(self.sync_name)}, {_text(self.account)}, event_key, event_key, 0, event_name, "
            f"stripe_customer_id, value, event_time, {_text(run_id)}, {KEY_SCHEME} "
            f"FROM ({new_events_sql}) AS new_events ORDER BY event_key"
        )

    def claim(self, event_keys_sql: str, run_id: str) -> None:
        """Make this run the sender of the events `event_keys_sql` selects (in doubt, to send again, or
        a correction under way, to finish), whichever sync sent them first (the same one, before it
        was renamed)."""
        self._execute(
            f"UPDATE {self.name} SET sync_name = {_text(self.sync_name)}, run_id = {_text(run_id)} "
            f"WHERE {self.of_account} AND {IN_STRIPE_OR_CORRECTING} AND event_key IN ({event_keys_sql})"
        )

    def intend_corrections(self, corrections_sql: str, run_id: str, sent_after: datetime) -> None:
        """Record, before any cancel is sent, the corrections of the accepted events `corrections_sql`
        selects (columns event_key, value) first sent after `sent_after`: the revision Stripe counts
        becomes the one to cancel (`cancel_identifier`, its value and first attempt), and the new value
        is queued under the next identifier, to be sent once the cancel is done (`cancelled`)."""
        self._execute(
            f"UPDATE {self.name} SET revision = revision + 1, "
            "identifier = corrected_key || '-r' || CAST(revision + 1 AS VARCHAR), "
            "cancel_identifier = identifier, cancel_value = value, cancel_attempted_at = attempted_at, "
            f"cancel_sent_at = NULL, value = corrected_value, sync_name = {_text(self.sync_name)}, "
            f"run_id = {_text(run_id)}, attempted_at = NULL, accepted_at = NULL "
            "FROM (SELECT event_key AS corrected_key, value AS corrected_value "
            f"FROM ({corrections_sql}) AS chosen) AS corrections "
            f"WHERE event_key = corrected_key AND {self.of_account} AND accepted_at IS NOT NULL "
            f"AND cancel_identifier IS NULL AND attempted_at > {_moment(sent_after)}"
        )

    def expire_corrections(self, sent_before: datetime) -> None:
        """Corrections whose cancel was never sent and no longer can be (the revision to cancel was
        first sent before `sent_before`): Stripe counts that revision, so the ledger says so again."""
        self._execute(
            f"UPDATE {self.name} SET revision = revision - 1, identifier = cancel_identifier, value = cancel_value, "
            "attempted_at = cancel_attempted_at, accepted_at = cancel_attempted_at, cancel_identifier = NULL, "
            "cancel_value = NULL, cancel_attempted_at = NULL "
            f"WHERE {self.of_account} AND cancel_identifier IS NOT NULL AND cancel_sent_at IS NULL "
            f"AND cancel_attempted_at <= {_moment(sent_before)}"
        )

    def pending_cancels(self, run_id: str, sent_after: datetime) -> dict[str, list]:
        """This run's corrections whose cancel Stripe can still take (event_key, event_name,
        cancel_identifier), read whole."""
        return self.warehouse.fetch_columns(
            self._sql(
                f"SELECT event_key, event_name, cancel_identifier FROM {self.name} WHERE {self.of_sync} "
                f"AND run_id = {_text(run_id)} AND cancel_identifier IS NOT NULL "
                f"AND cancel_attempted_at > {_moment(sent_after)} ORDER BY event_key"
            )
        )

    def _correction(self, event_key: str) -> str:
        return f"{self.of_account} AND event_key = {_text(event_key)} AND cancel_identifier IS NOT NULL"

    def cancel_sending(self, event_key: str, now: datetime) -> None:
        """Right before the cancel's request: from now on Stripe may have cancelled the revision."""
        self._execute(
            f"UPDATE {self.name} SET cancel_sent_at = COALESCE(cancel_sent_at, {_moment(now)}) "
            f"WHERE {self._correction(event_key)}"
        )

    def cancelled(self, event_key: str) -> None:
        """Stripe counts nothing under the former revision: its new value is free to send."""
        self._execute(
            f"UPDATE {self.name} SET cancel_identifier = NULL, cancel_value = NULL, cancel_attempted_at = NULL, "
            f"cancel_sent_at = NULL WHERE {self._correction(event_key)}"
        )

    def _to_send(self, run_id: str) -> str:
        return f"{self.of_sync} AND run_id = {_text(run_id)} AND accepted_at IS NULL AND cancel_identifier IS NULL"

    def chunk_bounds_sql(self, run_id: str, chunk_rows: int) -> str:
        """Every `chunk_rows`-th identifier of the run's events to send: where each chunk ends."""
        return (
            "SELECT identifier FROM (SELECT identifier, ROW_NUMBER() OVER (ORDER BY identifier) AS position "
            f"FROM {self.name} WHERE {self._to_send(run_id)}) AS numbered "
            f"WHERE position % {int(chunk_rows)} = 0 ORDER BY identifier"
        )

    def chunk_sql(self, run_id: str, after: str | None, until: str | None) -> str:
        """The run's events to send after identifier `after` up to `until` (either open if None)."""
        above = "" if after is None else f" AND identifier > {_text(after)}"
        below = "" if until is None else f" AND identifier <= {_text(until)}"
        return (
            f"SELECT {', '.join(SEND_COLUMNS)}, attempted_at IS NOT NULL AS resent FROM {self.name} "
            f"WHERE {self._to_send(run_id)}{above}{below} ORDER BY identifier"
        )

    def to_send(self, run_id: str, chunk_rows: int) -> Iterator[dict[str, list]]:
        """The run's events to send, in identifier order, a chunk of columns at a time. The chunks'
        bounds are found first, in one query; each chunk is then read whole, one query of its own
        that reads its range only (paging with LIMIT would read all the rows left each time). No
        read stays open while the ledger is written (on PostgreSQL a cursor held open would make
        every mark a savepoint of the read's transaction, committed only when the read ends).
        `resent`: an earlier run attempted the event."""
        bounds = self.warehouse.fetch_columns(self._sql(self.chunk_bounds_sql(run_id, chunk_rows)))["identifier"]
        after = None
        for until in [*bounds, None]:
            chunk = self.warehouse.fetch_columns(self._sql(self.chunk_sql(run_id, after, until)))
            if chunk["identifier"]:
                yield chunk
            after = until

    def _range(self, run_id: str, first: str, last: str) -> str:
        """The run's events from `first` to `last`, as `to_send` read them: a correction waiting on
        its cancel is among them by identifier, never by what is sent."""
        return (
            f"{self.of_sync} AND run_id = {_text(run_id)} AND identifier BETWEEN {_text(first)} AND {_text(last)} "
            "AND cancel_identifier IS NULL"
        )

    def mark_attempted(self, run_id: str, first: str, last: str, now: datetime) -> None:
        """Right before the requests carrying events `first` to `last` are sent: from now on they may
        be in Stripe. An event in doubt keeps the moment of its first attempt."""
        self._execute(self.mark_sql(run_id, first, last, now))

    def mark_sql(self, run_id: str, first: str, last: str, now: datetime) -> str:
        return (
            f"UPDATE {self.name} SET attempted_at = {_moment(now)} WHERE {self._range(run_id, first, last)} "
            "AND attempted_at IS NULL"
        )

    def _outcomes(self, run_id: str, outcome: str | None = None) -> str:
        which = f" AND outcome = {_text(outcome)}" if outcome else ""
        return f"SELECT identifier FROM {self.outcomes.table().sql('duckdb')} WHERE run_id = {_text(run_id)}{which}"

    def settle(self, run_id: str, first: str, last: str, now: datetime, open_events: Iterable[tuple[str, str]]) -> None:
        """After a chunk, in one transaction: every attempted event from `first` to `last` but those
        of `open_events` (identifier, outcome: refused, in_doubt or unsent) is accepted; refused ones
        (Stripe has none of them) leave the ledger, to be sent again once the model is fixed; unsent
        ones are no longer attempted; in doubt ones stay so. The open ones go through the outcomes
        table in inserts of OUTCOME_ROWS_PER_INSERT rows, so that no statement grows with the chunk."""
        rows = sorted(set(open_events))
        statements = [
            f"INSERT INTO {self.outcomes.table().sql('duckdb')} (run_id, identifier, outcome) VALUES "
            + ", ".join(f"({_text(run_id)}, {_text(identifier)}, {_text(outcome)})" for identifier, outcome in part)
            for part in (
                rows[start : start + OUTCOME_ROWS_PER_INSERT] for start in range(0, len(rows), OUTCOME_ROWS_PER_INSERT)
            )
        ]
        settled = f"{self.of_sync} AND run_id = {_text(run_id)}"
        statements.append(
            f"UPDATE {self.name} SET accepted_at = {_moment(now)} WHERE {self._range(run_id, first, last)} "
            f"AND attempted_at IS NOT NULL AND accepted_at IS NULL AND identifier NOT IN ({self._outcomes(run_id)})"
        )
        if rows:
            statements += [
                f"DELETE FROM {self.name} WHERE {settled} AND identifier IN ({self._outcomes(run_id, 'refused')})",
                f"UPDATE {self.name} SET attempted_at = NULL "
                f"WHERE {settled} AND identifier IN ({self._outcomes(run_id, 'unsent')})",
                f"DELETE FROM {self.outcomes.table().sql('duckdb')} WHERE run_id = {_text(run_id)}",
            ]
        self._execute(*statements)

    def forget_unsent(self, run_id: str) -> None:
        """After a run: what it queued and never attempted is planned again from the model next time
        (a correction's new value stays queued: its former value is no longer in Stripe)."""
        self._execute(f"DELETE FROM {self.name} WHERE {self.of_sync} AND run_id = {_text(run_id)} AND {UNSENT_EVENT}")
