"""The values the meter event path passes around, free of the SDK: the run's code imports them
without loading stripe-python until it sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import NamedTuple, Protocol

from census_stripe.stripe_client.meters import BillingMeter
from census_stripe.stripe_client.rate_limit import AdaptiveBucket, EndpointPacer, RateLimits, is_live_key, shared_budget

# Their endpoints in the account's budget (rate_limit.py).
V1_METER_EVENTS = "meter_events.create"


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
    # Never left the process, or only to be answered 429 (Stripe refuses those before doing anything),
    # the run stopping first or every retry taken: Stripe has none of them, the next run sends them.
    UNSENT = "unsent"


@dataclass(frozen=True)
class BatchOutcome:
    delivery: Delivery
    error: str | None = None


class Pacer(Protocol):
    """How long to wait before the next request (`reserve`), and a 429 taken (`throttle`)."""

    def reserve(self) -> float: ...

    def throttle(self) -> None: ...


@dataclass(frozen=True)
class MeterLimits:
    """Requests per second: Stripe's live limits by default, less a share for other senders, and
    the account's budget, which v1 meter events share in test mode."""

    v1_requests_per_second: float = 1000.0  # live mode
    stream_requests_per_second: float = 10000.0
    headroom: float = 0.05
    concurrency: int = 200  # requests in flight
    # The limits the key's other requests are paced by: the same ones give the same budget (rate_limit.py).
    account: RateLimits = field(default_factory=RateLimits)

    def pacer(self, requests_per_second: float) -> AdaptiveBucket:
        ceiling = requests_per_second * (1 - self.headroom)
        return AdaptiveBucket(ceiling, floor=1.0, recovery_seconds=10.0)

    def account_pacer(self, api_key: str, api_base: str | None, endpoint: str) -> EndpointPacer:
        """`endpoint`'s requests within the budget of the key's account, shared with every sync of the process."""
        return shared_budget(api_key, api_base, self.account).pacer(endpoint)

    def v1_pacer(self, api_key: str, api_base: str | None) -> Pacer:
        """Stripe allows 1,000 v1 meter events a second apart from the account's limit only in live
        mode; in test mode they count against the account's basic limit (25/s), with all its other requests."""
        if is_live_key(api_key):
            return self.pacer(self.v1_requests_per_second)
        return self.account_pacer(api_key, api_base, V1_METER_EVENTS)


class MeterEventApi(Protocol):
    batch_size: int

    @property
    def calls(self) -> int: ...

    @property
    def rate_limited(self) -> int: ...

    async def send(self, events: list[MeterEvent]) -> BatchOutcome: ...

    async def cancel(self, event_name: str, identifier: str) -> BatchOutcome: ...

    async def meters(self) -> list[BillingMeter]: ...

    async def close(self) -> None: ...
