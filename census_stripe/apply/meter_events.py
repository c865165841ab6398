"""Sending a run's meter events: chunks from the ledger, many requests in flight, each chunk settled
in the ledger as soon as Stripe has answered for all of it.

    chunk read whole -> the batches a free sender takes marked attempted -> sent -> last answer
    of the chunk -> chunk settled (accepted; refused ones removed; unsent ones back to not attempted;
    in doubt ones left)

A batch is marked attempted (committed) only when a sender is free to send it at once: the events
marked and not yet sent are never more than the requests the run is about to make, so a run killed
mid-partition leaves in doubt what it had sent (and at most those few requests besides). Marks cover
contiguous ranges of identifiers, one statement each, however many events they hold.
If the run stops on its own (Stripe unreachable), what it marked and never sent is settled as unsent:
not in doubt, sent by the next run whenever it comes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property

from census_stripe.stripe_client.meter_types import BatchOutcome, Delivery, MeterEvent, MeterEventApi

SAMPLE = 100  # events or rows of each kind kept for the run's metadata (all are in the ledger or rejections)


@dataclass(eq=False)
class Chunk:
    """Events read whole from the ledger, in identifier order, and what became of their batches."""

    events: list[MeterEvent]
    batch_size: int
    resent: frozenset[str] = frozenset()  # attempted by an earlier run: in doubt already, never "unsent"
    marked: int = 0  # batches marked attempted, from the first
    answers: dict[int, BatchOutcome] = field(default_factory=dict)
    settled: bool = False

    @cached_property
    def batches(self) -> list[list[MeterEvent]]:
        size = self.batch_size
        return [self.events[start : start + size] for start in range(0, len(self.events), size)]

    @property
    def complete(self) -> bool:
        return len(self.answers) == len(self.batches)

    def identifiers(self, start: int, end: int) -> tuple[str, str]:
        """The first and last identifier of batches `start` to `end` (excluded)."""
        return self.batches[start][0].identifier, self.batches[end - 1][-1].identifier

    def open_events(self) -> list[tuple[MeterEvent, Delivery, str]]:
        """The marked events Stripe did not accept, each with why: refused, in doubt or unsent. A batch
        being sent when the run stopped may have left: in doubt."""
        found: list[tuple[MeterEvent, Delivery, str]] = []
        for index in range(self.marked):
            outcome = self.answers.get(index, BatchOutcome(Delivery.IN_DOUBT, "the run stopped before the answer"))
            if outcome.delivery is Delivery.ACCEPTED:
                continue
            for event in self.batches[index]:
                delivery = outcome.delivery
                if delivery is Delivery.UNSENT and event.identifier in self.resent:
                    delivery = Delivery.IN_DOUBT  # an earlier run's request may be in Stripe
                found.append((event, delivery, outcome.error or delivery.value))
        return found

    @property
    def marked_events(self) -> int:
        return sum(len(batch) for batch in self.batches[: self.marked])


@dataclass
class DeliveryReport:
    accepted: int = 0
    refused: int = 0
    in_doubt: int = 0
    unsent: int = 0  # marked, never sent (every try answered 429, or the run stopped): sent next run
    seconds: float = 0.0  # from the first chunk read to the last answer

    @property
    def events_per_second(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    refused_sample: list[tuple[MeterEvent, str]] = field(default_factory=list)
    in_doubt_sample: list[tuple[MeterEvent, str]] = field(default_factory=list)

    def add(self, chunk: Chunk, open_events: list[tuple[MeterEvent, Delivery, str]]) -> None:
        by_kind: dict[Delivery, list[tuple[MeterEvent, str]]] = {kind: [] for kind in Delivery}
        for event, delivery, why in open_events:
            by_kind[delivery].append((event, why))
        self.accepted += chunk.marked_events - len(open_events)
        self.refused += len(by_kind[Delivery.REFUSED])
        self.in_doubt += len(by_kind[Delivery.IN_DOUBT])
        self.unsent += len(by_kind[Delivery.UNSENT])
        self.refused_sample += by_kind[Delivery.REFUSED][: SAMPLE - len(self.refused_sample)]
        self.in_doubt_sample += by_kind[Delivery.IN_DOUBT][: SAMPLE - len(self.in_doubt_sample)]


async def deliver(
    chunks: Iterable[Chunk],
    api: MeterEventApi,
    *,
    concurrency: int,
    before_sending: Callable[[Chunk, int, int], None],
    after_answers: Callable[[Chunk, list[tuple[MeterEvent, Delivery, str]]], None],
    report: DeliveryReport,
) -> None:
    """Send every chunk; `before_sending(chunk, start, end)` runs right before batches `start` to
    `end` (excluded) are sent, as many as there are free senders (once a quarter of them, or what
    is left of the chunk, are free); `after_answers` once Stripe has answered for all of a chunk, or
    once the run stops. A StripeUnreachableError or StripeAccessError stops everything; `report`
    then holds what was settled."""
    started = time.perf_counter()
    idle = concurrency
    mark_at_least = max(1, concurrency // 4)
    freed = asyncio.Event()
    unsettled: set[Chunk] = set()

    def settle(chunk: Chunk) -> None:
        chunk.settled = True
        unsettled.discard(chunk)
        open_events = chunk.open_events()
        after_answers(chunk, open_events)
        report.add(chunk, open_events)

    async def send(chunk: Chunk, index: int) -> None:
        nonlocal idle
        try:
            chunk.answers[index] = await api.send(chunk.batches[index])
        finally:
            idle += 1
            freed.set()
        if chunk.complete:
            settle(chunk)

    try:
        async with asyncio.TaskGroup() as group:
            for chunk in chunks:
                unsettled.add(chunk)
                while chunk.marked < len(chunk.batches):
                    # Marks in groups of a quarter of the senders at least: one statement marks
                    # many requests, and the others keep Stripe busy meanwhile.
                    while idle < min(mark_at_least, len(chunk.batches) - chunk.marked):
                        freed.clear()
                        await freed.wait()
                    start, end = chunk.marked, min(len(chunk.batches), chunk.marked + idle)
                    before_sending(chunk, start, end)
                    chunk.marked, idle = end, idle - (end - start)
                    for index in range(start, end):
                        group.create_task(send(chunk, index))
    finally:
        # Stopped (or done): what was marked is settled with what is known of it.
        for chunk in list(unsettled):
            if chunk.marked:
                settle(chunk)
        report.seconds = time.perf_counter() - started
