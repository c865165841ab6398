"""Stripe objects (customers, products, prices) through the official SDK: reads for matching,
writes for applying a plan, within the account's rate budget (rate_limit.py), in the flat field
values each object type (census_stripe/objects/) translates to and from Stripe's."""

from __future__ import annotations

import hashlib
import random
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, TypeVar

import stripe

from census_stripe.objects.base import FieldValues, StripeObjectType
from census_stripe.objects.customer import CUSTOMER
from census_stripe.stripe_client.errors import (
    StripeAccessError,
    StripeRequestError,
    StripeUnreachableError,
    check_api_key,
    redact,
)
from census_stripe.stripe_client.rate_limit import RateBudget, RateLimits, is_live_key, shared_budget
from census_stripe.stripe_client.values import (
    PAGE_SIZE,
    STRIPE_API_BASE,
    Created,
    Page,
    StripeAccount,
    StripeObject,
)

T = TypeVar("T")


def make_client(api_key: str, api_base: str | None = None, max_network_retries: int = 2) -> stripe.StripeClient:
    """A client of the official SDK; thread-safe (one HTTP session per thread)."""
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base} if api_base else None,
        max_network_retries=max_network_retries,
    )


def local_account(api_base: str, api_key: str) -> StripeAccount:
    """The identity of a server that cannot name its account (a local emulator): its address."""
    digest = hashlib.sha256(api_base.rstrip("/").encode()).hexdigest()[:12]
    return StripeAccount(f"local_{digest}", is_live_key(api_key))


def key_bound_account(api_key: str) -> StripeAccount:
    """The identity of an account whose key may not read it: the key itself, never shown.
    A new key then looks every customer up afresh, which is safe, only slower."""
    digest = hashlib.sha256(api_key.encode()).hexdigest()[:12]
    return StripeAccount(f"key_{digest}", is_live_key(api_key))


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


class CircuitBreaker:
    """Stops every call once Stripe looks unreachable, instead of retrying each row to exhaustion.

    It opens after `threshold` attempts in a row, counted across all threads, found Stripe
    unreachable (a connection error or a 5xx) with no answer in between. Any other answer closes
    the count again, except 429s and 409s: they say that Stripe is busy, which the rate budget and
    the retries handle. Once open it stays open: the run stops, and the next run resumes.
    """

    def __init__(self, address: str, threshold: int):
        self.address = address
        self.threshold = threshold
        self._lock = threading.Lock()
        self._failures_in_a_row = 0
        self._opened = threading.Event()
        self._reason = ""

    def answered(self) -> None:
        with self._lock:
            self._failures_in_a_row = 0

    def failed(self, reason: str) -> None:
        with self._lock:
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= self.threshold and not self._opened.is_set():
                self._reason = reason
                self._opened.set()

    def raise_if_open(self) -> None:
        if self._opened.is_set():
            raise StripeUnreachableError(f"Stripe unreachable at {self.address} ({self._reason})")

    def sleep(self, seconds: float) -> None:
        """A backoff that ends early when the breaker opens, so that no thread sleeps on a dead server."""
        self._opened.wait(seconds)


# Stripe's side failed: retried, and counted by the circuit breaker like a connection error.
FAILING_STATUSES = {500, 502, 503, 504}
# Stripe is busy, not failing: 409, a request with the same idempotency key is still in flight;
# 429, over the rate limit. Retried, and neither trips nor resets the breaker.
BUSY_STATUSES = {409, 429}
WRITE_CHECK_ID = "census_stripe_write_access_check"


def stripe_advice(error: stripe.StripeError) -> bool | None:
    """Whether Stripe says a retry can succeed, in its `Stripe-Should-Retry` header; None when it
    does not say. The SDK follows it over the status, and so do we: "false" on a 5xx a retry would
    only replay, "true" on, say, a lock timeout."""
    headers = {name.lower(): value for name, value in (error.headers or {}).items()}
    return {"true": True, "false": False}.get(headers.get("stripe-should-retry") or "")


