"""Stripe Customers through the official SDK: reads for matching, writes for applying a plan.

Everything here speaks in flat field values (`{"address.city": "Paris"}`), the sync's own
vocabulary; `to_params` and `flatten_customer` translate to and from Stripe's nested objects.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

import stripe

from census_stripe.apply.rate_limit import RateBudget, RateLimits, is_live_key, shared_budget
from census_stripe.fields import METADATA_PREFIX, WHOLE_OBJECTS, lookup_field

T = TypeVar("T")

FieldValues = Mapping[str, "str | None"]
PAGE_SIZE = 100
STRIPE_API = "https://api.stripe.com"


def make_client(api_key: str, api_base: str | None = None, max_network_retries: int = 2) -> stripe.StripeClient:
    """A client of the official SDK; thread-safe (one HTTP session per thread)."""
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=max_network_retries,
    )


def dashboard_url(customer_id: str, api_key: str, api_base: str | None) -> str | None:
    """Where a person looks at a customer in Stripe's dashboard; None for another server (a local
    emulator has no dashboard, and its API answers a browser with 401)."""
    if api_base and api_base.rstrip("/") != STRIPE_API:
        return None
    mode = "" if is_live_key(api_key) else "test/"
    return f"https://dashboard.stripe.com/{mode}customers/{customer_id}"


def blank_to_none(value: str | None) -> str | None:
    """Stripe reads an empty string as "unset": both spellings of nothing compare equal."""
    return value if value not in ("", None) else None


def flatten_customer(customer: Mapping) -> dict[str, str | None]:
    """A customer's fields as dotted paths, the way sync files name them."""
    flat: dict[str, str | None] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, Mapping):
            for key, child in value.items():
                walk(f"{prefix}{key}.", child)
        else:
            flat[prefix[:-1]] = None if value is None else str(value)

    for name in ("email", "name", "phone", "description", "tax_exempt", "balance", *WHOLE_OBJECTS):
        if name in customer:
            walk(f"{name}.", customer[name])
    for key, value in (customer.get("metadata") or {}).items():
        flat[METADATA_PREFIX + key] = value
    return {path: blank_to_none(value) for path, value in flat.items()}


def to_params(values: FieldValues, unset_missing: bool) -> dict:
    """Stripe request parameters for flat field values.

    On create (`unset_missing=False`) empty values are left out. On update they become "" so that
    Stripe clears them, and an object whose mapped parts are all empty is cleared whole.
    """
    params: dict = {}
    objects_with_content: set[str] = set()
    for path, value in values.items():
        value = blank_to_none(value)
        field = lookup_field(path)
        if value is None and (not unset_missing or field.object_name):
            continue
        if field.object_name:
            objects_with_content.add(field.object_name)
        *parents, leaf = path.split(".")
        target = params
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = "" if value is None else int(value) if field.integer else value
    if unset_missing:
        touched_objects = {lookup_field(path).object_name for path in values} - {None}
        for name in touched_objects - objects_with_content:
            params[name] = ""
    return params


@dataclass(frozen=True)
class StripeAccount:
    """The Stripe account and mode a key writes to; sync state belongs to exactly one.

    `id` is Stripe's `acct_...`, or, for a server that has no account endpoint (a local
    emulator), an identity derived from the API base and the key's mode.
    """

    id: str
    livemode: bool

    @property
    def mode(self) -> str:
        return "live" if self.livemode else "test"

    def __str__(self) -> str:
        return f"{self.id} ({self.mode} mode)"


@dataclass(frozen=True)
class StripeCustomer:
    id: str
    values: dict[str, str | None]
    created: int = 0  # unix seconds, to tell duplicates apart


def _customer(customer: dict) -> StripeCustomer:
    return StripeCustomer(customer["id"], flatten_customer(customer), customer.get("created") or 0)


@dataclass(frozen=True)
class Page:
    customers: list[StripeCustomer]
    has_more: bool


