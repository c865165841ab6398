"""Stripe's rate limits, respected from our side: one budget per Stripe account per process.

Stripe allows about 100 requests/s per account in live mode and 25/s in test mode, and 25/s per
endpoint (creating and updating customers are separate endpoints, and so are those of products and
of prices; all of them draw on the one account budget). A bulk sync should leave
headroom for the account's own application, which draws on the same budget. So:

- every request takes a token from the account's bucket and from its endpoint's bucket;
- rates start at the ceiling minus the headroom;
- a 429 means someone else is using the budget too: the rate of that endpoint, and of the
  account, halves at once, then climbs back linearly to the ceiling over `recovery_seconds`.

v1 meter events have a limit of their own (1,000/s) only in live mode: in test mode they count
against the account's basic limit like any request (meter_types.py paces them by the key's mode).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimits:
    """Requests per second. `account=None` takes Stripe's default for the key's mode."""

    account: float | None = None
    # Customers' endpoints keep their bare names; products' and prices' are `products.create`, ...
    endpoints: tuple[tuple[str, float], ...] = tuple(
        (f"{prefix}{verb}", 25.0) for prefix in ("", "products.", "prices.") for verb in ("create", "update")
    )
    endpoint_default: float = 25.0
    headroom: float = 0.1  # share of each limit left for the account's other traffic
    recovery_seconds: float = 10.0
    floor: float = 1.0  # never slower than this, however many 429s


def is_live_key(api_key: str) -> bool:
    """A live-mode key (secret or restricted); the mode decides the account's default rate limit."""
    return api_key.startswith(("sk_live_", "rk_live_"))


def default_account_rate(api_key: str) -> float:
    return 100.0 if is_live_key(api_key) else 25.0


class AdaptiveBucket:
    """A token bucket whose rate halves on a 429 and recovers linearly to its ceiling."""

    def __init__(self, ceiling: float, floor: float, recovery_seconds: float):
        self.ceiling = ceiling
        self.floor = min(floor, ceiling)
        self.recovery_seconds = recovery_seconds
        self._lock = threading.Lock()
        self._rate_after_throttle = ceiling
        self.throttled_at: float | None = None  # the time.monotonic() of the last 429's halving
        self._tokens = 1.0
        self._updated = time.monotonic()

    def rate(self, now: float | None = None) -> float:
        if self.throttled_at is None:
            return self.ceiling
        now = time.monotonic() if now is None else now
        climbed = (now - self.throttled_at) / self.recovery_seconds * self.ceiling
        return min(self.ceiling, self._rate_after_throttle + climbed)

    def reserve(self) -> float:
        """Take a token; returns how long to wait before using it. Bursts stay within one token."""
        with self._lock:
            now = time.monotonic()
            rate = self.rate(now)
            self._tokens = min(1.0, self._tokens + (now - self._updated) * rate)
            self._updated = now
            self._tokens -= 1
            return 0.0 if self._tokens >= 0 else -self._tokens / rate

    def throttle(self) -> None:
        with self._lock:
            now = time.monotonic()
            self._rate_after_throttle = max(self.floor, self.rate(now) / 2)
            self.throttled_at = now


class RateBudget:
    """One Stripe account's budget, shared by every sync and thread in the process."""

    def __init__(self, account_rate: float, limits: RateLimits):
        self.limits = limits
        scale = 1 - limits.headroom
        self.account = self._bucket(account_rate * scale)
        self._endpoints: dict[str, AdaptiveBucket] = {}
        self._lock = threading.Lock()
        self.throttled = 0

    def _bucket(self, ceiling: float) -> AdaptiveBucket:
        return AdaptiveBucket(ceiling, self.limits.floor, self.limits.recovery_seconds)

    def endpoint(self, name: str) -> AdaptiveBucket:
        with self._lock:
            if name not in self._endpoints:
                limit = dict(self.limits.endpoints).get(name, self.limits.endpoint_default)
                ceiling = limit * (1 - self.limits.headroom)
                self._endpoints[name] = self._bucket(ceiling)
            return self._endpoints[name]

    def pacer(self, endpoint: str) -> EndpointPacer:
        """The endpoint's requests within this budget, for a sender that waits on its own (asyncio)."""
        return EndpointPacer(self, endpoint)

    def acquire(self, endpoint: str) -> None:
        """Block until a request to `endpoint` fits both the account's and the endpoint's rate."""
        wait = self.pacer(endpoint).reserve()
        if wait > 0:
            time.sleep(wait)

    def rate_limited(self, endpoint: str) -> None:
        self.throttled += 1
        self.account.throttle()
        self.endpoint(endpoint).throttle()


class EndpointPacer:
    """One endpoint's requests in an account's budget, paced as an AdaptiveBucket is: `reserve`
    says how long to wait before the request, `throttle` takes a 429."""

    def __init__(self, budget: RateBudget, endpoint: str):
        self.budget = budget
        self.endpoint = endpoint

    def reserve(self) -> float:
        return max(self.budget.account.reserve(), self.budget.endpoint(self.endpoint).reserve())

    def throttle(self) -> None:
        self.budget.rate_limited(self.endpoint)


_budgets: dict[tuple[str, str | None, RateLimits], RateBudget] = {}
_budgets_lock = threading.Lock()


def shared_budget(api_key: str, api_base: str | None, limits: RateLimits) -> RateBudget:
    """The budget of the account behind this key, shared by every sync that asks with the same limits.

    Accounts are told apart by key (hashed, never stored) and server; two keys of one account get
    two budgets, so give all syncs of an account the same key and the same limits.
    """
    identity = (hashlib.sha256(api_key.encode()).hexdigest(), api_base, limits)
    with _budgets_lock:
        if identity not in _budgets:
            _budgets[identity] = RateBudget(limits.account or default_account_rate(api_key), limits)
        return _budgets[identity]
