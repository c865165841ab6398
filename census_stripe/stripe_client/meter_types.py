"""The values the meter event path passes around, free of the SDK: the run's code imports them
without loading stripe-python until it sends."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import NamedTuple, Protocol

from census_stripe.stripe_client.rate_limit import AdaptiveBucket


class MeterEvent(NamedTuple):
    """A tuple: a run builds a million of them."""

    identifier: str
    event_name: str
    customer: str
    value: str
    timestamp: datetime  # UTC


class Delivery(Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"  # Stripe answered no: it has none of these events
    IN_DOUBT = "in_doubt"  # no answer: Stripe may have them


@dataclass(frozen=True)
class BatchOutcome:
    delivery: Delivery
    error: str | None = None


@dataclass(frozen=True)
class MeterLimits:
    """Requests per second: Stripe's live limits by default, less a share for other senders."""

    v1_requests_per_second: float = 1000.0
    stream_requests_per_second: float = 10000.0
    headroom: float = 0.05
    concurrency: int = 200  # requests in flight

    def pacer(self, requests_per_second: float) -> AdaptiveBucket:
        ceiling = requests_per_second * (1 - self.headroom)
        return AdaptiveBucket(ceiling, floor=1.0, recovery_seconds=10.0)


class MeterEventApi(Protocol):
    batch_size: int

    @property
    def calls(self) -> int: ...

    @property
    def rate_limited(self) -> int: ...

    async def send(self, events: list[MeterEvent]) -> BatchOutcome: ...

    async def cancel(self, event_name: str, identifier: str) -> BatchOutcome: ...

    async def close(self) -> None: ...
