"""One run of one sync, end to end and without Dagster: warehouse -> plan -> apply -> state.

    report = run_sync(
        spec, model=model, store=SyncStateStore(warehouse), stripe=StripeObjects(api_key, object_type=...), run_id="..."
    )

The Dagster asset (census_stripe/orchestration/) only gathers these arguments and turns the report into
metadata; tests and benchmarks call this directly.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import chain
from typing import TYPE_CHECKING

from census_stripe.apply.writer import Outcome, StripeWriter, WriteStatus
from census_stripe.plan import sql
from census_stripe.plan.guards import (
    MAX_ARCHIVE_RATE,
    MAX_ROW_COUNT_CHANGE,
    Threshold,
    Verdict,
    archive_verdict,
    guards_of,
    row_count_verdict,
)
from census_stripe.plan.lookup import ObjectLookup, index_by_key
from census_stripe.plan.planner import (
    WRITES,
    Action,
    LiveAccount,
    Plan,
    PlannedRow,
    archives,
    build_plan,
    decide_by_key,
)
from census_stripe.plan.references import resolve_references
from census_stripe.plan.rows import Candidate, candidates_from_chunk, left_keys, settle_former_keys
from census_stripe.plan.sql import ModelSlice
from census_stripe.spec import SyncSpec
from census_stripe.stripe_client.errors import StripeUnreachableError
from census_stripe.stripe_client.values import StripeAccount
from census_stripe.warehouse.base import Relation, Warehouse
from census_stripe.warehouse.state import (
    WHOLE_MODEL,
    ChangeRecord,
    Rejection,
    RunRecord,
    StateRecord,
    StateStatus,
    SyncStateStore,
    utc_now,
)

if TYPE_CHECKING:
    # The client is handed in; importing only its errors keeps the SDK out of loading Dagster's code location.
    from census_stripe.stripe_client.client import StripeObjects

log = logging.getLogger(__name__)
CHUNK_ROWS = 10_000
KEYS_PER_QUERY = 1_000


@dataclass(frozen=True)
class RunOptions:
    dry_run: bool = False
    full_resync: bool = False
    # A partition: only these rows, and every one of them written again whatever Stripe holds.
    model_slice: ModelSlice | None = None
    # This run's guard thresholds, in place of the sync file's (None: the file's).
    max_archive_rate: float | None = None
    max_row_count_change: float | None = None

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
    guards: list[Verdict] = field(default_factory=list)  # judged on the plan, before any write

    @property
    def refused(self) -> bool:
        """A guard failed: the run wrote nothing (a dry run: a real run would write nothing)."""
        return any(not verdict.passed for verdict in self.guards)

    @property
    def failure_rate(self) -> float:
        """Failed writes over attempted writes."""
        return sum(o.status is WriteStatus.FAILED for o in self.outcomes) / len(self.outcomes) if self.outcomes else 0.0

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
            "created": done[WriteStatus.CREATED],
            # creates that replaced a customer deleted in Stripe, with a new id
            "recreated": sum(1 for outcome in self.outcomes if _recreated(outcome)),
            "updated": done[WriteStatus.UPDATED],
            "failed": done[WriteStatus.FAILED],
            "stripe_api_calls": sum(self.stripe_calls.values()),
            "stripe_lookup_calls": self.stripe_calls.get("list", 0),
            "stripe_duplicate_keys": sum(1 for row in self.plan.rows if row.stripe_duplicates),
            "stripe_rate_limited": self.rate_limited,
            "state_rows_repaired": len(self.plan.state_problems),
            **self._catalog_counts(planned, done),
        }

    def _catalog_counts(self, planned: dict[Action, int], done: Counter) -> dict[str, int]:
        """Counts of what only some syncs can do, shown by the syncs that can."""
        spec = self.spec
        counts = {}
        if spec.behavior == "create_only":
            counts["skipped_existing"] = planned[Action.SKIP_EXISTING]
        if spec.object_type.has_versions:
            counts["planned_new_versions"] = planned[Action.NEW_VERSION]
            counts["new_versions"] = done[WriteStatus.NEW_VERSION]
        if spec.archive_missing or spec.object_type.has_versions:
            # A new version archives the object it replaces: archived with those whose key left the model.
            counts["planned_archives"] = planned[Action.ARCHIVE] + planned[Action.NEW_VERSION]
            counts["archived"] = done[WriteStatus.ARCHIVED] + done[WriteStatus.NEW_VERSION]
        return counts


def _recreated(outcome: Outcome) -> bool:
    prior = outcome.row.candidate.prior
    replaced = prior is not None and bool(prior.stripe_id) and outcome.stripe_id != prior.stripe_id
    return outcome.status is WriteStatus.CREATED and replaced


def _synced(row: PlannedRow, stripe_id: str | None) -> StateRecord:
    candidate = row.candidate
    return StateRecord(row.key, stripe_id, candidate.row_hash, candidate.values, utc_now(), StateStatus.SYNCED, None)


def _kept(row: PlannedRow, status: StateStatus, error: str | None) -> StateRecord:
    """A key whose Stripe values did not change this run: keep what was last accepted, note why."""
    prior = row.candidate.prior
    return StateRecord(
        row.key,
        row.stripe_id or (prior.stripe_id if prior else None),
        prior.row_hash if prior else None,
        prior.synced_values if prior else None,
        prior.synced_at if prior else None,
        status,
        error,
    )


def _archived(row: PlannedRow) -> StateRecord:
    """No row hash: should the key come back to the model, its row is examined (and its object
    made active again by the diff)."""
    prior = row.candidate.prior
    synced = (prior.synced_values if prior else None) or {}
    return StateRecord(
        row.key, row.stripe_id, None, synced | {"active": "false"}, utc_now(), StateStatus.ARCHIVED, None
    )


def state_after_outcome(outcome: Outcome) -> StateRecord | None:
    if outcome.status is WriteStatus.MISSING:
        return None  # decided again, by key, later in the run
    if outcome.status is WriteStatus.FAILED:
        return _kept(outcome.row, StateStatus.FAILED, outcome.error)
    if outcome.status is WriteStatus.ARCHIVED:
        return _archived(outcome.row)
    return _synced(outcome.row, outcome.stripe_id)


_STATUS_WITHOUT_WRITE = {
    Action.REJECT: StateStatus.REJECTED,
    Action.SKIP_NOT_FOUND: StateStatus.NOT_FOUND,
    Action.SKIP_EXISTING: StateStatus.EXISTING,
}


def state_without_write(row: PlannedRow) -> StateRecord | None:
    """State for rows decided without a Stripe write; None for a row with no key to file it under."""
    if row.candidate.key is None:
        return None
    if row.action is Action.UNCHANGED:
        return _synced(row, row.stripe_id)
    if row.action is Action.SKIP_EXISTING:
        # Its id, for the writeback (a price sync resolves products by it); its row hash, so that
        # the row is not looked at again until it changes.
        prior = row.candidate.prior
        synced = prior.synced_values if prior else None
        return StateRecord(
            row.key, row.stripe_id, row.candidate.row_hash, synced, None, StateStatus.EXISTING, row.reason
        )
    return _kept(row, _STATUS_WITHOUT_WRITE[row.action], row.reason)


def _rejection(row: PlannedRow, kind: str, reason: str | None) -> Rejection:
    return Rejection(row.candidate.key, row.candidate.key_value, kind, reason, row.candidate.values)


def change_records(plan: Plan, outcomes: list[Outcome], unwritten: str = "planned") -> Iterator[ChangeRecord]:
    """Every row the run did not leave unchanged: what was planned for it and what became of it
    (`unwritten` for a write the run did not make: planned by a dry run, or refused by a guard)."""
    written = {id(outcome.row): outcome for outcome in outcomes}
    for row in plan.rows:
        if row.action is Action.UNCHANGED:
            continue
        if row.action in WRITES:
            changes = {change.field: {"before": change.before, "after": change.after} for change in row.changes}
            outcome = written.get(id(row))
            stripe_id = (outcome and outcome.stripe_id) or row.stripe_id
            status, reason = (outcome.status, outcome.error) if outcome else (unwritten, None)
        else:
            changes, stripe_id = None, row.stripe_id
            status, reason = _STATUS_WITHOUT_WRITE[row.action], row.reason
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
    spec: SyncSpec,
    model: Relation,
    store: SyncStateStore,
    stripe: StripeObjects,
    options: RunOptions,
    account: StripeAccount,
) -> tuple[Plan, ObjectLookup]:
    warehouse = store.warehouse
    spec, model = as_stored(spec, model, warehouse)
    warehouse.require_model(spec.model, model)
    where = options.model_slice and replace(
        options.model_slice, column=warehouse.model_identifier(options.model_slice.column)
    )
    rows_read = int(warehouse.query(sql.row_count_query(model, warehouse.dialect, where)).iloc[0, 0])
    everything = options.full_resync or options.repush
    query = sql.changed_rows_query(spec, model, store.state, account.key, warehouse.dialect, everything, where)
    candidates: Iterable[Candidate] = chain.from_iterable(
        candidates_from_chunk(spec, chunk) for chunk in warehouse.query_chunks(query, CHUNK_ROWS)
    )
    candidates = settle_former_keys(candidates, lambda keys: _model_keys(warehouse, spec, model, keys))
    candidates = resolve_references(spec, candidates, lambda sync: store.stripe_ids(sync, account.key))
    listed = list(stripe.iter_all()) if options.full_resync else None
    known = store.known_customers(spec.name, account.key)
    lookup = ObjectLookup(stripe, spec.key.field, spec.lookup, listed, known)
    live = None
    if listed is not None:
        live = LiveAccount({c.id: c for c in listed}, index_by_key(listed, spec.key.field))
    plan = build_plan(spec, candidates, rows_read, lookup, live, repush=options.repush)
    if spec.archive_missing and where is None:
        query = sql.left_keys_query(spec, model, store.state, account.key, warehouse.dialect)
        left = left_keys(spec.object_type, warehouse.query(query))
        plan.rows.extend(archives(spec, left, lookup))
        plan.state_problems.extend(left.damaged)
    return plan, lookup


def _model_keys(warehouse: Warehouse, spec: SyncSpec, model: Relation, keys: list[str]) -> set[str]:
    """Which of `keys` some model row has."""
    found: set[str] = set()
    for start in range(0, len(keys), KEYS_PER_QUERY):
        query = sql.model_keys_query(spec, model, keys[start : start + KEYS_PER_QUERY], warehouse.dialect)
        found.update(warehouse.query(query).iloc[:, 0])
    return found


def run_sync(
    spec: SyncSpec,
    *,
    model: Relation,
    store: SyncStateStore,
    stripe: StripeObjects,
    run_id: str,
    options: RunOptions = RunOptions(),
    log: logging.Logger = log,
    concurrency: int = 16,
) -> SyncReport:
    if stripe.object_type is not spec.object_type:
        raise ValueError(f"sync {spec.name} writes {spec.object_type.plural}, not {stripe.object_type.plural}")
    store.ensure_tables()
    try:
        account = store.account(stripe.connection_fingerprint, stripe.identify_account)
        log.info("sync %s writes to Stripe account %s", spec.name, account)
        plan, lookup = plan_sync(spec, model, store, stripe, options, account)
    except StripeUnreachableError as error:
        raise StripeUnreachableError(f"{error}: stopped while planning, before any write") from None
    log.info("plan for %s: %s", spec.name, ", ".join(f"{a.value}={n}" for a, n in plan.counts().items()))
    _warn_about_state(plan, store, spec, account, log)
    report = SyncReport(spec, options, plan, account=account, changes_query=store.changes_query(run_id))
    report.guards = judge_guards(spec, options, plan, store, account)
    refusal = logging.WARNING if options.dry_run else logging.ERROR
    for verdict in report.guards:
        log.log(logging.INFO if verdict.passed else refusal, "sync %s: %s", spec.name, verdict.text)
    if report.refused and not options.dry_run:
        log.error("sync %s refused before any write: nothing was written to Stripe", spec.name)
    elif not options.dry_run:
        if refiled := {row.candidate.former_key: row.key for row in plan.rows if row.candidate.former_key}:
            store.refile(spec.name, account.key, refiled)
            log.info("%d state rows of %s filed again under their key by today's rule", len(refiled), spec.name)
        report.outcomes = _apply(spec, plan, store, stripe, account.key, run_id, log, concurrency, lookup)
        # Only a run that synced sets what the next is compared with: after a refusal, the
        # next run is compared with the last count that was synced, not with the suspect one.
        store.record_row_count(spec.name, row_count_scope(options), plan.rows_read, run_id)
        if unbound := store.drop_unbound(spec.name):
            log.info(
                "dropped %d state rows of %s written before state recorded its Stripe account; "
                "their keys were matched in %s",
                unbound,
                spec.name,
                account,
            )
    report.stripe_calls = dict(stripe.calls.counts)
    report.rate_limited = stripe.calls.rate_limited
    run = RunRecord(spec.name, run_id, options.dry_run, account.key, spec.keep_changes_days)
    unwritten = "refused" if report.refused and not options.dry_run else "planned"
    store.record_changes(run, change_records(plan, report.outcomes, unwritten))
    return report


def row_count_scope(options: RunOptions) -> str:
    """What a run's row count is compared with: the same partition's at its last sync, or the whole model's."""
    return options.model_slice.label if options.model_slice else WHOLE_MODEL


