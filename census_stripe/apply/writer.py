"""Applying a plan: one Stripe write per changed row (two for a new version), many in flight, every
result accounted for.

Writes run on a pool of threads around one shared client; the account's rate budget
(stripe_client/rate_limit.py) paces them, and StripeObjects retries what can be retried. A row that
Stripe refuses for good is recorded with Stripe's message and the run goes on. When Stripe is
unreachable (StripeUnreachableError) the writer stops: it submits nothing more, hands over what
the writes in flight got, and raises. Results are handed to the caller in batches, on the caller's
thread, as Stripe accepts them, so state is recorded then and never before.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from census_stripe.plan.lookup import ObjectLookup, index_by_key
from census_stripe.plan.planner import Action, PlannedRow, diff
from census_stripe.stripe_client.errors import StripeRequestError
from census_stripe.warehouse.state import StateStatus

if TYPE_CHECKING:
    # The client is handed in; importing only its errors keeps the SDK out of loading Dagster's code location.
    from census_stripe.stripe_client.client import StripeObjects

log = logging.getLogger(__name__)


class WriteStatus(str, Enum):
    CREATED = "created"
    UPDATED = "updated"
    NEW_VERSION = "new_version"  # a new object took the key over, and the old one was archived
    ARCHIVED = "archived"
    FAILED = "failed"
    # An update Stripe answered 404: the object is gone, and the key must be looked up again
    # before anything is created.
    MISSING = "missing"


@dataclass(frozen=True)
class Outcome:
    row: PlannedRow
    status: WriteStatus
    stripe_id: str | None
    error: str | None = None


def _key(*parts: str) -> str:
    return f"census-stripe-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:40]}"


def create_key(sync_name: str, row: PlannedRow) -> str:
    """A create's key names what is created, in any run: the sync, the key, the row and the object
    it replaces. Two runs that decide the same create (a rerun resuming a create whose answer was
    lost, or two runs at once) then make one object, and Stripe replays it to the second. A later
    create of the same row is only decided when a consistent lookup found no object with the key,
    so a replay then names an object since deleted or given another key; the writer checks that
    before it believes a replay (`StripeWriter._created`).

    The key changes after a run in which the create failed for good (Stripe replays a stored error
    too, and would refuse the row for a day), and names the customer a create replaces (the state's
    id, gone from Stripe). A new version names the price it replaces, so each replacement is made once.
    """
    prior = row.candidate.prior
    after_failure = (prior.run_id or "") if prior and prior.status is StateStatus.FAILED else ""
    replaced = row.stripe_id if row.action is Action.NEW_VERSION else (prior.stripe_id if prior else None)
    return _key(sync_name, row.key, row.candidate.row_hash, row.action.value, replaced or "", after_failure)


def write_key(sync_name: str, run_id: str, row: PlannedRow, request: str = "") -> str:
    """The key of a write that sets values on an object (an update, a re-push, a reactivation, an
    archive, the archive of a version replaced) names the run that decided it. Its retries in the
    run replay; a later run's decision to write the same values is sent anew, so that Stripe applies
    it even when its values were written before within the day (and changed since, by hand or by
    the sync). Sending such a write again is harmless: it sets each field it names to a value, and
    setting a value twice leaves what setting it once does. So the next run resumes a write whose
    answer was lost by deciding it again from the state, which recorded nothing for it."""
    return _key(sync_name, run_id, row.key, row.candidate.row_hash, row.action.value, row.target_id, request)


class Progress:
    """A log line every `every` seconds: done/total, rate, ETA."""

    def __init__(self, name: str, total: int, logger: logging.Logger, every: float = 5.0):
        self.name, self.total, self.logger, self.every = name, total, logger, every
        self.started = self.last = time.monotonic()

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate else float("inf")
        self.logger.info(
            "%s: %d/%d writes (%.0f%%), %.1f/s, ETA %s",
            self.name,
            done,
            self.total,
            100 * done / max(self.total, 1),
            rate,
            "-" if eta == float("inf") else f"{eta:.0f}s",
        )


class StripeWriter:
    def __init__(
        self,
        objects: StripeObjects,
        sync_name: str,
        run_id: str,
        key_field: str,
        on_batch: Callable[[list[Outcome]], None],
        concurrency: int = 16,
        batch_size: int = 100,
        logger: logging.Logger = log,
    ):
        self.objects = objects
        self.sync_name = sync_name
        self.run_id = run_id
        self.key_field = key_field  # the sync's key: what a replayed create must still hold
        self.on_batch = on_batch
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.logger = logger

    def apply(self, rows: Iterable[PlannedRow], total: int) -> list[Outcome]:
        outcomes: list[Outcome] = []
        batch: list[Outcome] = []
        progress = Progress(self.sync_name, total, self.logger)
        pending: set[Future] = set()

        def collect(done: set[Future]) -> None:
            # Every finished write is kept before an error of another one stops the run.
            batch.extend(future.result() for future in done if future.exception() is None)
            if len(batch) >= self.batch_size:
                self._flush(batch, outcomes)
            progress.update(len(outcomes) + len(batch))
            for future in done:
                if (error := future.exception()) is not None:
                    raise error

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"stripe-{self.sync_name}") as pool:
            try:
                for row in rows:
                    pending.add(pool.submit(self._write, row))
                    # A bounded window: memory stays flat however long the plan.
                    if len(pending) >= 2 * self.concurrency:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        collect(done)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    collect(done)
            finally:
                # Even when stopping on an error, what Stripe accepted is recorded: writes not
                # started are dropped, writes in flight are waited for.
                for future in pending:
                    future.cancel()
                finished, _ = wait(pending)
                batch.extend(f.result() for f in finished if not f.cancelled() and f.exception() is None)
                self._flush(batch, outcomes)
        progress.update(len(outcomes), force=True)
        return outcomes

    def _flush(self, batch: list[Outcome], outcomes: list[Outcome]) -> None:
        if batch:
            self.on_batch(list(batch))
            outcomes.extend(batch)
            batch.clear()

    def _created(self, row: PlannedRow, new_version: bool = False) -> str:
        """Create the row's object; its id. A replayed create is believed only while the object it
        names is still in Stripe with the row's key: otherwise an earlier create under this key made
        an object since deleted, or given another key by hand, and Stripe hands its id back for a
        day. Only now is it known that a new object is wanted."""
        values = row.candidate.values
        key = create_key(self.sync_name, row)
        created = self.objects.create(values, key, new_version=new_version)
        if created.replayed and not self._holds_key(created.id, row.key):
            self.logger.info(
                "Stripe replayed the create of %s, since deleted or given another %s; creating anew",
                created.id,
                self.key_field,
            )
            created = self.objects.create(values, f"{key}-after-{created.id}", new_version=new_version)
        return created.id

    def _holds_key(self, stripe_id: str, key: str) -> bool:
        found = self.objects.retrieve(stripe_id)
        return found is not None and key in index_by_key([found], self.key_field)

    def _create(self, row: PlannedRow) -> Outcome:
        return Outcome(row, WriteStatus.CREATED, self._created(row))

    def _new_version(self, row: PlannedRow) -> Outcome:
        """Create the new version, then archive the old one. A run stopped in between left the key
        with the new version: the next run finds it there (one lookup of the key), adopts it and
        only archives, so that a rerun never creates a second new version."""
        object_type = self.objects.object_type
        desired = row.candidate.values
        key = row.candidate.key or ""
        holders = ObjectLookup(self.objects, object_type.listed_by or "id", "per_key")({key: key}).found.get(key)
        holder = holders[0] if holders else None
        same_version = holder is not None and not object_type.immutable_changes(
            {change.field for change in diff(holder.values, desired)}
        )
        if holder is not None and holder.id != row.target_id and same_version:
            self.logger.info("%s %s already holds %r; archiving %s", object_type.name, holder.id, key, row.target_id)
            new_id = holder.id
        else:
            new_id = self._created(row, new_version=True)
        self._archive(row)
        return Outcome(row, WriteStatus.NEW_VERSION, new_id)

    def _archive(self, row: PlannedRow) -> None:
        self.objects.update(row.target_id, {"active": "false"}, write_key(self.sync_name, self.run_id, row, "archive"))

    def _archived(self, row: PlannedRow) -> Outcome:
        try:
            self._archive(row)
        except StripeRequestError as error:
            if error.http_status != 404:
                raise
            self.logger.info(
                "%s %s is no longer in Stripe: nothing to archive", self.objects.object_type.name, row.stripe_id
            )
        return Outcome(row, WriteStatus.ARCHIVED, row.stripe_id)

    def _write(self, row: PlannedRow) -> Outcome:
        try:
            if row.action is Action.CREATE:
                return self._create(row)
            if row.action is Action.NEW_VERSION:
                return self._new_version(row)
            if row.action is Action.ARCHIVE:
                return self._archived(row)
            try:
                values = row.values_to_send(self.objects.object_type)
                self.objects.update(row.target_id, values, write_key(self.sync_name, self.run_id, row))
                return Outcome(row, WriteStatus.UPDATED, row.stripe_id)
            except StripeRequestError as error:
                if error.http_status != 404:
                    raise
                name = self.objects.object_type.name
                return Outcome(row, WriteStatus.MISSING, row.stripe_id, f"{name} {row.stripe_id} is not in Stripe")
        except StripeRequestError as error:
            return Outcome(row, WriteStatus.FAILED, row.stripe_id, str(error))
