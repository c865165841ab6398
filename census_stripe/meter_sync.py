"""One run of one meter event sync, without Dagster: usage rows -> verdicts -> ledger -> Stripe.

    report = run_meter_event_sync(spec, model=model, store=SyncStateStore(warehouse), stripe=stripe, run_id="...")

1. Every row of the model (or of the partition) is judged against the ledger in one query
   (plan/meter_events.py): new, already sent, changed since, in doubt, or rejected with a reason.
   The same scan counts the verdicts and what each customer is billed once Stripe accepts what
   the run sends (warehouse/billed.py).
2. New events are queued in the ledger (one INSERT ... SELECT, inside the warehouse); events in
   doubt from a run that died are claimed; changed ones are corrected if the sync opts in.
   Meanwhile the account's meters are listed (stripe_client/meters.py): an event name without an
   active meter reading the sync's payload keys stops the run before its first event, and what it
   queued is forgotten (a dry run reports it).
3. The run's events are read back in chunks, each whole, and sent (apply/meter_events.py): events
   are marked attempted right before their request is sent, and a chunk settled after its last answer.
4. What the run's customers are billed, per partition (the view in warehouse/billed.py keeps the
   whole list), is step 1's count once Stripe accepted all the run sent; otherwise (a refusal, an
   event in doubt or unsent, a correction) the plan is judged once more against the answers. A run
   over several partitions judges it again for what each partition sent.

Sent once: the ledger remembers every accepted event for ever, and an event whose fate is unknown
is sent again only while Stripe's 24-hour deduplication still covers it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from census_stripe.apply.meter_events import SAMPLE, Chunk, DeliveryReport, deliver
from census_stripe.plan import meter_events as plan
from census_stripe.plan.meter_events import CustomerSource
from census_stripe.plan.sql import ModelSlice
from census_stripe.spec import MeterEventSpec
from census_stripe.stripe_client.errors import StripeAccessError, StripeAccountMismatchError, StripeUnreachableError
from census_stripe.stripe_client.meter_types import Delivery, MeterEvent, MeterEventApi
from census_stripe.stripe_client.meters import MeterCheckError, meter_problems
from census_stripe.stripe_client.values import StripeAccount
from census_stripe.warehouse.base import Relation, Warehouse, is_missing
from census_stripe.warehouse.billed import delivered_sql, ensure_billed_view, summary_sql
from census_stripe.warehouse.ledger import MeterEventLedger, in_dialect
from census_stripe.warehouse.state import Rejection, SyncStateStore, utc_now

if TYPE_CHECKING:
    import pandas as pd  # the warehouse makes the frames; loading the code location imports neither

log = logging.getLogger(__name__)
# Events per chunk, read whole: one ledger transaction settles each; the marks go with the requests.
CHUNK_EVENTS = 50_000
REJECTIONS_RECORDED = 10_000  # per run, in sync_rejections; the counts cover them all


BILLED_SHOWN = 20  # customers per partition and meter in a run's preview; the view has them all
PENDING = (plan.NEW, plan.RESEND)  # the verdicts of the events a run sends, billed once Stripe accepts them


@dataclass(frozen=True)
class MeterRunOptions:
    dry_run: bool = False
    model_slice: ModelSlice | None = None
    # The partitions the slice covers, each reported on its own (a backfill's days): key, its rows.
    partitions: tuple[tuple[str, ModelSlice], ...] = ()


@dataclass
class MeterEventReport:
    spec: MeterEventSpec
    options: MeterRunOptions
    account: StripeAccount
    verdicts: dict[str, int]
    delivery: DeliveryReport = field(default_factory=DeliveryReport)
    rejected_sample: list[dict] = field(default_factory=list)  # rows rejected before any call, with reasons
    attention_sample: list[dict] = field(default_factory=list)  # changed after sent, or unconfirmed
    corrected: int = 0
    stripe_calls: int = 0
    rate_limited: int = 0
    ledger_table: str = ""
    meter_problems: list[str] = field(default_factory=list)  # why a run would bill nothing; a dry run's to show
    # Per partition of the run, by key (plan.events_query's `partition_key`; None for a whole-model run):
    verdicts_by_partition: dict[str | None, dict[str, int]] = field(default_factory=dict)
    delivered_by_partition: dict[str | None, dict[str, int]] = field(default_factory=dict)
    billed: list[dict] = field(default_factory=list)  # billed.summary_sql's rows: the top customers
    billed_view: str = ""
    partition: str | None = None  # set on a report of one partition of the run (`of_partition`)

    @property
    def rows_read(self) -> int:
        return sum(self.verdicts.values())

    @property
    def rejected(self) -> int:
        return sum(count for verdict, count in self.verdicts.items() if verdict in plan.REJECTIONS)

    def of_partition(self, key: str) -> MeterEventReport:
        """What the run read and did in one of its partitions; the Stripe calls are the run's."""
        delivered = Counter(self.delivered_by_partition.get(key, {}))
        delivery = replace(
            self.delivery,
            accepted=delivered["accepted"],
            in_doubt=delivered["in_doubt"],
            refused=delivered["refused"],
            # Stripe's answers name events, not partitions: a partition with refusals shows the run's.
            refused_sample=self.delivery.refused_sample if delivered["refused"] else [],
        )
        return replace(
            self,
            verdicts=self.verdicts_by_partition.get(key, {}),
            delivery=delivery,
            rejected_sample=[row for row in self.rejected_sample if row["partition_key"] == key],
            attention_sample=[row for row in self.attention_sample if row["partition_key"] == key],
            billed=[row for row in self.billed if row["partition_key"] == key],
            # Corrections are counted per run: a partition's events sent again are among its accepted ones.
            corrected=0,
            partition=key,
        )

    def counts(self) -> dict[str, int]:
        """Stable names: the UI plots each over runs."""
        verdicts = self.verdicts
        return {
            "rows_read": self.rows_read,
            "planned_events": sum(verdicts.get(verdict, 0) for verdict in (plan.NEW, plan.RESEND, plan.CORRECTING))
            + self.corrected,
            "already_sent": verdicts.get(plan.SENT, 0),
            "resent_in_doubt": verdicts.get(plan.RESEND, 0),
            "changed_after_sent": verdicts.get(plan.CHANGED, 0),
            "corrected": self.corrected,
            "unconfirmed": verdicts.get(plan.UNCONFIRMED, 0),
            "rejected": self.rejected,
            "accepted": self.delivery.accepted,
            "refused": self.delivery.refused,
            "in_doubt": self.delivery.in_doubt,
            "unsent": self.delivery.unsent,
            "stripe_api_calls": self.stripe_calls,
            "stripe_rate_limited": self.rate_limited,
        }