def judge_guards(
    spec: SyncSpec, options: RunOptions, plan: Plan, store: SyncStateStore, account: StripeAccount
) -> list[Verdict]:
    """The run's guards on destructive change, judged on its plan: the share of the sync's objects
    it archives (syncs that archive), and how far the model's row count moved since the last sync."""
    verdicts = []
    guards = guards_of(spec)
    if MAX_ARCHIVE_RATE in guards:
        query = sql.live_objects_query(spec, store.state, account.key, store.warehouse.dialect)
        live = int(store.warehouse.query(query).iloc[0, 0])
        threshold = Threshold(MAX_ARCHIVE_RATE, spec.max_archive_rate, options.max_archive_rate)
        archives = plan.counts()[Action.ARCHIVE]
        verdicts.append(archive_verdict(archives, live, plan.rows_read, spec.object_type.plural, threshold))
    scope = row_count_scope(options)
    where = f"{spec.model} ({scope})" if options.model_slice else spec.model
    threshold = Threshold(MAX_ROW_COUNT_CHANGE, spec.max_row_count_change, options.max_row_count_change)
    last = store.last_row_count(spec.name, scope)
    verdicts.append(row_count_verdict(plan.rows_read, last, where, threshold))
    return verdicts


STATE_WARNINGS_LOGGED = 20


