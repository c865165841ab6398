"""Stripe's meter event endpoints, asynchronously, through the official SDK over aiohttp.

Usage is sent at Stripe's own limits (1,000 requests/s for v1 in live mode, 10,000 for the v2
stream, each 100 events), far beyond what a thread per request sustains on a small machine: one
event loop keeps hundreds of requests in flight. In test mode v1 meter events count against the
account's basic limit instead, within the budget the key's other requests share (meter_types.py).

- `V1MeterEvents`: `POST /v1/billing/meter_events`, one event per request. Stripe refusing an
  identifier it already has (`resource_already_exists`) means the event is there: accepted.
- `MeterEventStream`: a meter event session's token, renewed before it expires (or when Stripe
  says it has), then `POST /v2/billing/meter_event_stream` with up to 100 events; Stripe validates
  them later, so an accepted request is the last word the sync gets.

Each `send` returns a `BatchOutcome`: accepted, refused by Stripe (it has none of the batch), in
doubt (no answer after every retry: it may have them), or unsent (every attempt answered 429, which
Stripe answers before doing anything). 429s and 5xx are retried with backoff; Stripe deduplicating
the identifier makes every retry safe.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import stripe
from stripe.params.billing import MeterEventAdjustmentCreateParams, MeterEventCreateParams, MeterListParams
from stripe.params.v2.billing import MeterEventStreamCreateParams

from census_stripe.stripe_client.errors import (
    StripeAccessError,
    StripeRequestError,
    StripeUnreachableError,
    redact,
)
from census_stripe.stripe_client.meter_types import BatchOutcome, Delivery, MeterEvent, MeterLimits, Pacer
from census_stripe.stripe_client.meters import BillingMeter
from census_stripe.stripe_client.values import PAGE_SIZE, STRIPE_API_BASE

STRIPE_METER_EVENTS_BASE = "https://meter-events.stripe.com"
STREAM_BATCH = 100  # Stripe's limit of events per stream request
MAX_ATTEMPTS = 8
SESSION_RENEW_BEFORE = timedelta(minutes=1)
# After this many requests in a row got no answer, Stripe is taken for unreachable and the run stops.
UNREACHABLE_AFTER = 20


class AsyncStripe:
    """An SDK client whose requests share one aiohttp connection pool, as large as the requests in
    flight. Made inside the event loop that uses it."""

    def __init__(self, api_key: str, api_base: str | None, concurrency: int):
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=concurrency, ssl=ssl.create_default_context(cafile=stripe.ca_bundle_path)
        )
        self._http = stripe.AIOHTTPClient(connector=connector)
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={
                "api": api_base or STRIPE_API_BASE,
                "meter_events": api_base or STRIPE_METER_EVENTS_BASE,
            },
            http_client=self._http,
            max_network_retries=0,  # retried here, with the pacing and the unreachable check
        )

    async def close(self) -> None:
        await self._http.close_async()


class SessionExpired(Exception):
    """Stripe says the meter event session's token has expired (its clock ran ahead of ours)."""