def chunk_of(columns: dict[str, list], batch_size: int) -> Chunk:
    """The events of one chunk the ledger read (`MeterEventLedger.to_send`), as the sender takes them."""
    events = list(
        map(
            MeterEvent._make,
            zip(
                columns["identifier"],
                columns["event_name"],
                columns["stripe_customer_id"],
                columns["value"],
                columns["event_time"],
                strict=True,
            ),
        )
    )
    resent = frozenset(
        identifier for identifier, again in zip(columns["identifier"], columns["resent"], strict=True) if again
    )
    return Chunk(events, batch_size, resent)


def run_meter_event_sync(
    spec: MeterEventSpec,
    *,
    model: Relation,
    store: SyncStateStore,
    api: Callable[[], MeterEventApi],
    account_of: Callable[[], StripeAccount],
    customers: CustomerSource,
    run_id: str,
    customer_account_of: Callable[[], StripeAccount] | None = None,
    options: MeterRunOptions = MeterRunOptions(),
    concurrency: int = 200,
    now: Callable[[], datetime] = utc_now,
    log: logging.Logger = log,
) -> MeterEventReport:
    """`api` makes the Stripe client inside the run's event loop; `account_of` names the account
    (remembered per key and server, as the other syncs do); `customer_account_of` the account of the
    customer sync's writeback, when that sync writes through another Stripe resource."""
    store.ensure_tables()
    account = account_of()
    customer_account = customer_account_of() if customer_account_of else account
    if customer_account != account:
        raise StripeAccountMismatchError(
            f"meter event sync {spec.name!r} sends to Stripe account {account}, but its customer sync "
            f"{spec.meter_event.customer.sync!r} writes the customers to {customer_account}: Stripe would accept "
            "the events and bill no one. Give both syncs the same stripe_resource and key. Nothing was sent."
        )
    ledger = MeterEventLedger(store.warehouse, store.ledger, spec.name, account.key)
    ledger.ensure_table()
    view = ensure_billed_view(store.warehouse, store.ledger)
    ledger.drop_queued()
    ledger.expire_corrections(now() - plan.RESEND_WITHIN)
    stored_spec, stored_model, where = as_stored(spec, model, options.model_slice, store.warehouse)
    store.warehouse.require_model(spec.model, stored_model)
    kinds = plan.column_kinds(store.warehouse.column_types(stored_model), store.warehouse.dialect)
    query = plan.events_query(
        stored_spec,
        stored_model,
        where,
        store.state,
        store.ledger,
        account.key,
        customers,
        customer_account.key,
        now(),
        kinds,
        legacy_sync=spec.name if (legacy := ledger.has_legacy()) else None,
        partitions=options.partitions,
    )
    by_partition, billed = _summary(store, query, pending=PENDING)
    verdicts: Counter[str] = Counter()
    for counts in by_partition.values():
        verdicts.update(counts)
    report = MeterEventReport(
        spec,
        options,
        account,
        dict(verdicts),
        ledger_table=ledger.name,
        verdicts_by_partition=by_partition,
        billed_view=view,
        billed=billed,
    )
    # Each query below evaluates the plan over the whole partition again: only those with rows to find run.
    rejected = _rows(store, query, list(plan.REJECTIONS), REJECTIONS_RECORDED) if report.rejected else []
    report.rejected_sample = rejected  # all those recorded: a backfill's metadata shows each partition's own
    if verdicts.get(plan.CHANGED) or verdicts.get(plan.UNCONFIRMED):
        report.attention_sample = _rows(store, query, [plan.CHANGED, plan.UNCONFIRMED], SAMPLE)
    log.info("meter event sync %s, account %s: %s", spec.name, account, report.verdicts)
    sends = _sends(spec, verdicts)
    event_names = _event_names_to_send(spec, store, query) if sends else set()
    with ThreadPoolExecutor(max_workers=1) as background:
        # Stripe lists the meters while the warehouse prepares the run; no event leaves before the answer.
        checked = background.submit(_meter_problems, spec, event_names, api, report)
        if options.dry_run:
            report.meter_problems = checked.result()
            return report
        try:
            if legacy:
                # Upgrading: the events this sync sent under an earlier version's key are filed under
                # their event's key, before anything below looks them up by it.
                ledger.adopt_legacy(
                    f"SELECT DISTINCT event_key, legacy_key FROM ({query}) AS planned WHERE legacy_key IS NOT NULL"
                )
            if verdicts.get(plan.NEW):
                columns = "event_key, event_name, stripe_customer_id, value, event_time"
                ledger.queue(_select(query, [plan.NEW], columns), run_id)
            if verdicts.get(plan.RESEND) or verdicts.get(plan.CORRECTING):
                ledger.claim(_select(query, [plan.RESEND, plan.CORRECTING], "event_key"), run_id)
            report.meter_problems = checked.result()
            if report.meter_problems:
                raise MeterCheckError(spec.name, report.meter_problems)  # what it queued is forgotten below
            _record_rejections(store, spec, account, run_id, rejected)
            asyncio.run(_send(spec, ledger, api, report, run_id, query, concurrency, now))
            if report.counts()["planned_events"]:
                # Before the unsent events are forgotten: until then the ledger tells them from refused ones.
                report.delivered_by_partition = _delivered(store, report, query, run_id)
        finally:
            ledger.forget_unsent(run_id)
    if legacy or (sends and not _billed_as_planned(report)):
        report.billed = _summary(store, query)[1]  # the ledger is not as the plan foresaw: judged again
    return report


