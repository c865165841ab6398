"""The sync's record in the warehouse, next to the models it reads.

`sync_state` has one row per sync, Stripe account and key: the Stripe customer id (the writeback
analysts join onto their models), the hash and values of the row Stripe last accepted, when and by
which run, and the last status and error. A Stripe id means nothing in another account (or in the
other mode of the same account), so every row names its account, and a run reads only its own
account's rows. `sync_rejections` keeps every run's rejected and failed rows with their reasons.
`sync_changes` keeps every run's whole plan, one row per key the run did not leave unchanged,
for a number of days.
`stripe_accounts` remembers which account a (server, key) pair reaches, so a run need not ask.
`sync_row_counts` keeps, per sync and partition, the rows the model held at the last run that synced:
what `max_row_count_change` compares the next run with.
All are created on first use; creating them again is harmless.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from itertools import islice
from typing import TYPE_CHECKING

from sqlglot import exp

from census_stripe.stripe_client.values import StripeAccount
from census_stripe.warehouse.base import Relation, Warehouse, literal

if TYPE_CHECKING:
    import pandas as pd  # imported on use: loading the code location handles no rows

DEFAULT_SCHEMA = "census_stripe"

_STATE_COLUMNS = {
    "sync_name": "text",
    # `acct_.../test`; NULL on rows written before accounts were recorded, which no run reads.
    "stripe_account": "text",
    "customer_key": "text",
    "stripe_customer_id": "text",
    "row_hash": "text",
    "synced_values": "text",  # JSON: field -> value, as Stripe holds them after the last sync
    "synced_at": "timestamp",
    "status": "text",  # a StateStatus
    "error": "text",
    "run_id": "text",
    "updated_at": "timestamp",
}
_REJECTION_COLUMNS = {
    "run_id": "text",
    "sync_name": "text",
    "stripe_account": "text",
    "customer_key": "text",
    "key_value": "text",
    "kind": "text",  # rejected | failed
    "reason": "text",
    "row_values": "text",  # JSON of the values the row would have sent
    "recorded_at": "timestamp",
}
_ACCOUNT_COLUMNS = {
    "connection": "text",  # a digest of the API base and key (StripeObjects.connection_fingerprint)
    "account_id": "text",
    "livemode": "boolean",
    "identified_at": "timestamp",
}
STATE_KEY = ("sync_name", "stripe_account", "customer_key")
_ROW_COUNT_COLUMNS = {
    "sync_name": "text",
    "scope": "text",  # WHOLE_MODEL, or the partition's rows in words (ModelSlice.label)
    "rows_read": "bigint",
    "run_id": "text",
    "recorded_at": "timestamp",
}
ROW_COUNT_KEY = ("sync_name", "scope")
WHOLE_MODEL = "whole model"
# Unchanged keys are not listed: a no-op rerun of a large model then writes nothing here.
_CHANGE_COLUMNS = {
    "run_id": "text",
    "sync_name": "text",
    "stripe_account": "text",
    "customer_key": "text",
    "key_value": "text",
    # create | update | reject | skip_not_found | skip_existing | new_version | archive
    "action": "text",
    "stripe_customer_id": "text",
    "changes": "text",  # JSON: field -> {"before": ..., "after": ...}, only the fields that differ
    # created | updated | new_version | archived | failed | planned (dry run) | rejected | not_found | existing
    "outcome": "text",
    "reason": "text",  # why a row was rejected or skipped, or Stripe's message for a failed write
    "dry_run": "boolean",
    "recorded_at": "timestamp",
}
CHANGES_PER_WRITE = 10_000
KEYS_PER_UPDATE = 1_000


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class StateStatus(str, Enum):
    """How a key's last run ended; stored as its text."""

    SYNCED = "synced"
    FAILED = "failed"
    REJECTED = "rejected"
    NOT_FOUND = "not_found"
    EXISTING = "existing"  # Create Only found it in Stripe already, and left it alone
    ARCHIVED = "archived"  # its key left the model, and the object was archived


# A key filed with one of these has its object's id and the hash of the row Stripe accepted.
WRITTEN_STATUSES = (StateStatus.SYNCED, StateStatus.EXISTING)