class _Attempts:
    """Retries one request: 429s slow the pacer down, no answers count toward `unreachable`."""

    def __init__(self, api_key: str, pacer: Pacer):
        self.api_key = api_key
        self.pacer = pacer
        self.calls = 0
        self.rate_limited = 0
        self.session_tokens: list[str] = []  # meter event sessions' tokens: secrets too, while they last
        self._unanswered_in_row = 0

    def describe(self, error: stripe.StripeError) -> str:
        """Stripe's explanation on one line, without the key or a session token (errors of the SDK
        may quote the request's Authorization header)."""
        message = " ".join((error.user_message or str(error)).split())
        status = f" (HTTP {error.http_status})" if error.http_status else ""
        text = f"{type(error).__name__}{status}: {message}"
        for secret in (self.api_key, *self.session_tokens):
            text = redact(text, secret)
        return text

    async def run(
        self, request: Callable[[], Any], accepted_when: Callable[[stripe.StripeError], bool]
    ) -> BatchOutcome:
        outcome, _ = await self.call(request, accepted_when)
        return outcome

    async def call(
        self, request: Callable[[], Any], accepted_when: Callable[[stripe.StripeError], bool]
    ) -> tuple[BatchOutcome, Any]:
        """The outcome, and Stripe's answer when it accepted. Without an answer, the request is in
        doubt only if an attempt may have reached Stripe: a 429 is refused before anything is done."""
        failure = "not attempted"
        reached = False
        for attempt in range(MAX_ATTEMPTS):
            await asyncio.sleep(self.pacer.reserve())
            self.calls += 1
            try:
                answer = await request()
            except stripe.StripeError as error:
                outcome = self._judge(error, accepted_when)
                if outcome is not None:
                    return outcome, None
                reached = reached or not isinstance(error, stripe.RateLimitError)
                failure = self.describe(error)
            else:
                self._unanswered_in_row = 0
                return BatchOutcome(Delivery.ACCEPTED), answer
            await asyncio.sleep(min(8.0, 0.25 * 2**attempt) * (0.5 + random.random()))
        return BatchOutcome(Delivery.IN_DOUBT if reached else Delivery.UNSENT, failure), None

    def _judge(
        self, error: stripe.StripeError, accepted_when: Callable[[stripe.StripeError], bool]
    ) -> BatchOutcome | None:
        """The outcome an error settles, or None to try again."""
        if isinstance(error, (stripe.AuthenticationError, stripe.PermissionError)):
            raise StripeAccessError(self.describe(error), error.http_status) from None
        if isinstance(error, stripe.TemporarySessionExpiredError):
            raise SessionExpired from None
        if isinstance(error, stripe.RateLimitError):
            self.rate_limited += 1
            self.pacer.throttle()
            return None
        if isinstance(error, stripe.APIConnectionError) or (error.http_status or 0) >= 500:
            self._unanswered_in_row += 1
            if self._unanswered_in_row >= UNREACHABLE_AFTER:
                raise StripeUnreachableError(self.describe(error)) from None
            return None
        self._unanswered_in_row = 0
        if accepted_when(error):
            return BatchOutcome(Delivery.ACCEPTED)
        return BatchOutcome(Delivery.REFUSED, self.describe(error))


def _already_there(error: stripe.StripeError) -> bool:
    return error.code == "resource_already_exists"


class _MeterEventEndpoints:
    """What both ways of sending share: the client, the retries, cancelling an event, and the meters."""

    def __init__(
        self, api_key: str, api_base: str | None, limits: MeterLimits, payload_keys: tuple[str, str], pacer: Pacer
    ):
        self._stripe = AsyncStripe(api_key, api_base, limits.concurrency)
        self._attempts = _Attempts(api_key, pacer)
        # Listing meters is an ordinary request, within the account's budget.
        self._reads = _Attempts(api_key, limits.account_pacer(api_key, api_base, "billing_meters.list"))
        self._customer_key, self._value_key = payload_keys

    @property
    def calls(self) -> int:
        return self._attempts.calls + self._reads.calls

    @property
    def rate_limited(self) -> int:
        return self._attempts.rate_limited + self._reads.rate_limited

    async def meters(self) -> list[BillingMeter]:
        """Every billing meter of the account, active or not: `GET /v1/billing/meters`, 100 a page."""
        found: list[BillingMeter] = []
        params: MeterListParams = {"limit": PAGE_SIZE}
        while True:
            outcome, page = await self._reads.call(
                partial(self._stripe.client.v1.billing.meters.list_async, params=params), lambda error: False
            )
            if outcome.delivery in (Delivery.IN_DOUBT, Delivery.UNSENT):
                raise StripeUnreachableError(f"the billing meters could not be listed: {outcome.error}")
            if outcome.delivery is Delivery.REFUSED:
                raise StripeRequestError(f"the billing meters could not be listed: {outcome.error}")
            found += [BillingMeter.from_stripe(meter.to_dict()) for meter in page.data]
            if not (page.has_more and page.data):
                return found
            params = {"limit": PAGE_SIZE, "starting_after": page.data[-1].id}

    def _payload(self, event: MeterEvent) -> dict[str, str]:
        return {self._customer_key: event.customer, self._value_key: event.value}

    async def cancel(self, event_name: str, identifier: str) -> BatchOutcome:
        """A meter event adjustment: Stripe stops counting the event (within its 24 hours)."""
        params: MeterEventAdjustmentCreateParams = {
            "event_name": event_name,
            "type": "cancel",
            "cancel": {"identifier": identifier},
        }
        return await self._attempts.run(
            lambda: self._stripe.client.v1.billing.meter_event_adjustments.create_async(params=params),
            lambda error: False,
        )

    async def close(self) -> None:
        await self._stripe.close()


