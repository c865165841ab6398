"""One run of one sync, end to end and without Dagster: warehouse -> plan -> apply -> state.

    report = run_sync(spec, model, SyncStateStore(warehouse), StripeCustomers(api_key), run_id="...")

The Dagster asset (census_stripe/defs/) only gathers these arguments and turns the report into
metadata; tests and benchmarks call this directly.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from itertools import chain

from census_stripe.apply.writer import Outcome, StripeWriter
from census_stripe.plan import sql
from census_stripe.plan.lookup import CustomerLookup
from census_stripe.plan.planner import Action, Plan, PlannedRow, build_plan
from census_stripe.plan.rows import candidates_from_chunk
from census_stripe.plan.sql import ModelSlice
from census_stripe.spec import SyncSpec
from census_stripe.stripe_api import StripeAccount, StripeCustomers
from census_stripe.warehouse.base import Relation, Warehouse
from census_stripe.warehouse.state import (
    ChangeRecord,
    Rejection,
    RunRecord,
    StateRecord,
    SyncStateStore,
    utc_now,
)

log = logging.getLogger(__name__)
CHUNK_ROWS = 10_000
STATUS_WITHOUT_WRITE = {Action.REJECT: "rejected", Action.SKIP_NOT_FOUND: "not_found"}


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    full_resync: bool = False
    # A partition: only these rows, and every one of them written again whatever Stripe holds.
    model_slice: ModelSlice | None = None

    @property
    def repush(self) -> bool:
        return self.model_slice is not None


@dataclass
class SyncReport:
    spec: SyncSpec
    options: RunOptions
    plan: Plan
    outcomes: list[Outcome] = field(default_factory=list)
    stripe_calls: dict[str, int] = field(default_factory=dict)
    rate_limited: int = 0  # 429s Stripe answered (each was retried)
    account: StripeAccount | None = None  # the account the run read and wrote
    changes_query: str | None = None  # SQL that reads the run's whole plan back from the warehouse

    @property
    def failure_rate(self) -> float:
        """Failed writes over attempted writes."""
        return sum(o.status == "failed" for o in self.outcomes) / len(self.outcomes) if self.outcomes else 0.0

    def counts(self) -> dict[str, int]:
        """Stable names: the UI plots each over runs."""
        planned = self.plan.counts()
        done = Counter(outcome.status for outcome in self.outcomes)
        return {
            "rows_read": self.plan.rows_read,
            "planned_creates": planned[Action.CREATE],
            "planned_updates": planned[Action.UPDATE],
            "unchanged": planned[Action.UNCHANGED],
            "rejected": planned[Action.REJECT],
            "skipped_not_found": planned[Action.SKIP_NOT_FOUND],
            "created": done["created"],
            "updated": done["updated"],
            "failed": done["failed"],
            "stripe_api_calls": sum(self.stripe_calls.values()),
            "stripe_lookup_calls": self.stripe_calls.get("list", 0),
            "stripe_duplicate_keys": sum(1 for row in self.plan.rows if row.stripe_duplicates),
            "stripe_rate_limited": self.rate_limited,
        }


def _synced(outcome_row: PlannedRow, stripe_id: str) -> StateRecord:
    candidate = outcome_row.candidate
    return StateRecord(candidate.key, stripe_id, candidate.row_hash, candidate.values, utc_now(), "synced", None)


def _kept(row: PlannedRow, status: str, error: str | None) -> StateRecord:
    """A key whose Stripe values did not change this run: keep what was last accepted, note why."""
    prior = row.candidate.prior
    return StateRecord(
        row.candidate.key,
        row.stripe_id or (prior.stripe_id if prior else None),
        prior.row_hash if prior else None,
        prior.synced_values if prior else None,
        prior.synced_at if prior else None,
        status,
        error,
    )


def state_after_outcome(outcome: Outcome) -> StateRecord:
    if outcome.status == "failed":
        return _kept(outcome.row, "failed", outcome.error)
    return _synced(outcome.row, outcome.stripe_id)


def state_without_write(row: PlannedRow) -> StateRecord | None:
    """State for rows decided without a Stripe write; None for a row with no key to file it under."""
    if row.candidate.key is None:
        return None
    if row.action is Action.UNCHANGED:
        return _synced(row, row.stripe_id)
    return _kept(row, STATUS_WITHOUT_WRITE[row.action], row.reason)


def _rejection(row: PlannedRow, kind: str, reason: str) -> Rejection:
    return Rejection(row.candidate.key, row.candidate.key_value, kind, reason, row.candidate.values)


def change_records(plan: Plan, outcomes: list[Outcome]) -> Iterator[ChangeRecord]:
    """Every row the run did not leave unchanged: what was planned for it and what became of it."""
    written = {id(outcome.row): outcome for outcome in outcomes}
    for row in plan.rows:
        if row.action is Action.UNCHANGED:
            continue
        if row.action in (Action.CREATE, Action.UPDATE):
            changes = {change.field: {"before": change.before, "after": change.after} for change in row.changes}
            outcome = written.get(id(row))
            stripe_id = (outcome and outcome.stripe_id) or row.stripe_id
            status, reason = (outcome.status, outcome.error) if outcome else ("planned", None)
        else:
            changes, stripe_id = None, row.stripe_id
            status, reason = STATUS_WITHOUT_WRITE[row.action], row.reason
        candidate = row.candidate
        yield ChangeRecord(candidate.key, candidate.key_value, row.action.value, stripe_id, changes, status, reason)


def as_stored(spec: SyncSpec, model: Relation, warehouse: Warehouse) -> tuple[SyncSpec, Relation]:
    """The sync's model and columns as the warehouse names what dbt created unquoted
    (Snowflake upper-cases them); unchanged elsewhere."""
    fold = warehouse.model_identifier
    data = spec.model_dump()
    data["key"]["column"] = fold(spec.key.column)
    data["mapping"] = {field: fold(column) for field, column in spec.mapping.items()}
    for setting, column in spec.other_columns.items():
        *parents, leaf = setting.split(".")
        target = data
        for parent in parents:
            target = target[parent]
        target[leaf] = fold(column)
    return SyncSpec.model_validate(data), Relation(fold(model.schema), fold(model.name), model.database)


def plan_sync(
    spec: SyncSpec, model: Relation, store: SyncStateStore, customers: StripeCustomers, options: RunOptions
) -> Plan:
    warehouse = store.warehouse
    store.ensure_tables()
    spec, model = as_stored(spec, model, warehouse)
    where = options.model_slice and replace(
        options.model_slice, column=warehouse.model_identifier(options.model_slice.column)
    )
    rows_read = int(warehouse.query(sql.row_count_query(model, warehouse.dialect, where)).iloc[0, 0])
    everything = options.full_resync or options.repush
    query = sql.changed_rows_query(spec, model, store.state, warehouse.dialect, everything, where)
    candidates = chain.from_iterable(
        candidates_from_chunk(spec, chunk) for chunk in warehouse.query_chunks(query, CHUNK_ROWS)
    )
    listed = list(customers.iter_all()) if options.full_resync else None
    lookup = CustomerLookup(customers, spec.key.field, spec.lookup, listed, store.known_customers(spec.name))
    live = {customer.id: customer for customer in listed} if listed is not None else None
    plan = build_plan(spec, candidates, rows_read, lookup, live, repush=options.repush)
    plan.lookup = lookup.used
    return plan


def run_sync(
    spec: SyncSpec,
    model: Relation,
    store: SyncStateStore,
    customers: StripeCustomers,
    run_id: str,
    options: RunOptions = RunOptions(),
    log: logging.Logger = log,
    concurrency: int = 16,
) -> SyncReport:
    plan = plan_sync(spec, model, store, customers, options)
    log.info("plan for %s: %s", spec.name, ", ".join(f"{a.value}={n}" for a, n in plan.counts().items()))
    report = SyncReport(spec, options, plan, changes_query=store.changes_query(run_id))
    if not options.dry_run:
        report.outcomes = _apply(spec, plan, store, customers, run_id, log, concurrency)
    report.stripe_calls = dict(customers.calls.counts)
    report.rate_limited = customers.calls.rate_limited
    account = report.account.id if report.account else None
    run = RunRecord(spec.name, run_id, options.dry_run, account, spec.keep_changes_days)
    store.record_changes(run, change_records(plan, report.outcomes))
    return report


def _apply(
    spec: SyncSpec,
    plan: Plan,
    store: SyncStateStore,
    customers: StripeCustomers,
    run_id: str,
    log: logging.Logger,
    concurrency: int,
) -> list[Outcome]:
    if plan.writes:
        # A key that may not write customers fails here, before any row is written or recorded.
        customers.check_write_access()
    decided_without_write = plan.of(Action.UNCHANGED, Action.REJECT, Action.SKIP_NOT_FOUND)
    store.save(spec.name, run_id, filter(None, map(state_without_write, decided_without_write)))
    writer = StripeWriter(
        customers,
        spec.name,
        recreate_deleted=spec.behavior == "update_or_create",
        on_batch=lambda outcomes: store.save(spec.name, run_id, map(state_after_outcome, outcomes)),
        concurrency=concurrency,
        logger=log,
    )
    outcomes = writer.apply(plan.writes, total=len(plan.writes))
    store.record_rejections(
        spec.name,
        run_id,
        [
            *(_rejection(row, "rejected", row.reason) for row in plan.of(Action.REJECT)),
            *(_rejection(o.row, "failed", o.error) for o in outcomes if o.status == "failed"),
        ],
    )
    return outcomes
