"""Sending a run's meter events: chunks from the ledger, many requests in flight, each chunk settled
in the ledger as soon as Stripe has answered for all of it.

    chunk read from the warehouse -> marked attempted -> batches queued -> workers send them ->
    last answer of the chunk -> chunk settled (accepted; refused ones removed; in doubt ones left)

Memory stays flat: the queue holds at most `concurrency` batches, so reading waits for sending.
A chunk is a contiguous range of identifiers, so marking and settling it is one statement each.
If the run stops (Stripe unreachable, the process killed), the chunks in flight stay attempted and
unsettled: in doubt, for the next run to send again within Stripe's 24-hour deduplication.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from census_stripe.stripe_client.meter_types import BatchOutcome, Delivery, MeterEvent, MeterEventApi

SAMPLE = 100  # events or rows of each kind kept for the run's metadata (all are in the ledger or rejections)


@dataclass
class Chunk:
    events: list[MeterEvent]
    batches_left: int = 0
    refused: list[tuple[MeterEvent, str]] = field(default_factory=list)
    in_doubt: list[tuple[MeterEvent, str]] = field(default_factory=list)

    @property
    def first(self) -> str:
        return self.events[0].identifier

    @property
    def last(self) -> str:
        return self.events[-1].identifier

    @property
    def accepted(self) -> int:
        return len(self.events) - len(self.refused) - len(self.in_doubt)

    def record(self, batch: list[MeterEvent], outcome: BatchOutcome) -> None:
        self.batches_left -= 1
        if outcome.delivery is Delivery.REFUSED:
            self.refused += [(event, outcome.error or "refused") for event in batch]
        elif outcome.delivery is Delivery.IN_DOUBT:
            self.in_doubt += [(event, outcome.error or "no answer") for event in batch]


@dataclass
class DeliveryReport:
    accepted: int = 0
    refused: int = 0
    in_doubt: int = 0
    seconds: float = 0.0  # from the first chunk read to the last answer

    @property
    def events_per_second(self) -> float:
        return self.accepted / self.seconds if self.seconds else 0.0

    refused_sample: list[tuple[MeterEvent, str]] = field(default_factory=list)
    in_doubt_sample: list[tuple[MeterEvent, str]] = field(default_factory=list)

    def add(self, chunk: Chunk) -> None:
        self.accepted += chunk.accepted
        self.refused += len(chunk.refused)
        self.in_doubt += len(chunk.in_doubt)
        self.refused_sample += chunk.refused[: SAMPLE - len(self.refused_sample)]
        self.in_doubt_sample += chunk.in_doubt[: SAMPLE - len(self.in_doubt_sample)]


def batches(events: list[MeterEvent], size: int) -> Iterator[list[MeterEvent]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


async def deliver(
    chunks: Iterable[list[MeterEvent]],
    api: MeterEventApi,
    *,
    concurrency: int,
    before_sending: Callable[[Chunk], None],
    after_answers: Callable[[Chunk], None],
) -> DeliveryReport:
    """Send every chunk; `before_sending` runs before a chunk's first request, `after_answers` once
    Stripe has answered for all of it. A StripeUnreachableError or StripeAccessError stops everything."""
    report = DeliveryReport()
    started = time.perf_counter()
    queue: asyncio.Queue[tuple[Chunk, list[MeterEvent]] | None] = asyncio.Queue(maxsize=concurrency)

    async def read() -> None:
        for events in chunks:
            chunk = Chunk(events)
            parts = list(batches(events, api.batch_size))
            chunk.batches_left = len(parts)
            before_sending(chunk)
            for batch in parts:
                await queue.put((chunk, batch))
        for _ in range(concurrency):
            await queue.put(None)

    async def send() -> None:
        while (item := await queue.get()) is not None:
            chunk, batch = item
            chunk.record(batch, await api.send(batch))
            if chunk.batches_left == 0:
                after_answers(chunk)
                report.add(chunk)

    async with asyncio.TaskGroup() as group:
        group.create_task(read())
        for _ in range(concurrency):
            group.create_task(send())
    report.seconds = time.perf_counter() - started
    return report