class CallCounter:
    """Stripe API calls made, by endpoint, and the 429s among them; shared across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: dict[str, int] = defaultdict(int)
        self.rate_limited = 0

    def add(self, endpoint: str) -> None:
        with self._lock:
            self.counts[endpoint] += 1

    def add_rate_limited(self) -> None:
        with self._lock:
            self.rate_limited += 1

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class StripeAccessError(RuntimeError):
    """Stripe refused the API key itself (401, 403): no row can succeed. The key is redacted."""


def redact(text: str, secret: str) -> str:
    return text.replace(secret, "[redacted]") if secret else text


# 409: a request with the same idempotency key is still in flight; 5xx: Stripe's side failed.
RETRYABLE_STATUSES = {409, 429, 500, 502, 503, 504}
WRITE_CHECK_ID = "cus_census_stripe_write_access_check"


def backoff_seconds(attempt: int) -> float:
    """0.5 s doubling to 8 s, with full jitter, so that retrying threads do not march in step."""
    return min(8.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class StripeCustomers:
    """The customer endpoints a sync uses: within the account's rate budget, retried, counted.

    Every request first waits for the account's budget (apply/rate_limit.py). 429s, 5xx and
    connection errors are retried here with backoff, a write with its own idempotency key, so a
    retry replays rather than repeats. Errors leave here without the API key in them.
    """

    def __init__(
        self, api_key: str, api_base: str | None = None, budget: RateBudget | None = None, max_attempts: int = 6
    ):
        self._api_key = api_key
        # Retries are ours, not the SDK's: each one must pass through the rate budget.
        self._customers = make_client(api_key, api_base, max_network_retries=0).v1.customers
        self.budget = budget or shared_budget(api_key, api_base, RateLimits())
        self.max_attempts = max_attempts
        self.calls = CallCounter()

    def describe(self, error: stripe.StripeError) -> str:
        """Stripe's own explanation of an error, fit for logs and metadata."""
        message = error.user_message or str(error)
        status = f" (HTTP {error.http_status})" if error.http_status else ""
        return redact(f"{type(error).__name__}{status}: {message}", self._api_key)

    def _call(self, endpoint: str, request: Callable[[], T]) -> T:
        for attempt in range(1, self.max_attempts + 1):
            self.budget.acquire(endpoint)
            self.calls.add(endpoint)
            try:
                return request()
            except (stripe.AuthenticationError, stripe.PermissionError) as error:
                raise StripeAccessError(self.describe(error)) from None
            except stripe.RateLimitError:
                self.calls.add_rate_limited()
                self.budget.rate_limited(endpoint)
                if attempt == self.max_attempts:
                    raise
            except stripe.APIConnectionError:
                if attempt == self.max_attempts:
                    raise
            except stripe.StripeError as error:
                if error.http_status not in RETRYABLE_STATUSES or attempt == self.max_attempts:
                    raise
            time.sleep(backoff_seconds(attempt))
        raise AssertionError("unreachable")

    def iter_pages(self, email: str | None = None) -> Iterator[Page]:
        """Customers 100 per call, optionally those with exactly this email; strongly consistent,
        unlike Search, which lags writes."""
        params: dict = {"limit": PAGE_SIZE} | ({"email": email} if email is not None else {})
        while True:
            page = self._call("list", lambda params=params: self._customers.list(params=params))
            more = bool(page.has_more and page.data)
            yield Page([_customer(c.to_dict()) for c in page.data], more)
            if not more:
                return
            params = params | {"starting_after": page.data[-1].id}

    def iter_all(self) -> Iterator[StripeCustomer]:
        for page in self.iter_pages():
            yield from page.customers

    def create(self, values: FieldValues, idempotency_key: str) -> str:
        params = to_params(values, unset_missing=False)
        options = {"idempotency_key": idempotency_key}
        return self._call("create", lambda: self._customers.create(params=params, options=options)).id

    def update(self, customer_id: str, values: FieldValues, idempotency_key: str) -> None:
        params = to_params(values, unset_missing=True)
        options = {"idempotency_key": idempotency_key}
        self._call("update", lambda: self._customers.update(customer_id, params=params, options=options))

    def check_write_access(self) -> None:
        """Fail now, before any row, if the key may not write customers (e.g. a read-only
        restricted key). Updates a customer that cannot exist: 404 means writes are allowed."""
        try:
            self._call("update", lambda: self._customers.update(WRITE_CHECK_ID, params={"description": ""}))
        except stripe.InvalidRequestError as error:
            if error.http_status != 404:
                raise