def _billed_as_planned(report: MeterEventReport) -> bool:
    """Whether Stripe accepted every event the run planned to send, and the run corrected nothing:
    then what the run bills is what its plan counted as pending (`PENDING`)."""
    verdicts = report.verdicts
    corrects = any(verdicts.get(verdict) for verdict in _sending(report.spec) if verdict not in PENDING)
    return not corrects and report.delivery.accepted == sum(verdicts.get(verdict, 0) for verdict in PENDING)


def _delivered(
    store: SyncStateStore, report: MeterEventReport, query: str, run_id: str
) -> dict[str | None, dict[str, int]]:
    """Per partition of a run that sent, its events Stripe accepted, left in doubt or refused. A run
    over one partition (or none) sent that partition's events only: the delivery's own counts. Over
    several, the plan is judged again against the ledger's answers, to tell the partitions apart."""
    partitions = report.options.partitions
    if len(partitions) <= 1:
        delivery = report.delivery
        key = partitions[0][0] if partitions else None
        return {key: {"accepted": delivery.accepted, "in_doubt": delivery.in_doubt, "refused": delivery.refused}}
    delivered = store.warehouse.query(
        in_dialect(store.warehouse, delivered_sql(query, store.ledger, report.account.key, run_id, plan.NEW))
    )
    return {
        _key(row["partition_key"]): {name: int(row[name]) for name in ("accepted", "in_doubt", "refused")}
        for row in _lower_keys(delivered).to_dict("records")
    }


