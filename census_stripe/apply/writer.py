"""Applying a plan: one Stripe write per changed row, every result accounted for.

A row that Stripe refuses is recorded with Stripe's message and the run goes on. Results are
handed over in batches as Stripe accepts them, so the caller can record state then and never before.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import stripe

from census_stripe.plan.planner import Action, PlannedRow
from census_stripe.stripe_api import StripeCustomers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    row: PlannedRow
    status: str  # created | updated | failed
    stripe_id: str | None
    error: str | None = None


def idempotency_key(sync_name: str, row: PlannedRow, operation: str) -> str:
    """The same write of the same row gets the same key, so a retry replays instead of repeating."""
    parts = [sync_name, row.candidate.key or "", row.candidate.row_hash, operation, row.stripe_id or ""]
    return f"census-stripe-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:40]}"


def _is_missing(error: stripe.StripeError) -> bool:
    return error.http_status == 404


class StripeWriter:
    def __init__(
        self,
        customers: StripeCustomers,
        sync_name: str,
        recreate_deleted: bool,
        on_batch: Callable[[list[Outcome]], None],
        batch_size: int = 100,
    ):
        self.customers = customers
        self.sync_name = sync_name
        self.recreate_deleted = recreate_deleted
        self.on_batch = on_batch
        self.batch_size = batch_size

    def apply(self, rows: Iterable[PlannedRow]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        batch: list[Outcome] = []
        for row in rows:
            batch.append(self._write(row))
            if len(batch) >= self.batch_size:
                self._flush(batch, outcomes)
        self._flush(batch, outcomes)
        return outcomes

    def _flush(self, batch: list[Outcome], outcomes: list[Outcome]) -> None:
        if batch:
            self.on_batch(list(batch))
            outcomes.extend(batch)
            batch.clear()

    def _create(self, row: PlannedRow, operation: str) -> Outcome:
        values = row.candidate.values
        customer_id = self.customers.create(values, idempotency_key(self.sync_name, row, operation))
        return Outcome(row, "created", customer_id)

    def _write(self, row: PlannedRow) -> Outcome:
        try:
            if row.action is Action.CREATE:
                return self._create(row, "create")
            try:
                self.customers.update(
                    row.stripe_id, row.values_to_send(), idempotency_key(self.sync_name, row, "update")
                )
                return Outcome(row, "updated", row.stripe_id)
            except stripe.InvalidRequestError as error:
                if not _is_missing(error):
                    raise
                if not self.recreate_deleted:
                    return Outcome(row, "failed", row.stripe_id, f"customer {row.stripe_id} was deleted in Stripe")
                log.info("customer %s was deleted in Stripe; creating it again", row.stripe_id)
                return self._create(row, f"recreate:{row.stripe_id}")
        except stripe.StripeError as error:
            return Outcome(row, "failed", row.stripe_id, self.customers.describe(error))