def backoff_seconds(attempt: int) -> float:
    """0.5 s doubling to 8 s, with full jitter, so that retrying threads do not march in step."""
    return min(8.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


class StripeObjects:
    """The endpoints a sync uses for one object type (customers unless told otherwise): within the
    account's rate budget, retried, counted.

    Every request first waits for the account's budget (rate_limit.py). 429s, 409s, 5xx and
    connection errors are retried here with backoff, unless Stripe's `Stripe-Should-Retry` header
    says otherwise (either way); a write keeps its idempotency key, so a retry replays rather than
    repeats. A circuit breaker stops every call once Stripe looks unreachable. Errors leave here
    as this module's own, without the API key in them.
    """

    def __init__(
        self,
        api_key: str,
        api_base: str | None = None,
        budget: RateBudget | None = None,
        max_attempts: int = 6,
        unreachable_after: int = 5,
        object_type: StripeObjectType = CUSTOMER,
    ):
        check_api_key(api_key)
        self._api_key = api_key
        self.object_type = object_type
        # Retries are ours, not the SDK's: each one must pass through the rate budget.
        self._client = make_client(api_key, api_base, max_network_retries=0)
        # The type's service: `client.v1.customers`, `.products`, `.prices`.
        self._service: Any = getattr(self._client.v1, object_type.plural)
        self.api_base = api_base or STRIPE_API_BASE
        self.budget = budget or shared_budget(api_key, api_base, RateLimits())
        self.max_attempts = max_attempts
        # Below max_attempts, so that a single call (the plan's listing) stops on a dead server
        # after a few seconds of backoff rather than the whole series.
        self.breaker = CircuitBreaker(self.api_base, unreachable_after)
        self.calls = CallCounter()

    def describe(self, error: stripe.StripeError) -> str:
        """Stripe's own explanation of an error on one line, fit for logs and metadata; the key redacted."""
        message = " ".join((error.user_message or str(error)).split())
        status = f" (HTTP {error.http_status})" if error.http_status else ""
        return redact(f"{type(error).__name__}{status}: {message}", self._api_key)

    def _call(self, endpoint: str, request: Callable[[], T]) -> T:
        for attempt in range(1, self.max_attempts + 1):
            self.breaker.raise_if_open()
            self.budget.acquire(endpoint)
            self.calls.add(endpoint)
            try:
                result = request()
            except stripe.StripeError as error:
                failure = error
            else:
                self.breaker.answered()
                return result
            # Raised outside the `except`, so no SDK error travels along as the context of ours.
            if isinstance(failure, (stripe.AuthenticationError, stripe.PermissionError)):
                raise StripeAccessError(self.describe(failure), failure.http_status)
            failing = isinstance(failure, stripe.APIConnectionError) or failure.http_status in FAILING_STATUSES
            if failing:
                self.breaker.failed(self.describe(failure))
                self.breaker.raise_if_open()
            elif failure.http_status not in BUSY_STATUSES:
                self.breaker.answered()
            if isinstance(failure, stripe.RateLimitError):
                self.calls.add_rate_limited()
                self.budget.rate_limited(endpoint)
            retry = stripe_advice(failure)
            if retry is None:
                retry = failing or failure.http_status in BUSY_STATUSES
            if attempt == self.max_attempts or not retry:
                raise StripeRequestError(self.describe(failure), failure.http_status)
            self.breaker.sleep(backoff_seconds(attempt))
        raise AssertionError("the last attempt returns or raises")

    def _object(self, found: stripe.StripeObject) -> StripeObject:
        values = found.to_dict()
        return StripeObject(values["id"], self.object_type.flatten(values), values.get("created") or 0)

    def iter_pages(self, filters: Mapping[str, Any] | None = None) -> Iterator[Page]:
        """Objects 100 per call, optionally filtered (`email`, `lookup_keys`); strongly consistent,
        unlike Search, which lags writes."""
        params: dict[str, Any] = {"limit": PAGE_SIZE} | dict(filters or {})
        endpoint = self.object_type.endpoint("list")
        while True:
            page = self._call(endpoint, partial(self._service.list, params=params))
            more = bool(page.has_more and page.data)
            yield Page([self._object(found) for found in page.data], more)
            if not more:
                return
            params = params | {"starting_after": page.data[-1].id}

    def iter_all(self) -> Iterator[StripeObject]:
        for page in self.iter_pages():
            yield from page.objects

    def identify_account(self) -> StripeAccount:
        """The account behind the key: Stripe's `GET /v1/account`. A server without that
        endpoint (404) is identified by its address; a key that may not read its account (403,
        a restricted key without Account read) by the key."""
        try:
            account = self._call("account", lambda: self._client.v1.accounts.retrieve_current())
        except StripeRequestError as error:
            # Servers without the endpoint may not even answer in Stripe's error format.
            if error.http_status != 404:
                raise
            return local_account(self.api_base, self._api_key)
        except StripeAccessError as error:
            if error.http_status != 403:
                raise
            return key_bound_account(self._api_key)
        return StripeAccount(account.id, is_live_key(self._api_key))

    @property
    def connection_fingerprint(self) -> str:
        """Names the (server, key) pair without revealing the key: one key always reaches the same
        account, so the account identified for it can be remembered."""
        return hashlib.sha256(f"{self.api_base.rstrip('/')}|{self._api_key}".encode()).hexdigest()[:32]

    def create(self, values: FieldValues, idempotency_key: str, new_version: bool = False) -> Created:
        """Create an object; with `new_version`, one that takes the key over from the object that
        holds it (a price's lookup key)."""
        build = self.object_type.new_version_params if new_version else self.object_type.create_params
        if build is None:
            raise ValueError(f"a {self.object_type.name} has no versions")
        params = build(values)
        options = {"idempotency_key": idempotency_key}
        endpoint = self.object_type.endpoint("create")
        created = self._call(endpoint, lambda: self._service.create(params=params, options=options))
        headers = created.last_response.headers if created.last_response else {}
        replayed = any(name.lower() == "idempotent-replayed" and value == "true" for name, value in headers.items())
        return Created(created.id, replayed)

    def retrieve(self, stripe_id: str) -> StripeObject | None:
        """The object, or None when it is not there or deleted (Stripe still returns deleted
        customers, marked `deleted`)."""
        try:
            found = self._call(self.object_type.endpoint("retrieve"), lambda: self._service.retrieve(stripe_id))
        except StripeRequestError as error:
            if error.http_status != 404:
                raise
            return None
        return None if found.to_dict().get("deleted") else self._object(found)

    def exists(self, stripe_id: str) -> bool:
        return self.retrieve(stripe_id) is not None

    def update(self, stripe_id: str, values: FieldValues, idempotency_key: str) -> None:
        params = self.object_type.update_params(values)
        options = {"idempotency_key": idempotency_key}
        endpoint = self.object_type.endpoint("update")
        self._call(endpoint, lambda: self._service.update(stripe_id, params=params, options=options))

    def check_write_access(self) -> None:
        """Fail now, before any row, if the key may not write these objects (e.g. a read-only
        restricted key). Updates an object that cannot exist: 404 means writes are allowed."""
        endpoint = self.object_type.endpoint("update")
        params = self.object_type.update_params({self.object_type.write_check_field: None})
        try:
            self._call(endpoint, lambda: self._service.update(WRITE_CHECK_ID, params=params))
        except StripeRequestError as error:
            if error.http_status != 404:
                raise