class V1MeterEvents(_MeterEventEndpoints):
    batch_size = 1

    def __init__(self, api_key: str, api_base: str | None, limits: MeterLimits, payload_keys: tuple[str, str]):
        super().__init__(api_key, api_base, limits, payload_keys, limits.v1_pacer(api_key, api_base))

    async def send(self, events: list[MeterEvent]) -> BatchOutcome:
        [event] = events
        params: MeterEventCreateParams = {
            "event_name": event.event_name,
            "identifier": event.identifier,
            "timestamp": int(event.timestamp.replace(tzinfo=UTC).timestamp()),
            "payload": self._payload(event),
        }
        # A raw request: the answer is not read, so the SDK need not build an object of it (at
        # 1,000 events/s that is a tenth of the sender's CPU). Errors are raised all the same.
        return await self._attempts.run(
            lambda: self._stripe.client.raw_request_async("post", "/v1/billing/meter_events", **params),
            _already_there,
        )


class MeterEventStream(_MeterEventEndpoints):
    batch_size = STREAM_BATCH

    def __init__(self, api_key: str, api_base: str | None, limits: MeterLimits, payload_keys: tuple[str, str]):
        super().__init__(api_key, api_base, limits, payload_keys, limits.pacer(limits.stream_requests_per_second))
        self._token: str | None = None
        self._expires_at = datetime.min.replace(tzinfo=UTC)
        self._session_lock = asyncio.Lock()
        self.sessions = 0

    async def _stream(self, params: MeterEventStreamCreateParams, token: str) -> None:
        await self._stripe.client.v2.billing.meter_event_stream.create_async(params=params, options={"api_key": token})

    async def _session_token(self, stale: str | None = None) -> str:
        async with self._session_lock:
            fresh = self._token is not None and self._token != stale
            if fresh and datetime.now(UTC) < self._expires_at - SESSION_RENEW_BEFORE:
                return self._token  # type: ignore[return-value]
            create = self._stripe.client.v2.billing.meter_event_session.create_async
            outcome, session = await self._attempts.call(create, lambda error: False)
            if outcome.delivery is not Delivery.ACCEPTED:
                raise StripeUnreachableError(f"no meter event session: {outcome.error}")
            self.sessions += 1
            self._token = session.authentication_token
            self._attempts.session_tokens.append(session.authentication_token)
            self._expires_at = datetime.fromisoformat(session.expires_at)
            return self._token

    async def send(self, events: list[MeterEvent]) -> BatchOutcome:
        params: MeterEventStreamCreateParams = {
            "events": [
                {
                    "event_name": event.event_name,
                    "identifier": event.identifier,
                    "timestamp": event.timestamp.isoformat(timespec="milliseconds") + "Z",
                    "payload": self._payload(event),
                }
                for event in events
            ]
        }
        token = await self._session_token()
        for _ in range(2):
            try:
                return await self._attempts.run(partial(self._stream, params, token), lambda error: False)
            except SessionExpired:
                # Stripe's clock ran past the session before ours did: a new session, once.
                token = await self._session_token(stale=token)
        return BatchOutcome(Delivery.REFUSED, "Stripe called two meter event sessions in a row expired")