@dataclass(frozen=True)
class StateRecord:
    """One key's state after a run."""

    customer_key: str
    stripe_customer_id: str | None
    row_hash: str | None
    synced_values: dict | None
    synced_at: datetime | None
    status: StateStatus
    error: str | None


@dataclass(frozen=True)
class Rejection:
    customer_key: str | None
    key_value: str | None
    kind: str
    reason: str | None
    row_values: dict


@dataclass(frozen=True)
class ChangeRecord:
    """What one run planned, and did, for one key."""

    customer_key: str | None
    key_value: str | None
    action: str
    stripe_customer_id: str | None
    changes: dict[str, dict[str, str | None]] | None
    outcome: str
    reason: str | None


@dataclass(frozen=True)
class RunRecord:
    """Who wrote a run's changes, and where to."""

    sync_name: str
    run_id: str
    dry_run: bool
    stripe_account: str | None
    keep_days: int


def _create_table(table: Relation, columns: dict[str, str]) -> exp.Create:
    definitions = [
        exp.ColumnDef(this=exp.to_identifier(name, quoted=True), kind=exp.DataType.build(kind))
        for name, kind in columns.items()
    ]
    return exp.Create(this=exp.Schema(this=table.table(), expressions=definitions), kind="TABLE", exists=True)


def _add_column(table: Relation, name: str, kind: str) -> exp.Alter:
    column = exp.ColumnDef(this=exp.to_identifier(name, quoted=True), kind=exp.DataType.build(kind))
    return exp.Alter(this=table.table(), kind="TABLE", actions=[column])


def ensure_table(warehouse: Warehouse, table: Relation, columns: dict[str, str]) -> None:
    """Create `table`, or add the columns a newer version brought to it. Safe to rerun."""
    dialect = warehouse.dialect
    warehouse.execute_ddl(_create_table(table, columns).sql(dialect))
    existing = {name.lower() for name in warehouse.table_columns(table)}
    if missing := [name for name in columns if name not in existing]:
        warehouse.execute_ddl(*(_add_column(table, name, columns[name]).sql(dialect) for name in missing))