def _warn_about_state(plan: Plan, store: SyncStateStore, spec: SyncSpec, account: StripeAccount, log) -> None:
    """Damaged state never stops a run: the keys concerned are looked up again and filed anew."""
    table = ".".join([store.state.schema, store.state.name])
    for key, problem in plan.state_problems[:STATE_WARNINGS_LOGGED]:
        log.warning(
            "%s: sync %s, account %s, key %r: %s; ignored, the key is looked up in Stripe again and its "
            "state rewritten",
            table,
            spec.name,
            account,
            key,
            problem,
        )
    if len(plan.state_problems) > STATE_WARNINGS_LOGGED:
        log.warning(
            "%s: %d more damaged state rows, handled alike", table, len(plan.state_problems) - STATE_WARNINGS_LOGGED
        )


def _apply(
    spec: SyncSpec,
    plan: Plan,
    store: SyncStateStore,
    stripe: StripeObjects,
    account: str,
    run_id: str,
    log: logging.Logger,
    concurrency: int,
    lookup: ObjectLookup,
) -> list[Outcome]:
    written: list[Outcome] = []

    def save(records: Iterable[StateRecord | None]) -> None:
        store.save(spec.name, account, run_id, filter(None, records))

    def save_decided(rows: list[PlannedRow]) -> None:
        save(state_without_write(row) for row in rows if row.action not in WRITES)

    def record(outcomes: list[Outcome]) -> None:
        save(map(state_after_outcome, outcomes))
        written.extend(outcomes)

    writer = StripeWriter(
        stripe, spec.name, run_id, spec.key.field, on_batch=record, concurrency=concurrency, logger=log
    )
    unreachable = None
    try:
        if plan.writes:
            # A key that may not write these objects fails here, before any row is written or recorded.
            stripe.check_write_access()
        save_decided(plan.rows)
        writer.apply(plan.writes, total=len(plan.writes))
        if missing := [outcome for outcome in written if outcome.status is WriteStatus.MISSING]:
            # Customers the state knew but Stripe does not have (deleted, or edited by hand): never
            # create before looking. Their keys are looked up, a customer found is adopted, and
            # only a key Stripe truly lacks is created.
            log.info(
                "%d %s known to the state are not in Stripe; looking their keys up",
                len(missing),
                spec.object_type.plural,
            )
            decided, _ = decide_by_key(spec, [outcome.row.candidate for outcome in missing], lookup)
            plan.replace({id(outcome.row): row for outcome, row in zip(missing, decided, strict=True)})
            save_decided(decided)
            writes = [row for row in decided if row.action in WRITES]
            writer.apply(writes, total=len(writes))
    except StripeUnreachableError as error:
        # What Stripe accepted is already recorded; rows not attempted are left for the next run,
        # not marked failed.
        unreachable = error
    outcomes = [outcome for outcome in written if outcome.status is not WriteStatus.MISSING]
    store.record_rejections(
        spec.name,
        account,
        run_id,
        [
            *(_rejection(row, "rejected", row.reason) for row in plan.of(Action.REJECT)),
            *(_rejection(o.row, "failed", o.error) for o in outcomes if o.status is WriteStatus.FAILED),
        ],
    )
    if unreachable:
        left = len(plan.writes) - len(outcomes)
        raise StripeUnreachableError(f"{unreachable}: {len(outcomes)} writes done, {left} left for the next run")
    return outcomes
