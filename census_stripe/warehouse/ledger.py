"""The meter event ledger: which usage events Stripe has accepted, kept next to the state tables.

Stripe deduplicates a meter event's identifier for 24 hours only; the ledger makes "send each event
once" hold for ever. One row per Stripe account and event (`event_key`, a digest of the event name
and the row's identity values: plan/meter_events.py), naming the sync that sent it last, with what
was sent and two moments:

- `attempted_at` NULL: queued by a run, never sent. A later run queues it again from the model.
- `attempted_at` set, `accepted_at` NULL: in doubt. The request may have reached Stripe (the run
  died, or the answer was lost). Within Stripe's 24 hours it is sent again under the same
  identifier, which Stripe drops if it has it; after that it is reported, never sent blindly.
- `accepted_at` set: Stripe has it. Never sent again; a changed value is reported (or corrected).

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
}
KEY_SCHEME = 2
SEND_COLUMNS = ("identifier", "event_name", "stripe_customer_id", "value", "event_time")


def in_dialect(warehouse: Warehouse, duckdb_sql: str) -> str:
    """A statement written in DuckDB's SQL, for `warehouse`. Every identifier is quoted, as the state
    tables' columns were created: lower case is then lower case on Snowflake too, and the model's
    columns are named as the warehouse stores them (`Warehouse.model_identifier`)."""
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
        self._execute(f"DELETE FROM {self.name} WHERE {self.of_sync} AND attempted_at IS NULL")

    def queue(self, new_events_sql: str, run_id: str) -> None:
        """Queue the events `new_events_sql` selects (columns event_key, event_name, stripe_customer_id,
        value, event_time), in one statement, inside the warehouse."""
        self._execute(
            f"INSERT INTO {self.name} (sync_name, stripe_account, event_key, identifier, revision, event_name, "
            "stripe_customer_id, value, event_time, run_id, key_scheme) "
            f"SELECT {_text(self.sync_name)}, {_text(self.account)}, event_key, event_key, 0, event_name, "
            f"stripe_customer_id, value, event_time, {_text(run_id)}, {KEY_SCHEME} "
            f"FROM ({new_events_sql}) AS new_events"
        )

    def claim(self, event_keys_sql: str, run_id: str) -> None:
        """Make this run the sender of the events `event_keys_sql` selects (in doubt, to send again),
        whichever sync sent them first (the same one, before it was renamed)."""
        self._execute(
            f"UPDATE {self.name} SET sync_name = {_text(self.sync_name)}, run_id = {_text(run_id)} "
            f"WHERE {self.of_account} AND attempted_at IS NOT NULL AND event_key IN ({event_keys_sql})"
        )

    def revise(self, corrections_sql: str, run_id: str) -> None:
        """Queue the new values of corrected events (columns event_key, value) under their next identifier."""
        self._execute(
            f"UPDATE {self.name} SET revision = revision + 1, "
            "identifier = corrected_key || '-r' || CAST(revision + 1 AS VARCHAR), "
            f"value = corrected_value, sync_name = {_text(self.sync_name)}, run_id = {_text(run_id)}, "
            "attempted_at = NULL, accepted_at = NULL "
            "FROM (SELECT event_key AS corrected_key, value AS corrected_value "
            f"FROM ({corrections_sql}) AS chosen) AS corrections "
            f"WHERE event_key = corrected_key AND {self.of_account} AND accepted_at IS NOT NULL"
        )

    def to_send(self, run_id: str, chunk_rows: int) -> Iterator[dict[str, list]]:
        """The run's events not yet accepted, in identifier order, a chunk of columns at a time."""
        query = (
            f"SELECT {', '.join(SEND_COLUMNS)} FROM {self.name} WHERE {self.of_sync} "
            f"AND run_id = {_text(run_id)} AND accepted_at IS NULL ORDER BY identifier"
        )
        return self.warehouse.query_columns(self._sql(query), chunk_rows)

    def _range(self, run_id: str, first: str, last: str) -> str:
        return f"{self.of_sync} AND run_id = {_text(run_id)} AND identifier BETWEEN {_text(first)} AND {_text(last)}"

    def mark_attempted(self, run_id: str, first: str, last: str, now: datetime) -> None:
        """Before a chunk is sent: from now on its events may be in Stripe."""
        self._execute(
            f"UPDATE {self.name} SET attempted_at = {_moment(now)} WHERE {self._range(run_id, first, last)} "
            "AND attempted_at IS NULL"
        )

    def settle(
        self, run_id: str, first: str, last: str, now: datetime, not_accepted: Iterable[str], refused: Iterable[str]
    ) -> None:
        """After a chunk: every event but `not_accepted` is accepted; `refused` ones (Stripe said no,
        so it has none of them) leave the ledger, to be sent again once the model is fixed."""
        open_ones, refused = sorted(set(not_accepted)), sorted(set(refused))
        excluded = f" AND identifier NOT IN ({', '.join(map(_text, open_ones))})" if open_ones else ""
        statements = [
            f"UPDATE {self.name} SET accepted_at = {_moment(now)} WHERE {self._range(run_id, first, last)} "
            f"AND accepted_at IS NULL{excluded}"
        ]
        if refused:
            statements.append(
                f"DELETE FROM {self.name} WHERE {self.of_sync} AND identifier IN ({', '.join(map(_text, refused))})"
            )
        self._execute(*statements)

    def forget_unsent(self, run_id: str) -> None:
        """After a run that stopped early: what it queued and never attempted is queued again next time."""
        self._execute(
            f"DELETE FROM {self.name} WHERE {self.of_sync} AND run_id = {_text(run_id)} AND attempted_at IS NULL"
        )