def _summary(
    store: SyncStateStore, query: str, pending: tuple[str, ...] = ()
) -> tuple[dict[str | None, dict[str, int]], list[dict]]:
    """Per partition of the run (`partition_key`), the rows of each verdict; and the top customers
    billed per partition and meter (`billed.summary_sql`), `pending` counted as billed."""
    found = _lower_keys(store.warehouse.query(in_dialect(store.warehouse, summary_sql(query, BILLED_SHOWN, pending))))
    by_partition: dict[str | None, dict[str, int]] = {}
    counted = found[found["part"] == "verdicts"]
    for key, verdict, count in zip(counted["partition_key"], counted["verdict"], counted["rows_judged"], strict=True):
        by_partition.setdefault(_key(key), {})[str(verdict)] = int(count)
    billed = found[found["part"] == "billed"].drop(columns=["part", "verdict", "rows_judged"])
    return by_partition, _keyed(billed.to_dict("records"))


def _key(value: object) -> str | None:
    """A partition's key, however the warehouse's driver returns a NULL."""
    return None if is_missing(value) else str(value)


def _keyed(rows: list[dict]) -> list[dict]:
    return [row | {"partition_key": _key(row["partition_key"])} for row in rows]


def _sending(spec: MeterEventSpec) -> list[str]:
    """The verdicts of the rows a run sends (or cancels and sends again)."""
    return [plan.NEW, plan.RESEND, plan.CORRECTING, *([plan.CHANGED] if spec.meter_event.correct_changed else [])]


def _sends(spec: MeterEventSpec, verdicts: dict[str, int]) -> bool:
    return any(verdicts.get(verdict) for verdict in _sending(spec))


def _event_names_to_send(spec: MeterEventSpec, store: SyncStateStore, query: str) -> set[str]:
    """The event names of the events this run sends (it sends some)."""
    meter = spec.meter_event
    sending = _sending(spec)
    if meter.event_name:
        return {meter.event_name}
    found = store.warehouse.query(in_dialect(store.warehouse, _select(query, sending, "DISTINCT event_name")))
    return {str(name) for name in found.iloc[:, 0]}


def _meter_problems(
    spec: MeterEventSpec, event_names: set[str], make_api: Callable[[], MeterEventApi], report: MeterEventReport
) -> list[str]:
    """The pre-send step: what keeps `event_names` from being billed, by the account's meters. A run
    with nothing to send asks Stripe nothing. Runs on a thread of its own, beside the warehouse's
    work: it touches only the report's Stripe call counts, which nothing else writes until it ends."""
    if not event_names:
        return []
    meter = spec.meter_event

    async def listed() -> list[str]:
        api = make_api()
        try:
            meters = await api.meters()
        finally:
            report.stripe_calls += api.calls
            report.rate_limited += api.rate_limited
            await api.close()
        return meter_problems(meters, event_names, meter.customer_payload_key, meter.value_payload_key)

    return asyncio.run(listed())


async def _send(
    spec: MeterEventSpec,
    ledger: MeterEventLedger,
    make_api: Callable[[], MeterEventApi],
    report: MeterEventReport,
    run_id: str,
    query: str,
    concurrency: int,
    now: Callable[[], datetime],
) -> None:
    api = make_api()
    try:
        intend = spec.meter_event.correct_changed and bool(report.verdicts.get(plan.CHANGED))
        if intend or report.verdicts.get(plan.CORRECTING):
            report.corrected = await _correct(api, ledger, query, run_id, now, intend)

        def before_sending(chunk: Chunk, start: int, end: int) -> None:
            ledger.mark_attempted(run_id, *chunk.identifiers(start, end), now())

        def after_answers(chunk: Chunk, open_events: list[tuple[MeterEvent, Delivery, str]]) -> None:
            first, last = chunk.identifiers(0, chunk.marked)
            ledger.settle(
                run_id, first, last, now(), [(event.identifier, kind.value) for event, kind, _ in open_events]
            )

        chunks = (chunk_of(columns, api.batch_size) for columns in ledger.to_send(run_id, CHUNK_EVENTS))
        try:
            await deliver(
                chunks,
                api,
                concurrency=concurrency,
                before_sending=before_sending,
                after_answers=after_answers,
                report=report.delivery,
            )
        except* (StripeUnreachableError, StripeAccessError) as group:
            # The first cause, as a plain error: the run fails with Stripe's reason.
            raise group.exceptions[0] from None
    finally:
        report.stripe_calls += api.calls
        report.rate_limited += api.rate_limited
        await api.close()