class SyncStateStore:
    """Reads and writes the state tables of one schema."""

    def __init__(self, warehouse: Warehouse, schema: str = DEFAULT_SCHEMA):
        self.warehouse = warehouse
        self.state = Relation(schema, "sync_state")
        self.rejections = Relation(schema, "sync_rejections")
        self.accounts = Relation(schema, "stripe_accounts")
        self.changes = Relation(schema, "sync_changes")
        self.row_counts = Relation(schema, "sync_row_counts")
        self.ledger = Relation(schema, "meter_event_ledger")  # meter event syncs' (warehouse/ledger.py)

    def ensure_tables(self) -> None:
        """Create the schema and tables, and add any column a newer version brought. Safe to rerun."""
        schema = exp.Create(
            this=exp.Table(db=exp.to_identifier(self.state.schema, quoted=True)), kind="SCHEMA", exists=True
        )
        dialect = self.warehouse.dialect
        tables = (
            (self.state, _STATE_COLUMNS),
            (self.rejections, _REJECTION_COLUMNS),
            (self.accounts, _ACCOUNT_COLUMNS),
            (self.changes, _CHANGE_COLUMNS),
            (self.row_counts, _ROW_COUNT_COLUMNS),
        )
        self.warehouse.execute_ddl(schema.sql(dialect))
        for table, columns in tables:
            ensure_table(self.warehouse, table, columns)

    def account(self, connection: str, identify: Callable[[], StripeAccount]) -> StripeAccount:
        """The account a (server, key) pair reaches: remembered, or identified once by `identify`."""
        query = (
            exp.select("account_id", "livemode")
            .from_(self.accounts.table())
            .where(exp.column("connection", quoted=True).eq(exp.Literal.string(connection)))
        )
        known = self.warehouse.query(query.sql(self.warehouse.dialect))
        if len(known):
            return StripeAccount(str(known.iloc[0, 0]), bool(known.iloc[0, 1]))
        account = identify()
        row = {"connection": connection, "account_id": account.id, "livemode": account.livemode}
        self.warehouse.replace_rows(
            self.accounts, _frame([row | {"identified_at": utc_now()}], _ACCOUNT_COLUMNS), ("connection",)
        )
        return account

    def save(self, sync_name: str, account: str, run_id: str, records: Iterable[StateRecord]) -> None:
        now = utc_now()
        # One row per key: the copies of a duplicated key share a single verdict.
        records = {r.customer_key: r for r in records}.values()
        rows = [
            {
                "sync_name": sync_name,
                "stripe_account": account,
                "customer_key": r.customer_key,
                "stripe_customer_id": r.stripe_customer_id,
                "row_hash": r.row_hash,
                "synced_values": json.dumps(r.synced_values, sort_keys=True) if r.synced_values is not None else None,
                "synced_at": r.synced_at,
                "status": r.status.value,
                "error": r.error,
                "run_id": run_id,
                "updated_at": now,
            }
            for r in records
        ]
        if rows:
            self.warehouse.replace_rows(self.state, _frame(rows, _STATE_COLUMNS), STATE_KEY)

    def refile(self, sync_name: str, account: str, new_keys: Mapping[str, str]) -> None:
        """File state rows under new keys (former key -> new key), all in one transaction."""
        key = exp.column("customer_key", quoted=True)
        pairs = sorted(new_keys.items())
        statements = []
        for start in range(0, len(pairs), KEYS_PER_UPDATE):
            batch = pairs[start : start + KEYS_PER_UPDATE]
            new_key = exp.Case(
                ifs=[
                    exp.If(this=key.eq(exp.Literal.string(former)), true=exp.Literal.string(new))
                    for former, new in batch
                ]
            )
            formers = exp.In(this=key.copy(), expressions=[exp.Literal.string(former) for former, _ in batch])
            update = exp.update(
                self.state.table(), {"customer_key": new_key}, where=exp.and_(of_sync(sync_name, account), formers)
            )
            statements.append(update.sql(self.warehouse.dialect))
        self.warehouse.execute(*statements)

    def record_rejections(self, sync_name: str, account: str, run_id: str, rejections: Iterable[Rejection]) -> None:
        now = utc_now()
        rows = [
            {
                "run_id": run_id,
                "sync_name": sync_name,
                "stripe_account": account,
                "customer_key": r.customer_key,
                "key_value": r.key_value,
                "kind": r.kind,
                "reason": r.reason,
                "row_values": json.dumps(r.row_values, sort_keys=True),
                "recorded_at": now,
            }
            for r in rejections
        ]
        if rows:
            self.warehouse.append_rows(self.rejections, _frame(rows, _REJECTION_COLUMNS))

    def record_changes(self, run: RunRecord, changes: Iterable[ChangeRecord]) -> None:
        """Append a run's changes in batches; first drop this sync's changes older than it keeps."""
        changes = iter(changes)
        batch = list(islice(changes, CHANGES_PER_WRITE))
        if not batch:
            return
        now = utc_now()
        expired = exp.and_(
            exp.column("sync_name", quoted=True).eq(exp.Literal.string(run.sync_name)),
            exp.column("recorded_at", quoted=True) < literal(now - timedelta(days=run.keep_days)),
        )
        self.warehouse.execute(exp.delete(self.changes.table(), where=expired).sql(self.warehouse.dialect))
        while batch:
            rows = [
                {
                    "run_id": run.run_id,
                    "sync_name": run.sync_name,
                    "stripe_account": run.stripe_account,
                    "customer_key": c.customer_key,
                    "key_value": c.key_value,
                    "action": c.action,
                    "stripe_customer_id": c.stripe_customer_id,
                    "changes": json.dumps(c.changes, sort_keys=True) if c.changes is not None else None,
                    "outcome": c.outcome,
                    "reason": c.reason,
                    "dry_run": run.dry_run,
                    "recorded_at": now,
                }
                for c in batch
            ]
            self.warehouse.append_rows(self.changes, _frame(rows, _CHANGE_COLUMNS))
            batch = list(islice(changes, CHANGES_PER_WRITE))

    def changes_query(self, run_id: str) -> str:
        """The SQL that reads one run's changes back."""
        condition = exp.column("run_id", quoted=True).eq(exp.Literal.string(run_id))
        return exp.select("*").from_(self.changes.table()).where(condition).sql(self.warehouse.dialect)

    def last_row_count(self, sync_name: str, scope: str) -> int | None:
        """The rows the model (or partition) held at the sync's last run that synced; None before one."""
        condition = exp.and_(
            exp.column("sync_name", quoted=True).eq(exp.Literal.string(sync_name)),
            exp.column("scope", quoted=True).eq(exp.Literal.string(scope)),
        )
        query = exp.select(exp.column("rows_read", quoted=True)).from_(self.row_counts.table()).where(condition)
        rows = self.warehouse.query(query.sql(self.warehouse.dialect))
        return int(rows.iloc[0, 0]) if len(rows) else None

    def record_row_count(self, sync_name: str, scope: str, rows_read: int, run_id: str) -> None:
        row = {"sync_name": sync_name, "scope": scope, "rows_read": rows_read, "run_id": run_id}
        frame = _frame([row | {"recorded_at": utc_now()}], _ROW_COUNT_COLUMNS)
        self.warehouse.replace_rows(self.row_counts, frame, ROW_COUNT_KEY)

    def known_customers(self, sync_name: str, account: str) -> int:
        """How many Stripe customers this sync has an id for in the account: a floor on its size."""
        known = exp.Count(this=exp.column("stripe_customer_id", quoted=True))
        query = exp.select(known).from_(self.state.table()).where(of_sync(sync_name, account))
        return int(self.warehouse.query(query.sql(self.warehouse.dialect)).iloc[0, 0])

    def stripe_ids(self, sync_name: str, account: str) -> dict[str, str]:
        """Every key of a sync with its Stripe id in the account: how another sync refers to its
        objects. A key with several state rows (damaged state) is left out: which id is right is
        not known until that sync repairs its state."""
        key, stripe_id = exp.column("customer_key", quoted=True), exp.column("stripe_customer_id", quoted=True)
        one_row = exp.EQ(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(1))
        query = (
            exp.select(key, exp.Min(this=stripe_id))
            .from_(self.state.table())
            .where(of_sync(sync_name, account))
            .group_by(key.copy())
            .having(exp.and_(one_row, exp.Not(this=exp.Is(this=exp.Min(this=stripe_id.copy()), expression=exp.Null()))))
        )
        rows = self.warehouse.query(query.sql(self.warehouse.dialect))
        return dict(zip(rows.iloc[:, 0], rows.iloc[:, 1], strict=True))

    def drop_unbound(self, sync_name: str) -> int:
        """Delete this sync's rows written before accounts were recorded. They cannot be told apart
        from another account's, so no run trusts them; once a run has filed its own, they go."""
        condition = exp.and_(
            exp.column("sync_name", quoted=True).eq(exp.Literal.string(sync_name)),
            exp.column("stripe_account", quoted=True).is_(exp.Null()),
        )
        count = exp.select(exp.Count(this=exp.Star())).from_(self.state.table()).where(condition)
        unbound = int(self.warehouse.query(count.sql(self.warehouse.dialect)).iloc[0, 0])
        if unbound:
            self.warehouse.execute(exp.delete(self.state.table(), where=condition).sql(self.warehouse.dialect))
        return unbound

    def forget(self, sync_name: str) -> None:
        """Drop what this sync remembers, for when the Stripe account behind it was reset on purpose."""
        condition = exp.EQ(this=exp.column("sync_name", quoted=True), expression=exp.Literal.string(sync_name))
        self.warehouse.execute(exp.delete(self.state.table(), where=condition).sql(self.warehouse.dialect))


def of_sync(sync_name: str, account: str, table: str | None = None) -> exp.Condition:
    """The state rows of one sync in one Stripe account."""
    return exp.and_(
        exp.column("sync_name", table, quoted=True).eq(exp.Literal.string(sync_name)),
        exp.column("stripe_account", table, quoted=True).eq(exp.Literal.string(account)),
    )


def _frame(rows: list[dict], columns: dict[str, str]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(columns))
    for name, kind in columns.items():
        frame[name] = pd.to_datetime(frame[name]) if kind == "timestamp" else frame[name].astype(object)
    return frame