async def _correct(
    api: MeterEventApi, ledger: MeterEventLedger, query: str, run_id: str, now: Callable[[], datetime], intend: bool
) -> int:
    """The corrections this run began and finished (`correct_changed`). Each goes in steps a rerun
    can take up after a crash at any point: the intent is recorded (`intend`: the changed events
    Stripe can still cancel), then each cancel is marked sent, sent, and once Stripe counts nothing
    under the former revision, the new value is free to be sent with the run's other events. A
    cancel Stripe refuses within its 24 hours has nothing left to cancel (an earlier cancel whose
    answer was lost took it), so the correction goes on; one without an answer is sent again by the
    next run, while Stripe can still take it."""
    window = now() - plan.RESEND_WITHIN
    resumed = set(ledger.pending_cancels(run_id, window)["event_key"])  # counted as `correcting` already
    if intend:
        changed = _select(query, [plan.CHANGED], "event_key, value")
        ledger.intend_corrections(changed, run_id, window)
    pending = ledger.pending_cancels(run_id, window)
    done = 0
    for event_key, event_name, identifier in zip(
        pending["event_key"], pending["event_name"], pending["cancel_identifier"], strict=True
    ):
        ledger.cancel_sending(event_key, now())
        outcome = await api.cancel(event_name, identifier)
        if outcome.delivery in (Delivery.ACCEPTED, Delivery.REFUSED):
            if outcome.delivery is Delivery.REFUSED:
                log.info("meter event %s: Stripe has nothing to cancel (%s)", identifier, outcome.error)
            ledger.cancelled(event_key)
            done += event_key not in resumed
        else:
            log.warning(
                "meter event %s: no answer to its cancel; the next run sends it again: %s", identifier, outcome.error
            )
    return done


def _select(query: str, verdicts: list[str], columns: str) -> str:
    chosen = ", ".join(f"'{verdict}'" for verdict in verdicts)
    return f"SELECT {columns} FROM ({query}) AS planned WHERE verdict IN ({chosen})"


def _rows(store: SyncStateStore, query: str, verdicts: list[str], limit: int) -> list[dict]:
    columns = (
        "event_key, verdict, event_name, stripe_customer_id, value, sent_value, event_time, "
        "customer_key, empty_column, partition_key"
    )
    sql = f"{_select(query, verdicts, columns)} ORDER BY event_time, event_key LIMIT {limit}"
    return _keyed(_lower_keys(store.warehouse.query(in_dialect(store.warehouse, sql))).to_dict("records"))


def _record_rejections(
    store: SyncStateStore, spec: MeterEventSpec, account: StripeAccount, run_id: str, rows: list[dict]
) -> None:
    meter = spec.meter_event
    rejections = [
        Rejection(
            row["event_key"],
            row["customer_key"],
            "rejected",
            f"{plan.rejected_column(meter, row['verdict'], row['empty_column'])}: {plan.REJECTIONS[row['verdict']]}",
            {name: None if value is None else str(value) for name, value in row.items() if name != "verdict"},
        )
        for row in rows
    ]
    store.record_rejections(spec.name, account.key, run_id, rejections)


def _lower_keys(rows: pd.DataFrame) -> pd.DataFrame:
    """Result columns as named in the query, whatever case the warehouse answers in."""
    return rows.rename(columns=str.lower)


def as_stored(spec: MeterEventSpec, model: Relation, where: ModelSlice | None, warehouse: Warehouse):
    """The model, its columns and the partition's column as the warehouse names what dbt created
    unquoted (Snowflake upper-cases them); unchanged elsewhere."""
    fold = warehouse.model_identifier
    meter = spec.meter_event
    folded = meter.model_copy(
        update={
            "customer": meter.customer.model_copy(update={"column": fold(meter.customer.column)}),
            "value_column": fold(meter.value_column),
            "timestamp_column": fold(meter.timestamp_column),
            "event_name_column": meter.event_name_column and fold(meter.event_name_column),
            "identity": [fold(column) for column in meter.identity],
        }
    )
    return (
        spec.model_copy(update={"meter_event": folded}),
        Relation(fold(model.schema), fold(model.name), model.database),
        where and replace(where, column=fold(where.column)),
    )
