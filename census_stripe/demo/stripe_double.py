"""A test double of Stripe's Customer, Product, Price and meter event APIs, for what localstripe
cannot do: volume, 429s, idempotency, latency, lost responses, and Prices and usage at all.

It is an HTTP server, run as its own process, modelled on Stripe's documented behaviour
(docs/stripe.md). It shares no code with the engine it judges.

- The account: `GET /v1/account` answers with the configured `account_id`.
- Customers: create, update, retrieve, delete, and list (newest first, `limit` up to 100,
  `starting_after`, an exact and case-sensitive `email` filter). A deleted customer is gone from
  lists and updates (404), but retrieving it answers `{"id": ..., "deleted": true}`, as Stripe
  does. Updates merge `metadata` (a "" value deletes the key), replace `address` and `shipping`
  whole, and unset a field sent as "".
- Products: create (with your own `id` if you like; one already taken is a 400
  `resource_already_exists`), update (metadata merges, "" unsets), retrieve, and list (newest
  first, `active` and `ids` filters).
- Prices: create, update, retrieve, list (`active`, `product`, up to 10 `lookup_keys`). Amount,
  currency, recurrence and product are fixed at creation: sending one on update is a 400
  `parameter_unknown`, as Stripe answers. A lookup key belongs to one price of the account; taking
  it from another needs `transfer_lookup_key=true`. `tax_behavior` may be set once. Prices are
  never deleted; an archived (`active: false`) price is still retrieved and listed.
- Billing meters: `POST /v1/billing/meters` (`display_name`, `event_name`, `default_aggregation[formula]`
  sum, count or last; `customer_mapping[event_payload_key]`, default `stripe_customer_id`, with
  `customer_mapping[type]=by_id`; `value_settings[event_payload_key]`, default `value`), retrieve, list
  (newest first, `status` filter), `POST .../{id}/deactivate` and `.../{id}/reactivate`. An event name
  belongs to one active meter: a second is a 400 on `event_name`.
- Meter events (usage), on the double's clock, `time.time() + clock_offset_seconds`, each judged by
  the active meter of its `event_name`:
  - `POST /v1/billing/meter_events` (form): `event_name` and `identifier` (1 to 100 characters; an
    identifier is made up when none is sent), `payload` (holding its meter's customer and value keys),
    `timestamp` (seconds; default now). Refused with a 400: a bad shape, no active meter for the event
    name (param `event_name`), a timestamp more than 35 days back or 5 minutes ahead (param
    `timestamp`), a payload without the meter's keys (`parameter_missing`), an identifier counted
    within the last 24 hours (`resource_already_exists`).
    A day later the same identifier is counted again, as Stripe does: `counted_more_than_once` shows it.
    An unknown customer, or a value that is no decimal number, is answered 200 and goes to the error
    report, uncounted, as Stripe judges those after answering.
  - `POST /v1/billing/meter_event_adjustments` (`type=cancel`, `cancel[identifier]`) takes an event
    counted within the last 24 hours out of the sums; any other is a 400 on `cancel[identifier]`.
  - `POST /v2/billing/meter_event_session` (JSON, a secret key) gives an `authentication_token` that
    lives `session_ttl_seconds`. `POST /v2/billing/meter_event_stream` (JSON, that token as Bearer)
    takes 1 to 100 events (`timestamp` an RFC 3339 string) and answers `{}` once their shape is
    checked. An unknown or expired token is v2's 401 `temporary_session_expired` /
    `billing_meter_event_session_expired` (the SDK raises `stripe.TemporarySessionExpiredError`).
    The events are judged after the reply, as v1 judges its: the refused ones go to the error report
    (with Stripe's codes: `no_meter`, `archived_meter` for a deactivated one, `timestamp_too_far_in_past`,
    `meter_event_customer_not_found`, ...), an
    identifier counted within the day is dropped without a word (stats `meter_event_duplicates`).
    The thread that answered judges one waiting batch right after its answer: a client that sends
    faster than the double judges is slowed down rather than the backlog growing.
  - Kept compact, for millions of events: per identifier when it was last counted and how often
    (about 300 bytes each), per meter and customer the sum.
- Rate limits: token buckets per endpoint (`create`, `update`, `list`, `retrieve`, `delete` for
  customers; `product_create`, `price_update`, `meter_event_adjustment_create` and so on) and one for
  the account; a request over either gets a 429 *before* the idempotency layer sees it. As at Stripe,
  v1 meter events sent with a live-mode key (`meter_event_rate`) and the stream (`meter_event_stream_rate`)
  have limits of their own, apart from the account's; v1 meter events sent with a test-mode key take the
  account's bucket instead, and so does a session.
- Idempotency: the first response to an `Idempotency-Key` is stored (400s and 500s included) and
  replayed for the same key, with the header `Idempotent-Replayed: true`, for 24 hours on the
  double's clock (as Stripe prunes keys after 24 hours; tests move the clock with `advance_clock`);
  after that the key is new again. The same key with other parameters is a 400
  `idempotency_error`. Not for the meter event stream and its sessions, whose events carry their
  identifiers instead.
- Faults: a chosen share of writes fails with a 500 before the endpoint runs (nothing done,
  nothing stored for the key), or after it ran (the response is lost: the object exists and the
  key replays the success), plus a fixed latency per request. Or every write answered with one
  chosen status, optionally with Stripe's `Stripe-Should-Retry` header, Stripe's advice on whether
  retrying can succeed; or the next few writes with chosen statuses, one each.
- Invalid emails: customer writes of an email matching a configured pattern get a 400
  `email_invalid`, as Stripe answers an address it cannot accept.
- Keys: `sk_`/`rk_` keys are accepted; a key listed as read-only gets 403 on writes. The stats
  count the API requests made with each key, by a hash of it (`key_stat`), and the requests and
  completed writes per endpoint (`requests_<endpoint>`, `done_<endpoint>`), the events in accepted
  stream requests (`meter_events_streamed`) and the sessions made (`meter_event_sessions`).
- Persistence (optional): with `--store PATH`, the objects, the meter events and stored idempotent
  responses are read from that JSON file at start, written back shortly after each burst of writes,
  and on SIGTERM. Without it, everything lives in memory.

- Kill points (`PausePoint`): told to pause after N accepted requests to chosen endpoints, the
  double answers exactly N of them 2xx, then holds the next ones (received whole, not served) and
  reports itself paused, until told to go on: the held requests are then served, or dropped
  unserved. A test kills its client while the double is paused, so the kill lands exactly there.

Control endpoints (no auth): GET /_double/stats, POST /_double/config (JSON), POST /_double/reset,
POST /_double/customers (JSON list of customer params, created directly, for fixtures),
GET /_double/meter_events (`counted` without the cancelled, `counted_more_than_once`, `cancelled`,
`sums` per event_name and customer, the last 1,000 `errors` of the error report), POST /_double/pause
(`{"after": N, "endpoints": [...]}`), GET /_double/pause (its state), POST /_double/resume
(`{"drop_waiting": false}`). Stats and meter events are read once the events streamed until then are
judged. A reset drops the requests a pause holds.

    python -m census_stripe.demo.stripe_double --port 12111 --latency 0.15 --endpoint-rate 25
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from bisect import bisect_left, insort
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache, partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlparse

from census_stripe.demo.local_stripe import announce_port, start_server, stop_process_group

WHOLE_OBJECTS = ("address", "shipping")
ACTIONS = ("create", "update", "list", "retrieve", "delete")
WRITES = ("create", "update", "delete")
# Endpoint names by resource; customers keep the plain names the stats have always used.
ENDPOINT_PREFIX = {"customers": "", "products": "product_", "prices": "price_"}
DELETABLE = ("customers",)  # products with prices, and prices, are archived in Stripe, never deleted
ENDPOINTS = tuple(
    prefix + action
    for resource, prefix in ENDPOINT_PREFIX.items()
    for action in ACTIONS
    if action != "delete" or resource in DELETABLE
)
READ_ONLY = ("id", "object", "created", "livemode")

PRODUCT_FIELDS = (
    "name",
    "description",
    "active",
    "metadata",
    "images",
    "url",
    "unit_label",
    "tax_code",
    "statement_descriptor",
    "shippable",
)
PRODUCT_REQUIRED = ("name",)  # on create; it can never be unset either
PRODUCT_BOOLEANS = ("active", "shippable")
MAX_IMAGES = 8
STATEMENT_DESCRIPTOR_LENGTH = 22
STATEMENT_DESCRIPTOR_FORBIDDEN = "<>\\'\""

PRICE_MUTABLE = ("active", "nickname", "metadata", "lookup_key", "transfer_lookup_key", "tax_behavior")
PRICE_CREATE_ONLY = ("currency", "unit_amount", "unit_amount_decimal", "product", "recurring", "billing_scheme")
INTERVALS = {"day": 1095, "week": 156, "month": 36, "year": 3}  # the longest count: three years
USAGE_TYPES = ("licensed", "metered")
BILLING_SCHEMES = ("per_unit", "tiered")
TAX_BEHAVIORS = ("inclusive", "exclusive", "unspecified")
MAX_LOOKUP_KEY = 200
MAX_LOOKUP_KEYS_FILTER = 10
# The ISO codes Stripe accepts as a price's currency (its "supported currencies" page).
CURRENCIES = frozenset(
    "usd aed afn all amd ang aoa ars aud awg azn bam bbd bdt bgn bhd bif bmd bnd bob brl bsd bwp byn bzd cad cdf "
    "chf clp cny cop crc cve czk djf dkk dop dzd egp etb eur fjd fkp gbp gel gip gmd gnf gtq gyd hkd hnl htg huf "
    "idr ils inr isk jmd jod jpy kes kgs khr kmf krw kwd kyd kzt lak lbp lkr lrd lsl mad mdl mga mkd mmk mnt mop "
    "mur mvr mwk mxn myr mzn nad ngn nio nok npr nzd omr pab pen pgk php pkr pln pyg qar ron rsd rub rwf sar sbd "
    "scr sek sgd shp sle sos srd std szl thb tjs tnd top try ttd twd tzs uah ugx uyu uzs vnd vuv wst xaf xcd xof "
    "xpf yer zar zmw".split()
)
SAVE_DELAY_SECONDS = 0.2  # writes in one burst are saved together

# Usage-based billing: each meter event endpoint by its path, named as its stats and token bucket are.
METER_ENDPOINTS = {
    "v1/billing/meter_events": "meter_event_create",
    "v1/billing/meter_event_adjustments": "meter_event_adjustment_create",
    "v2/billing/meter_event_session": "meter_event_session",
    "v2/billing/meter_event_stream": "meter_event_stream",
}
METERS = ("v1", "billing", "meters")
# A billing meter's endpoints, by method and what follows /v1/billing/meters: (), (id,) or (id, action).
METER_ACTIONS = {
    ("POST", 0): "meter_create",
    ("GET", 0): "meter_list",
    ("GET", 1): "meter_retrieve",
    ("POST", "deactivate"): "meter_deactivate",
    ("POST", "reactivate"): "meter_reactivate",
}
METER_FORMULAS = ("count", "last", "sum")
METER_EVENT_FIELDS = frozenset(("event_name", "payload", "identifier", "timestamp"))
METER_EVENT_REQUIRED = frozenset(("event_name", "payload"))
MAX_METER_TEXT = 100  # characters of an event_name or identifier
MAX_STREAMED_EVENTS = 100  # per meter event stream request
DAY = 24 * 3600  # an identifier is unique, and its event cancellable, for a rolling day after receipt
MAX_EVENT_AGE = 35 * DAY
MAX_EVENT_LEAD = 300  # seconds an event's timestamp may be ahead of Stripe's clock
MAX_REPORTED_ERRORS = 1000
LIVE_KEY_PREFIXES = ("sk_live_", "rk_live_")
DECIMAL = re.compile(r"-?\d+(\.\d+)?")


@dataclass
class DoubleConfig:
    latency: float = 0.0  # seconds added to every API request
    account_rate: float = 0.0  # requests/s for the whole account; 0 = unlimited
    endpoint_rate: float = 0.0  # requests/s per endpoint; 0 = unlimited
    fail_before_rate: float = 0.0  # share of writes answered 500 without doing anything
    fail_after_rate: float = 0.0  # share of writes done, then answered 500 (a lost response)
    read_only_keys: list[str] = field(default_factory=list)
    invalid_emails: str = ""  # a regular expression: writes of a matching email get Stripe's 400 email_invalid
    refuse_writes_with: int = 0  # an HTTP status every write is answered with; 0 = off
    should_retry: str = ""  # "true" or "false": sent as Stripe-Should-Retry with that answer
    # The next writes are answered with these statuses, one each in turn, without anything done.
    next_write_statuses: list[int] = field(default_factory=list)
    seed: int = 0
    account_id: str = "acct_double"
    # The demo's customers live in localstripe, its meter events here: any cus_ id is then a customer.
    meter_customers_elsewhere: bool = False
    clock_offset_seconds: float = 0.0  # added to the real clock for meter events: tests jump a day ahead with it
    # requests/s to the v1 meter events of live-mode keys, a limit apart from the account's; 0 = unlimited.
    # Test-mode keys' v1 meter events take the account's bucket, as at Stripe.
    meter_event_rate: float = 0.0
    meter_event_stream_rate: float = 0.0  # requests/s to the v2 meter event stream; 0 = unlimited
    # Each token bucket holds this many seconds' worth of its rate, as Stripe's hold one. A test stretches it,
    # so that a bucket of a few requests refills one in a minute instead of within a busy machine's pause.
    rate_window_seconds: float = 1.0
    session_ttl_seconds: float = 900.0  # a meter event session's lifetime


class TokenBucket:
    """`rate` tokens per second, holding at most `seconds` seconds' worth (Stripe's: one second)."""

    def __init__(self, rate: float, seconds: float = 1.0):
        self.rate = rate
        self.capacity = rate * seconds
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def has_token(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return self.tokens >= 1

    def take(self) -> None:
        if self.rate > 0:
            self.tokens -= 1


ACTION_BY_METHOD = {
    ("POST", False): "create",
    ("POST", True): "update",
    ("GET", False): "list",
    ("GET", True): "retrieve",
    ("DELETE", True): "delete",
}


def object_target(method: str, parts: list[str]) -> tuple[str, str | None, str | None] | None:
    """The resource, object id and action of a request to the customers, products or prices API (the
    action None for a method the path does not take); None for any other path."""
    if len(parts) not in (2, 3) or parts[0] != "v1" or parts[1] not in ENDPOINT_PREFIX:
        return None
    object_id = parts[2] if len(parts) == 3 else None
    return parts[1], object_id, ACTION_BY_METHOD.get((method, object_id is not None))


def meter_action(method: str, rest: list[str]) -> str | None:
    """The billing meter endpoint of a request, by what follows /v1/billing/meters; None for none."""
    return METER_ACTIONS.get((method, rest[1] if len(rest) == 2 else len(rest)))


def endpoint_of(method: str, path: str) -> str | None:
    """The endpoint a request is for, named as its stats and token bucket are (`account` for
    `GET /v1/account`); None for a request no endpoint takes."""
    parts = [p for p in path.split("/") if p]
    if parts == ["v1", "account"] and method == "GET":
        return "account"
    if "/".join(parts) in METER_ENDPOINTS:
        return METER_ENDPOINTS["/".join(parts)]
    if tuple(parts[:3]) == METERS:
        return meter_action(method, parts[3:])
    target = object_target(method, parts)
    if target is None or target[2] is None:
        return None
    endpoint = ENDPOINT_PREFIX[target[0]] + target[2]
    return endpoint if endpoint in ENDPOINTS else None


class Admission(NamedTuple):
    """What the pause point decided for a request: serve it (`counted` when it counts against the
    pause), or drop it unserved."""

    serve: bool
    counted: bool = False
    generation: int = 0
    released: bool = False  # held, then served when its pause ended


class PausePoint:
    """A kill point for tests: once `after` requests to the chosen endpoints have been accepted
    (answered 2xx), further requests to them are held, received whole but not served, until the
    test says go on. Requests being served count against `after` too, so exactly `after` are
    accepted when the double reports itself paused, with no answer in flight: a test that then
    kills its client kills it exactly there. On going on, the requests held are either served (as
    Stripe serves a request whose client died after sending it) or dropped unserved (as if they had
    never arrived whole: the client sees its connection closed)."""

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.armed = False
        self.endpoints: frozenset[str] = frozenset()  # empty: every endpoint
        self.after = 0
        self.accepted = 0
        self.serving = 0
        self.waiting = 0
        self.released = 0  # requests held, then served, whose answer is not yet made
        # Each arming is a generation; the requests one holds are released when it ends, served or dropped.
        self.generation = 0
        self.dropped_at_end: dict[int, bool] = {}

    def arm(self, endpoints: list[str], after: int) -> None:
        with self.condition:
            self._end(drop_waiting=False)
            self.armed, self.endpoints, self.after = True, frozenset(endpoints), after
            self.accepted = self.serving = 0

    def release(self, drop_waiting: bool) -> None:
        """Ends the pause once the requests it held are served (or dropped): a test reading the
        double's counts after going on sees what they did."""
        with self.condition:
            self._end(drop_waiting)
            self.condition.wait_for(lambda: self.waiting == 0 and self.released == 0, timeout=60)

    def _end(self, drop_waiting: bool) -> None:
        if self.armed:
            self.dropped_at_end[self.generation] = drop_waiting
        self.armed = False
        self.generation += 1
        self.condition.notify_all()

    def enter(self, endpoint: str | None) -> Admission:
        """Admits a request at once, or holds it while the pause is reached."""
        with self.condition:
            if not self.armed or endpoint is None or (self.endpoints and endpoint not in self.endpoints):
                return Admission(serve=True)
            generation = self.generation
            self.waiting += 1
            self.condition.wait_for(lambda: self.generation != generation or self.accepted + self.serving < self.after)
            self.waiting -= 1
            if self.generation != generation:
                if self.dropped_at_end[generation]:
                    self.condition.notify_all()
                    return Admission(serve=False)
                self.released += 1
                return Admission(serve=True, released=True)
            self.serving += 1
            return Admission(serve=True, counted=True, generation=generation)

    def leave(self, admission: Admission, status: int) -> None:
        """A request admitted has been answered with `status`."""
        with self.condition:
            if admission.released:
                self.released -= 1
                self.condition.notify_all()
            if admission.counted and admission.generation == self.generation:
                self.serving -= 1
                self.accepted += 200 <= status < 300
                self.condition.notify_all()

    def state(self) -> dict:
        with self.condition:
            return {
                "armed": self.armed,
                "endpoints": sorted(self.endpoints),
                "after": self.after,
                "accepted": self.accepted,
                "serving": self.serving,
                "waiting": self.waiting,
                "paused": self.armed and self.accepted >= self.after and self.serving == 0,
            }


class Route(NamedTuple):
    """What a request asks for, and the rules it passes on the way there."""

    endpoint: str  # names the request's stats and its own token bucket
    serve: Callable[[], dict]  # the endpoint itself, run under the double's lock
    buckets: tuple[TokenBucket, ...]  # the rate limits it must pass
    write: bool
    resource: str
    object_id: str | None = None
    idempotent: bool = True  # the response to an Idempotency-Key is stored and replayed
    session: bool = False  # authenticated by a meter event session's token instead of an API key


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ):
        self.status = status
        error = {"message": message, "type": type_}
        if code:
            error["code"] = code
        if param:
            error["param"] = param
        self.body = {"error": error}
        self.headers = headers or {}


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


IDEMPOTENCY_KEY_SECONDS = 24 * 3600  # how long Stripe replays a key's stored response


def compact_response(
    fingerprint: str, status: int, body: str | dict, stored_at: float | None = None, *, now: float
) -> tuple[str, int, str, float]:
    """A stored idempotent response as kept now; files saved before hold the parameters' JSON itself as
    the fingerprint, the body as an object, and no moment (taken as stored now)."""
    return (
        digest(fingerprint) if fingerprint.startswith("[") else fingerprint,
        status,
        body if isinstance(body, str) else json.dumps(body),
        now if stored_at is None else stored_at,
    )


@lru_cache(maxsize=256)  # a few keys and session tokens, each of them sent thousands of times a second
def key_stat(api_key: str) -> str:
    """The stats entry counting API requests made with this key: a hash, so stats never hold a key."""
    return "key_sha256_" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


def parse_form(body: str) -> dict:
    """Stripe's form encoding (`address[city]=Paris`, `metadata[plan]=pro`, `lookup_keys[]=a`) as
    nested dicts; `name[]` appends to a list. Indexed lists (`images[0]=…`) stay dicts keyed "0", "1"…"""
    params: dict = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        if parts[-1] == "" and len(parts) > 1:
            target = params
            for part in parts[:-2]:
                target = target.setdefault(part, {})
            target.setdefault(parts[-2], []).append(value)
            continue
        target = params
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return params


def parse_body(path: str, body: str) -> dict:
    """v1 takes Stripe's form encoding, v2 JSON."""
    if not path.startswith("/v2/"):
        return parse_form(body)
    try:
        params = json.loads(body) if body else {}
    except ValueError:
        params = None
    if not isinstance(params, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="parameter_invalid")
    return params


def as_list(value, name: str) -> list:
    """A list parameter as either encoding sends it: `name[]=…` or `name[0]=…`."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and all(index.isdigit() for index in value):
        return [value[index] for index in sorted(value, key=int)]
    raise ApiError(400, f"Invalid array: {name}", code="parameter_invalid", param=name)


def as_boolean(value, name: str) -> bool:
    if value in ("true", "false"):
        return value == "true"
    raise ApiError(400, f"Invalid boolean: {value}", code="parameter_invalid", param=name)


def as_count(value, name: str, minimum: int) -> int:
    if isinstance(value, str) and value.isdigit() and int(value) >= minimum:
        return int(value)
    kind = "positive" if minimum > 0 else "non-negative"
    raise ApiError(400, f"Invalid {kind} integer: {name}", code="parameter_invalid_integer", param=name)


def choice(value, name: str, allowed) -> str:
    if value in allowed:
        return value
    raise ApiError(400, f"Invalid {name}: must be one of {', '.join(allowed)}", code="parameter_invalid", param=name)


def qualified(prefix: str, name: str) -> str:
    """A parameter's name as Stripe's errors give it: `events[0][payload]` for `payload` in `events[0]`."""
    return f"{prefix}[{name}]" if prefix else name


def required(params: dict, names, prefix: str = "") -> None:
    for name in names:
        if name not in params:
            param = qualified(prefix, name)
            raise ApiError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def refuse_unknown(params: dict, accepted, prefix: str = "") -> None:
    for name in params:
        if name not in accepted:
            param = qualified(prefix, name)
            raise ApiError(400, f"Received unknown parameter: {param}", code="parameter_unknown", param=param)


def refuse_empty(params: dict, names) -> None:
    """Stripe reads "" as "unset", which some fields may never be."""
    for name in names:
        if params.get(name) == "":
            raise ApiError(
                400,
                f"You passed an empty string for '{name}'. We assume empty values are an attempt to unset a "
                f"parameter; however '{name}' cannot be unset. You should remove '{name}' from your request or "
                "supply a non-empty value.",
                code="parameter_invalid_empty",
                param=name,
            )


def merge_metadata(target: dict, value) -> None:
    """Stripe merges metadata on update: "" for the whole of it clears it, "" for a key removes it."""
    if value == "":
        target["metadata"] = {}
        return
    if not isinstance(value, dict):
        raise ApiError(400, "Invalid object: metadata", code="parameter_invalid", param="metadata")
    for key, item in value.items():
        if item == "":
            target["metadata"].pop(key, None)
        else:
            target["metadata"][key] = item


def short_text(value, prefix: str, name: str) -> str:
    if isinstance(value, str) and 0 < len(value) <= MAX_METER_TEXT:
        return value
    param = qualified(prefix, name)
    raise ApiError(
        400,
        f"Invalid string: {param} must have 1 to {MAX_METER_TEXT} characters",
        code="parameter_invalid",
        param=param,
    )


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_seconds(value, param: str) -> float:
    """A v2 timestamp, an RFC 3339 string such as "2026-11-27T10:00:00.000Z", in seconds."""
    text = value if isinstance(value, str) else ""
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat knows no "Z"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ApiError(
            400, f"Invalid timestamp: {param} must be an RFC 3339 date-time", code="parameter_invalid", param=param
        )
    return moment.timestamp()


class MeterEvent(NamedTuple):
    identifier: str
    event_name: str
    payload: dict[str, str]
    timestamp: float  # seconds since the epoch


def meter_event(fields, prefix: str, now: float, seconds: Callable[[Any, str], float]) -> MeterEvent:
    """An event with its shape checked, as Stripe checks it on receipt; `seconds` reads its timestamp as
    the API version sends it. Whether it can be counted is judged apart (`Refusal`)."""
    if not isinstance(fields, dict):
        raise ApiError(400, f"Invalid object: {prefix}", code="parameter_invalid", param=prefix)
    # The stream brings tens of thousands of events a second: the usual case is told by two set comparisons,
    # and only a wrong event goes through the checks that name what is wrong with it.
    if not METER_EVENT_REQUIRED <= fields.keys() <= METER_EVENT_FIELDS:
        refuse_unknown(fields, METER_EVENT_FIELDS, prefix)
        required(fields, sorted(METER_EVENT_REQUIRED), prefix)
    payload = fields["payload"]
    if not isinstance(payload, dict) or not set(map(type, payload.values())) <= {str}:
        param = qualified(prefix, "payload")
        raise ApiError(400, f"Invalid object: {param} must map names to strings", code="parameter_invalid", param=param)
    identifier = fields.get("identifier")
    timestamp = fields.get("timestamp")
    return MeterEvent(
        identifier="mev_" + secrets.token_hex(12)
        if identifier is None
        else short_text(identifier, prefix, "identifier"),
        event_name=short_text(fields["event_name"], prefix, "event_name"),
        payload=payload,
        timestamp=now if timestamp is None else seconds(timestamp, qualified(prefix, "timestamp")),
    )


class Refusal(NamedTuple):
    """Why an event is not counted. `reason` is the code of Stripe's meter error report (where the v2
    stream's refusals go); v1 refuses the request itself, a 400 of `message`, `param` and `code`."""

    reason: str
    message: str
    param: str
    code: str | None = None

    def error(self) -> ApiError:
        return ApiError(400, self.message, code=self.code, param=self.param)


def refusal_on_receipt(event: MeterEvent, now: float, meter: dict | None) -> Refusal | None:
    """What Stripe's v1 answers with a 400: no active meter for the event's name (`meter`, the event
    name's active meter or else its last deactivated one), a timestamp out of its window, a payload
    without the meter's keys."""
    if meter is None:
        return Refusal(
            "no_meter",
            f"No active meter has the event name '{event.event_name}': create one (POST /v1/billing/meters).",
            "event_name",
            "resource_missing",
        )
    if meter["status"] != "active":
        return Refusal(
            "archived_meter",
            f"The meter {meter['id']} of the event name '{event.event_name}' is deactivated and accepts no events.",
            "event_name",
            "resource_missing",
        )
    if event.timestamp < now - MAX_EVENT_AGE:
        return Refusal(
            "timestamp_too_far_in_past",
            "The event timestamp cannot be more than 35 days in the past: expected a timestamp of at least "
            f"{int(now - MAX_EVENT_AGE)}.",
            "timestamp",
        )
    if event.timestamp > now + MAX_EVENT_LEAD:
        return Refusal(
            "timestamp_in_future",
            "The event timestamp cannot be more than 5 minutes in the future: expected a timestamp of at most "
            f"{int(now + MAX_EVENT_LEAD)}.",
            "timestamp",
        )
    customer_key, value_key = payload_keys(meter)
    if customer_key not in event.payload:
        return missing_from_payload(customer_key, "meter_event_no_customer_defined")
    if value_key not in event.payload:
        return missing_from_payload(value_key, "meter_event_value_not_found")
    return None


def payload_keys(meter: dict) -> tuple[str, str]:
    """The keys of an event's payload its meter reads: the customer's, then the value's."""
    return meter["customer_mapping"]["event_payload_key"], meter["value_settings"]["event_payload_key"]


def missing_from_payload(key: str, reason: str) -> Refusal:
    return Refusal(reason, f"The payload has no '{key}'.", f"payload[{key}]", "parameter_missing")


def as_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


class CountedEvent(NamedTuple):
    """One identifier's record, kept small: a run may count millions. The names are interned, shared by
    every event of the meter or the customer; the value is kept to take it out of the sums on cancel."""

    last_counted: float  # the double's time
    times: int  # counted in all, over every day it was sent again
    event_name: str
    customer: str
    value: str
    cancelled: bool


class MeterEvents:
    """Meter events counted, summed per meter (event_name) and customer, and the ones refused after the
    request was answered (Stripe's error report). Used under the double's lock."""

    def __init__(self, saved: dict | None = None):
        saved = saved or {}
        self.by_identifier: dict[str, CountedEvent] = {
            identifier: CountedEvent(last, times, sys.intern(name), sys.intern(customer), value, cancelled)
            for identifier, (last, times, name, customer, value, cancelled) in saved.get("by_identifier", {}).items()
        }
        self.sums: dict[str, dict[str, Decimal]] = {
            name: {customer: Decimal(total) for customer, total in totals.items()}
            for name, totals in saved.get("sums", {}).items()
        }
        self.counts: int = saved.get("counts", 0)
        self.cancels: int = saved.get("cancels", 0)
        self.counted_more_than_once: int = saved.get("counted_more_than_once", 0)
        self.errors: deque[dict] = deque(saved.get("errors", []), maxlen=MAX_REPORTED_ERRORS)

    def recently_counted(self, identifier: str, now: float) -> bool:
        record = self.by_identifier.get(identifier)
        return record is not None and now - record.last_counted < DAY

    def count(self, event: MeterEvent, customer: str, value: str, now: float) -> None:
        previous = self.by_identifier.get(event.identifier)
        times = previous.times + 1 if previous else 1
        if times == 2:
            self.counted_more_than_once += 1
        name, customer = sys.intern(event.event_name), sys.intern(customer)
        self.by_identifier[event.identifier] = CountedEvent(now, times, name, customer, value, False)
        totals = self.sums.setdefault(name, {})
        totals[customer] = totals.get(customer, Decimal(0)) + Decimal(value)
        self.counts += 1

    def cancel(self, identifier: str, event_name: str, now: float) -> bool:
        """Takes the event out of the sums, if it was counted under that name within the last day."""
        record = self.by_identifier.get(identifier)
        if record is None or record.cancelled or record.event_name != event_name or now - record.last_counted >= DAY:
            return False
        self.by_identifier[identifier] = record._replace(cancelled=True)
        self.sums[record.event_name][record.customer] -= Decimal(record.value)
        self.cancels += 1
        return True

    def refuse(self, event: MeterEvent, reason: str) -> None:
        self.errors.append({"identifier": event.identifier, "event_name": event.event_name, "reason": reason})

    def summary(self) -> dict:
        return {
            "counted": self.counts - self.cancels,
            "counted_more_than_once": self.counted_more_than_once,
            "cancelled": self.cancels,
            "sums": {name: {c: as_number(total) for c, total in totals.items()} for name, totals in self.sums.items()},
            "errors": list(self.errors),
        }

    def snapshot(self) -> dict:
        """Copies that later writes leave alone (the records are tuples), cheap enough to take under the lock."""
        return {
            "by_identifier": dict(self.by_identifier),
            "sums": {name: {c: str(total) for c, total in totals.items()} for name, totals in self.sums.items()},
            "counts": self.counts,
            "cancels": self.cancels,
            "counted_more_than_once": self.counted_more_than_once,
            "errors": list(self.errors),
        }


class Backlog:
    """Batches of streamed events accepted and not yet judged. Stripe answers the stream before it judges
    the events: the thread of each reply judges one waiting batch once its answer is sent, so a client that
    sends faster than the double can judge is slowed down, instead of the backlog (and the memory) growing
    without end as behind a worker thread that 200 request threads starve of the GIL."""

    def __init__(self, judge: Callable) -> None:
        self.judge = judge
        self.waiting: deque = deque()
        self.progress = threading.Condition()
        self.handed_in = 0
        self.done = 0

    def put(self, batch) -> None:
        with self.progress:
            self.handed_in += 1
        self.waiting.append(batch)

    def work_off(self) -> bool:
        """Judges the oldest waiting batch; False when none waits."""
        try:
            batch = self.waiting.popleft()
        except IndexError:
            return False
        try:
            self.judge(batch)
        finally:
            with self.progress:
                self.done += 1
                self.progress.notify_all()
        return True

    def settle(self) -> None:
        """Judges what waits and waits for what other threads are judging: all handed in so far is done."""
        with self.progress:
            target = self.handed_in
        while self.work_off():
            pass
        with self.progress:
            self.progress.wait_for(lambda: self.done >= target)


class Collection:
    """One kind of object, in creation order; lists walk that order backwards (newest first)."""

    def __init__(self, noun: str, url: str):
        self.noun = noun
        self.url = url
        self.objects: dict[str, dict] = {}
        self.order: list[str] = []
        self.position: dict[str, int] = {}  # id -> index in `order`

    def add(self, obj: dict) -> dict:
        self.objects[obj["id"]] = obj
        self.position[obj["id"]] = len(self.order)
        self.order.append(obj["id"])
        return obj

    def remove(self, id_: str) -> dict:
        obj = self.objects.pop(id_)
        self.order.remove(id_)
        self.position = {other: index for index, other in enumerate(self.order)}
        return obj

    def get(self, id_: str | None, status: int = 404, param: str | None = None) -> dict:
        if id_ not in self.objects:
            raise ApiError(status, f"No such {self.noun}: '{id_}'", code="resource_missing", param=param)
        return self.objects[id_]

    def page(self, query: dict, ids: list[str] | None = None) -> dict:
        """A page of `ids` (the ids chosen by a filter, in creation order; all by default)."""
        ids = self.order if ids is None else ids
        limit = int(query.get("limit", 10))
        if not 1 <= limit <= 100:
            raise ApiError(400, "Invalid integer: limit must be between 1 and 100")
        end = len(ids)
        if "starting_after" in query:
            after = self.get(query["starting_after"])["id"]
            end = (
                self.position[after]
                if ids is self.order
                else bisect_left(ids, self.position[after], key=self.position.__getitem__)
            )
        page = ids[max(0, end - limit) : end][::-1]
        return {
            "object": "list",
            "url": self.url,
            "has_more": end > limit,
            "data": [self.objects[i] for i in page],
        }

    def snapshot(self) -> list[dict]:
        return [self.objects[id_] for id_ in self.order]

    def restore(self, objects: list[dict]) -> None:
        for obj in objects:
            self.add(obj)


class StripeDouble:
    """The state and rules; the HTTP handler only translates."""

    def __init__(self, config: DoubleConfig):
        self.lock = threading.Lock()
        self.written = threading.Event()  # set after every completed write, for the store
        self.streamed = Backlog(self._count_streamed)
        self.pause = PausePoint()
        self.configure(config)
        self.reset()

    def configure(self, config: DoubleConfig) -> None:
        # Taken out of the configuration, so that a later change of it does not script them again.
        self.scripted_statuses = deque(config.next_write_statuses)
        self.config = replace(config, next_write_statuses=[])
        self.random = random.Random(config.seed)
        bucket = partial(TokenBucket, seconds=config.rate_window_seconds)
        self.account_bucket = bucket(config.account_rate)
        self.endpoint_buckets = {
            **{
                name: bucket(config.endpoint_rate)
                for name in (*ENDPOINTS, *METER_ACTIONS.values(), "meter_event_adjustment_create")
            },
            "meter_event_create": bucket(config.meter_event_rate),
            "meter_event_stream": bucket(config.meter_event_stream_rate),
        }

    def now(self) -> float:
        """The meter events' clock."""
        return time.time() + self.config.clock_offset_seconds

    def reset(self) -> None:
        # Requests a pause holds belong to what came before: never served into what comes after.
        self.pause.release(drop_waiting=True)
        self.streamed.settle()  # no event sent before the reset is counted after it
        with self.lock:
            self.customers = Collection("customer", "/v1/customers")
            self.by_email: dict[str, list[str]] = defaultdict(list)  # email -> ids, in creation order
            self.deleted: set[str] = set()
            self.products = Collection("product", "/v1/products")
            self.prices = Collection("price", "/v1/prices")
            self.lookup_keys: dict[str, str] = {}  # lookup key -> the price holding it
            self.meters = Collection("billing meter", "/v1/billing/meters")
            # event name -> its active meter, or else the last one deactivated: each event is judged by it
            self.meter_by_event_name: dict[str, dict] = {}
            # Idempotency-Key -> (fingerprint, status, body as JSON, stored at on the double's clock), kept as
            # strings: a usage push keeps millions.
            self.idempotent: dict[str, tuple[str, int, str, float]] = {}
            self.stats: Counter = Counter()
            self.clock = 1_700_000_000
            self.meter_events = MeterEvents()
            self.sessions: dict[str, float] = {}  # a meter event session's token -> when it expires
            self.session_keys: dict[str, str] = {}  # a meter event session's token -> the key that opened it
            self.written.set()

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    # -- customers -------------------------------------------------------------------------

    def _new_customer(self, params: dict) -> dict:
        customer = {
            "id": "cus_" + secrets.token_hex(7),
            "object": "customer",
            "created": self._tick(),
            "livemode": False,
            "email": None,
            "name": None,
            "phone": None,
            "description": None,
            "address": None,
            "shipping": None,
            "tax_exempt": "none",
            "balance": 0,
            "metadata": {},
        }
        self._apply_customer(customer, params)
        self.customers.add(customer)
        self.by_email[str(customer["email"])].append(str(customer["id"]))
        return customer

    def _update_customer(self, customer: dict, params: dict) -> None:
        old_email = customer["email"]
        self._apply_customer(customer, params)
        if customer["email"] != old_email:
            self.by_email[old_email].remove(customer["id"])
            insort(self.by_email[customer["email"]], customer["id"], key=self.customers.position.__getitem__)

    def _delete_customer(self, customer_id: str) -> None:
        customer = self.customers.remove(customer_id)
        self.by_email[customer["email"]].remove(customer_id)
        self.deleted.add(customer_id)

    @staticmethod
    def _apply_customer(customer: dict, params: dict) -> None:
        for name, value in params.items():
            if name == "metadata":
                merge_metadata(customer, value)
            elif name in WHOLE_OBJECTS:
                customer[name] = None if value == "" else value
            elif name == "balance":
                customer[name] = int(value)
            elif name in customer and name not in READ_ONLY:
                customer[name] = None if value == "" else value
            else:
                raise ApiError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)

    def _customer_endpoint(self, action: str, customer_id: str | None, query: dict, params: dict) -> dict:
        if action == "create":
            return self._new_customer(params)
        if action == "update":
            customer = self.customers.get(customer_id)
            self._update_customer(customer, params)
            return customer
        if action == "retrieve" and customer_id in self.deleted:
            return {"id": customer_id, "object": "customer", "deleted": True}
        if action == "retrieve":
            return self.customers.get(customer_id)
        if action == "delete":
            self._delete_customer(self.customers.get(customer_id)["id"])
            return {"id": customer_id, "object": "customer", "deleted": True}
        if "email" in query:
            return self.customers.page(query, self.by_email.get(query["email"], []))
        return self.customers.page(query)

    # -- products --------------------------------------------------------------------------

    def _new_product(self, params: dict) -> dict:
        refuse_unknown(params, ("id", *PRODUCT_FIELDS))
        required(params, PRODUCT_REQUIRED)
        product_id = params.get("id") or "prod_" + secrets.token_hex(7)
        if product_id in self.products.objects:
            raise ApiError(400, "Product already exists.", code="resource_already_exists", param="id")
        now = self._tick()
        product: dict[str, Any] = {
            "id": product_id,
            "object": "product",
            "active": True,
            "created": now,
            "updated": now,
            "default_price": None,
            "description": None,
            "images": [],
            "livemode": False,
            "metadata": {},
            "name": None,
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": None,
            "url": None,
        }
        self._apply_product(product, {name: value for name, value in params.items() if name != "id"})
        return self.products.add(product)

    def _update_product(self, product: dict, params: dict) -> None:
        refuse_unknown(params, PRODUCT_FIELDS)
        self._apply_product(product, params)
        product["updated"] = self._tick()

    @staticmethod
    def _apply_product(product: dict, params: dict) -> None:
        refuse_empty(params, PRODUCT_REQUIRED)
        changes: dict[str, Any] = {}
        for name, value in params.items():
            if name == "metadata":
                continue
            if value == "":
                changes[name] = [] if name == "images" else None
            elif name in PRODUCT_BOOLEANS:
                changes[name] = as_boolean(value, name)
            elif name == "images":
                changes[name] = as_list(value, name)
                if len(changes[name]) > MAX_IMAGES:
                    raise ApiError(400, f"You may only provide up to {MAX_IMAGES} images.", param=name)
            elif name == "statement_descriptor" and (
                len(value) > STATEMENT_DESCRIPTOR_LENGTH or set(value) & set(STATEMENT_DESCRIPTOR_FORBIDDEN)
            ):
                raise ApiError(
                    400,
                    f"The statement descriptor must be at most {STATEMENT_DESCRIPTOR_LENGTH} characters and may "
                    f"not contain any of {STATEMENT_DESCRIPTOR_FORBIDDEN}",
                    code="parameter_invalid",
                    param=name,
                )
            else:
                changes[name] = value
        # Checked whole before any change: a refused request changes nothing.
        product.update(changes)
        if "metadata" in params:
            merge_metadata(product, params["metadata"])

    def _product_endpoint(self, action: str, product_id: str | None, query: dict, params: dict) -> dict:
        if action == "create":
            return self._new_product(params)
        if action == "update":
            product = self.products.get(product_id)
            self._update_product(product, params)
            return product
        if action == "retrieve":
            return self.products.get(product_id)
        ids = self.products.order
        if "ids" in query:
            wanted = set(as_list(query["ids"], "ids"))
            ids = [id_ for id_ in ids if id_ in wanted]
        if "active" in query:
            active = as_boolean(query["active"], "active")
            ids = [id_ for id_ in ids if self.products.objects[id_]["active"] == active]
        return self.products.page(query, ids)

    # -- prices ----------------------------------------------------------------------------

    def _new_price(self, params: dict) -> dict:
        refuse_unknown(params, (*PRICE_CREATE_ONLY, *PRICE_MUTABLE))
        required(params, ("currency", "product"))
        refuse_empty(params, ("currency", "product", "unit_amount", "unit_amount_decimal"))
        currency = params["currency"].lower()
        if currency not in CURRENCIES:
            raise ApiError(400, f"Invalid currency: {params['currency']}.", code="parameter_invalid", param="currency")
        product = self.products.get(params["product"], status=400, param="product")
        billing_scheme = choice(params.get("billing_scheme", "per_unit"), "billing_scheme", BILLING_SCHEMES)
        if billing_scheme == "tiered":
            required(params, ("tiers",))  # tiers are not modelled, so a tiered price is always refused
        unit_amount, unit_amount_decimal = self._amount(params)
        recurring = self._recurring(params["recurring"]) if params.get("recurring") else None
        price = {
            "id": "price_" + secrets.token_hex(12),
            "object": "price",
            "active": True,
            "billing_scheme": billing_scheme,
            "created": self._tick(),
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": None,
            "metadata": {},
            "nickname": None,
            "product": product["id"],
            "recurring": recurring,
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring" if recurring else "one_time",
            "unit_amount": unit_amount,
            "unit_amount_decimal": unit_amount_decimal,
        }
        self._apply_price(price, {name: params[name] for name in PRICE_MUTABLE if name in params})
        return self.prices.add(price)

    @staticmethod
    def _amount(params: dict) -> tuple[int | None, str]:
        if "unit_amount" in params and "unit_amount_decimal" in params:
            raise ApiError(
                400,
                "You may only specify one of these parameters: unit_amount, unit_amount_decimal.",
                param="unit_amount",
            )
        if "unit_amount" in params:
            amount = as_count(params["unit_amount"], "unit_amount", minimum=0)
            return amount, str(amount)
        if "unit_amount_decimal" not in params:
            raise ApiError(400, "Missing required param: unit_amount.", code="parameter_missing", param="unit_amount")
        try:
            decimal = Decimal(params["unit_amount_decimal"])
        except InvalidOperation:
            decimal = Decimal(-1)
        exponent = decimal.as_tuple().exponent
        if not decimal.is_finite() or decimal < 0 or (isinstance(exponent, int) and -exponent > 12):
            raise ApiError(
                400,
                "Invalid decimal: unit_amount_decimal must be a non-negative decimal with at most 12 decimal places",
                code="parameter_invalid",
                param="unit_amount_decimal",
            )
        return (int(decimal) if decimal == decimal.to_integral_value() else None), params["unit_amount_decimal"]

    @staticmethod
    def _recurring(recurring) -> dict:
        if not isinstance(recurring, dict):
            raise ApiError(400, "Invalid object: recurring", code="parameter_invalid", param="recurring")
        refuse_unknown(recurring, ("interval", "interval_count", "usage_type"))
        required(recurring, ("interval",))
        interval = choice(recurring["interval"], "recurring[interval]", tuple(INTERVALS))
        count = as_count(recurring.get("interval_count", "1"), "recurring[interval_count]", minimum=1)
        if count > INTERVALS[interval]:
            raise ApiError(
                400,
                "Maximum of three years interval allowed (3 years, 36 months, 156 weeks or 1095 days).",
                code="parameter_invalid",
                param="recurring[interval_count]",
            )
        return {
            "aggregate_usage": None,
            "interval": interval,
            "interval_count": count,
            "meter": None,
            "trial_period_days": None,
            "usage_type": choice(recurring.get("usage_type", "licensed"), "recurring[usage_type]", USAGE_TYPES),
        }

    def _update_price(self, price: dict, params: dict) -> None:
        refuse_unknown(params, PRICE_MUTABLE)
        self._apply_price(price, params)

    def _apply_price(self, price: dict, params: dict) -> None:
        """The mutable fields, all checked before any is changed."""
        changes: dict[str, Any] = {}
        if "active" in params:
            changes["active"] = as_boolean(params["active"], "active")
        if "nickname" in params:
            changes["nickname"] = params["nickname"] or None
        if "tax_behavior" in params:
            behavior = choice(params["tax_behavior"], "tax_behavior", TAX_BEHAVIORS)
            if price["tax_behavior"] != "unspecified" and behavior != price["tax_behavior"]:
                raise ApiError(
                    400,
                    f"The tax_behavior of a price cannot be changed once it is {price['tax_behavior']}.",
                    param="tax_behavior",
                )
            changes["tax_behavior"] = behavior
        transfer = as_boolean(params.get("transfer_lookup_key", "false"), "transfer_lookup_key")
        holder = None
        if "lookup_key" in params:
            key = params["lookup_key"] or None
            if key is not None and len(key) > MAX_LOOKUP_KEY:
                raise ApiError(400, f"lookup_key must be at most {MAX_LOOKUP_KEY} characters", param="lookup_key")
            holder = self.lookup_keys.get(key) if key is not None else None
            if holder == price["id"]:
                holder = None
            if holder and not transfer:
                raise ApiError(
                    400,
                    f"A price (`{holder}`) already uses that lookup key. Pass transfer_lookup_key=true to move it "
                    "to this price.",
                    param="lookup_key",
                )
            changes["lookup_key"] = key
        if holder:
            self.prices.objects[holder]["lookup_key"] = None
        if "lookup_key" in changes:
            if price["lookup_key"] is not None and self.lookup_keys.get(price["lookup_key"]) == price["id"]:
                del self.lookup_keys[price["lookup_key"]]
            if changes["lookup_key"] is not None:
                self.lookup_keys[changes["lookup_key"]] = price["id"]
        price.update(changes)
        if "metadata" in params:
            merge_metadata(price, params["metadata"])

    def _price_endpoint(self, action: str, price_id: str | None, query: dict, params: dict) -> dict:
        if action == "create":
            return self._new_price(params)
        if action == "update":
            price = self.prices.get(price_id)
            self._update_price(price, params)
            return price
        if action == "retrieve":
            return self.prices.get(price_id)
        ids = self.prices.order
        if "lookup_keys" in query:
            keys = as_list(query["lookup_keys"], "lookup_keys")
            if len(keys) > MAX_LOOKUP_KEYS_FILTER:
                raise ApiError(
                    400, f"You may only specify up to {MAX_LOOKUP_KEYS_FILTER} lookup keys.", param="lookup_keys"
                )
            holders = {self.lookup_keys[key] for key in keys if key in self.lookup_keys}
            ids = [id_ for id_ in ids if id_ in holders]
        if "product" in query:
            ids = [id_ for id_ in ids if self.prices.objects[id_]["product"] == query["product"]]
        if "active" in query:
            active = as_boolean(query["active"], "active")
            ids = [id_ for id_ in ids if self.prices.objects[id_]["active"] == active]
        return self.prices.page(query, ids)

    # -- billing meters --------------------------------------------------------------------

    def _new_meter(self, params: dict) -> dict:
        refuse_unknown(
            params, ("display_name", "event_name", "default_aggregation", "customer_mapping", "value_settings")
        )
        required(params, ("display_name", "event_name", "default_aggregation"))
        aggregation = params["default_aggregation"]
        if not isinstance(aggregation, dict) or "formula" not in aggregation:
            raise ApiError(
                400,
                "Missing required param: default_aggregation[formula].",
                code="parameter_missing",
                param="default_aggregation[formula]",
            )
        formula = choice(aggregation["formula"], "default_aggregation[formula]", METER_FORMULAS)
        event_name = short_text(params["event_name"], "", "event_name")
        taken = self.meter_by_event_name.get(event_name)
        if taken and taken["status"] == "active":
            raise ApiError(
                400,
                f"An active meter ({taken['id']}) already has the event name '{event_name}'.",
                param="event_name",
            )
        customer_mapping = params.get("customer_mapping") or {"type": "by_id"}
        if not isinstance(customer_mapping, dict) or customer_mapping.get("type") != "by_id":
            raise ApiError(
                400, "Invalid customer_mapping[type]: must be by_id", code="parameter_invalid", param="customer_mapping"
            )
        value_settings = params.get("value_settings") or {}
        if not isinstance(value_settings, dict):
            raise ApiError(400, "Invalid object: value_settings", code="parameter_invalid", param="value_settings")
        now = self._tick()
        meter = {
            "id": "mtr_" + secrets.token_hex(12),
            "object": "billing.meter",
            "created": now,
            "customer_mapping": {
                "event_payload_key": customer_mapping.get("event_payload_key", "stripe_customer_id"),
                "type": "by_id",
            },
            "default_aggregation": {"formula": formula},
            "display_name": params["display_name"],
            "event_name": event_name,
            "event_time_window": None,
            "livemode": False,
            "status": "active",
            "status_transitions": {"deactivated_at": None},
            "updated": now,
            "value_settings": {"event_payload_key": value_settings.get("event_payload_key", "value")},
        }
        self.meter_by_event_name[event_name] = meter
        return self.meters.add(meter)

    def _set_meter_status(self, meter: dict, active: bool) -> dict:
        """Deactivated, a meter accepts no more events; reactivated, it takes its event name back."""
        wanted = "active" if active else "inactive"
        if meter["status"] == wanted:
            raise ApiError(400, f"The meter {meter['id']} is already {wanted}.", param="id")
        holder = self.meter_by_event_name.get(meter["event_name"])
        if active and holder is not None and holder["status"] == "active":
            raise ApiError(400, f"An active meter ({holder['id']}) already has the event name '{meter['event_name']}'.")
        now = self._tick()
        meter.update(status=wanted, updated=now, status_transitions={"deactivated_at": None if active else now})
        self.meter_by_event_name[meter["event_name"]] = meter
        return meter

    def _meter_endpoint(self, action: str, meter_id: str | None, query: dict, params: dict) -> dict:
        if action == "meter_create":
            return self._new_meter(params)
        if action == "meter_list":
            ids = self.meters.order
            if "status" in query:
                status = choice(query["status"], "status", ("active", "inactive"))
                ids = [id_ for id_ in ids if self.meters.objects[id_]["status"] == status]
            return self.meters.page(query, ids)
        meter = self.meters.get(meter_id)
        if action == "meter_retrieve":
            return meter
        refuse_unknown(params, ())
        return self._set_meter_status(meter, active=action == "meter_reactivate")

    # -- meter events ----------------------------------------------------------------------

    def _create_meter_event(self, params: dict) -> dict:
        now = self.now()
        event = meter_event(params, "", now, partial(as_count, minimum=0))
        meter = self.meter_by_event_name.get(event.event_name)
        refusal = refusal_on_receipt(event, now, meter)
        if refusal:
            raise refusal.error()
        if self.meter_events.recently_counted(event.identifier, now):
            raise ApiError(
                400,
                f"An event with identifier '{event.identifier}' already exists.",
                code="resource_already_exists",
                param="identifier",
            )
        assert meter is not None, "refused otherwise"
        self._count(event, now, meter)  # whatever it finds, the request was accepted
        return {
            "object": "billing.meter_event",
            "created": int(now),
            "event_name": event.event_name,
            "identifier": event.identifier,
            "livemode": False,
            "payload": event.payload,
            "timestamp": int(event.timestamp),
        }

    def _count(self, event: MeterEvent, now: float, meter: dict) -> None:
        """What Stripe checks after accepting an event: its customer exists and its value is a number."""
        customer_key, value_key = payload_keys(meter)
        customer, value = event.payload[customer_key], event.payload[value_key]
        known = customer in self.customers.objects or (
            self.config.meter_customers_elsewhere and customer.startswith("cus_")
        )
        if not known:
            self.meter_events.refuse(event, "meter_event_customer_not_found")
        elif not DECIMAL.fullmatch(value):
            self.meter_events.refuse(event, "meter_event_invalid_value")
        else:
            self.meter_events.count(event, customer, value, now)

    def _adjust_meter_event(self, params: dict) -> dict:
        refuse_unknown(params, ("event_name", "type", "cancel"))
        required(params, ("event_name", "type"))
        adjustment = choice(params["type"], "type", ("cancel",))
        cancel = params.get("cancel")
        if not isinstance(cancel, dict) or "identifier" not in cancel:
            raise ApiError(
                400, "Missing required param: cancel[identifier].", code="parameter_missing", param="cancel[identifier]"
            )
        identifier = short_text(cancel["identifier"], "cancel", "identifier")
        if not self.meter_events.cancel(identifier, params["event_name"], self.now()):
            raise ApiError(
                400,
                f"No event '{params['event_name']}' with identifier '{identifier}' was received in the last 24 "
                "hours: only those can be cancelled.",
                param="cancel[identifier]",
            )
        return {
            "object": "billing.meter_event_adjustment",
            "event_name": params["event_name"],
            "livemode": False,
            "status": "pending",
            "type": adjustment,
            "cancel": {"identifier": identifier},
        }

    def _new_session(self, params: dict) -> dict:
        refuse_unknown(params, ())
        now = self.now()
        self.sessions = {token: expiry for token, expiry in self.sessions.items() if expiry > now}
        self.session_keys = {token: key for token, key in self.session_keys.items() if token in self.sessions}
        token = secrets.token_urlsafe(32)
        self.sessions[token] = now + self.config.session_ttl_seconds
        self.stats["meter_event_sessions"] += 1
        return {
            "object": "v2.billing.meter_event_session",
            "id": "mes_" + secrets.token_hex(12),
            "authentication_token": token,
            "created": rfc3339(now),
            "expires_at": rfc3339(self.sessions[token]),
            "livemode": False,
        }

    def _stream_meter_events(self, params: dict) -> dict:
        """Only the request's shape is checked before the answer; the events are judged afterwards."""
        refuse_unknown(params, ("events",))
        required(params, ("events",))
        events = params["events"]
        if not isinstance(events, list) or not 1 <= len(events) <= MAX_STREAMED_EVENTS:
            raise ApiError(
                400,
                f"Invalid array: events must hold 1 to {MAX_STREAMED_EVENTS} events",
                code="parameter_invalid",
                param="events",
            )
        now = self.now()
        batch = [meter_event(event, f"events[{index}]", now, rfc3339_seconds) for index, event in enumerate(events)]
        self.streamed.put((now, batch))
        self.stats["meter_events_streamed"] += len(batch)
        return {}

    def _count_streamed(self, received: tuple[float, list[MeterEvent]]) -> None:
        received_at, batch = received
        with self.lock:
            for event in batch:
                meter = self.meter_by_event_name.get(event.event_name)
                refusal = refusal_on_receipt(event, received_at, meter)
                if refusal:
                    self.meter_events.refuse(event, refusal.reason)
                elif self.meter_events.recently_counted(event.identifier, received_at):
                    self.stats["meter_event_duplicates"] += 1  # dropped without a word, as Stripe does
                else:
                    assert meter is not None, "refused otherwise"
                    self._count(event, received_at, meter)

    def meter_summary(self) -> dict:
        self.streamed.settle()
        with self.lock:
            return self.meter_events.summary()

    # -- request handling ------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, params: dict, headers) -> tuple[int, dict, dict]:
        """Status, body and extra response headers."""
        parts = [p for p in path.split("/") if p]
        key = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        with self.lock:
            # A meter event session's requests count as the requests of the key that opened it.
            self.stats[key_stat(self.session_keys.get(key, key))] += 1
        if parts == ["v1", "account"] and method == "GET":
            return 200, {"id": self.config.account_id, "object": "account"}, {}
        route = self._route(method, path, parts, query, params, key)
        self._authenticate(route, key)
        email = params.get("email") if route.resource == "customers" else None
        if route.write and email and self.config.invalid_emails and re.search(self.config.invalid_emails, email):
            raise ApiError(400, f"Invalid email address: {email}", code="email_invalid")
        with self.lock:
            self.stats[f"requests_{route.endpoint}"] += 1
            # Rate limits come first: a 429 is decided before idempotency is consulted.
            if not all(bucket.has_token() for bucket in route.buckets):
                self.stats["rate_limited"] += 1
                raise ApiError(429, "Too many requests hit the API too quickly.", code="rate_limit")
            for bucket in route.buckets:
                bucket.take()
            if route.write and self.scripted_statuses:
                self.stats["scripted"] += 1
                status = self.scripted_statuses.popleft()
                raise ApiError(
                    status, "Answered as scripted", type_="api_error" if status >= 500 else "invalid_request_error"
                )
            if route.write and self.config.refuse_writes_with:
                self.stats["refused"] += 1
                advice = {"Stripe-Should-Retry": self.config.should_retry} if self.config.should_retry else {}
                raise ApiError(self.config.refuse_writes_with, "Refused by configuration", headers=advice)
            # A failure before the endpoint runs: nothing done, nothing stored for the key.
            if route.write and self.random.random() < self.config.fail_before_rate:
                self.stats["failed_before"] += 1
                raise ApiError(500, "An unknown error occurred", type_="api_error")
        idempotency_key = headers.get("Idempotency-Key") if route.write and route.idempotent else None
        fingerprint = (
            digest(json.dumps([route.endpoint, route.object_id, params], sort_keys=True)) if idempotency_key else ""
        )
        with self.lock:
            stored = self.idempotent.get(idempotency_key) if idempotency_key else None
            if stored and self.now() - stored[3] >= IDEMPOTENCY_KEY_SECONDS:
                stored = None  # pruned after 24 hours: the key is new again
            if stored:
                stored_fingerprint, status, body, _ = stored
                if stored_fingerprint != fingerprint:
                    raise ApiError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters they were first "
                        "used with.",
                        type_="idempotency_error",
                    )
                self.stats["idempotent_replays"] += 1
                return status, json.loads(body), {"Idempotent-Replayed": "true"}
            status, body, lost = self._execute(route)
            if route.endpoint == "meter_event_session" and status == 200:
                self.session_keys[json.loads(body)["authentication_token"]] = key
            if idempotency_key:
                self.idempotent[idempotency_key] = (fingerprint, status, body, self.now())
            if route.write:
                self.written.set()
        if lost:
            self.stats["lost_responses"] += 1
            return 500, ApiError(500, "An unknown error occurred (lost response)", type_="api_error").body, {}
        return status, json.loads(body), {}

    def _route(self, method: str, path: str, parts: list[str], query: dict, params: dict, key: str) -> Route:
        meter_endpoint = METER_ENDPOINTS.get("/".join(parts))
        if meter_endpoint:
            return self._meter_route(method, meter_endpoint, params, key)
        if tuple(parts[:3]) == METERS:
            return self._billing_meter_route(method, path, parts[3:], query, params)
        target = object_target(method, parts)
        if target is None:
            raise ApiError(404, f"Unrecognized request URL ({method}: {path})")
        resource, object_id, action = target
        endpoint = ENDPOINT_PREFIX[resource] + (action or "")
        if action is None or endpoint not in ENDPOINTS:
            raise ApiError(405, "Method not allowed")
        serve = {
            "customers": self._customer_endpoint,
            "products": self._product_endpoint,
            "prices": self._price_endpoint,
        }[resource]
        return Route(
            endpoint,
            partial(serve, action, object_id, query, params),
            (self.account_bucket, self.endpoint_buckets[endpoint]),
            write=action in WRITES,
            resource=resource,
            object_id=object_id,
        )

    def _billing_meter_route(self, method: str, path: str, rest: list[str], query: dict, params: dict) -> Route:
        action = meter_action(method, rest)
        if action is None:
            raise ApiError(404, f"Unrecognized request URL ({method}: {path})")
        meter_id = rest[0] if rest else None
        return Route(
            action,
            partial(self._meter_endpoint, action, meter_id, query, params),
            (self.account_bucket, self.endpoint_buckets[action]),
            write=method == "POST",
            resource="meters",
            object_id=meter_id,
        )

    def _meter_route(self, method: str, endpoint: str, params: dict, key: str) -> Route:
        """The stream, and v1 meter events sent with a live-mode key, have rate limits of their own, not
        the account's; v1 meter events sent with a test-mode key count against the account's, as at Stripe.
        The stream and its sessions store no idempotent responses: a stream's events carry their
        identifiers instead."""
        if method != "POST":
            raise ApiError(405, "Method not allowed")
        own = self.endpoint_buckets
        v1_bucket = own["meter_event_create"] if key.startswith(LIVE_KEY_PREFIXES) else self.account_bucket
        serve, buckets, idempotent = {
            "meter_event_create": (self._create_meter_event, (v1_bucket,), True),
            "meter_event_adjustment_create": (
                self._adjust_meter_event,
                (self.account_bucket, own["meter_event_adjustment_create"]),
                True,
            ),
            "meter_event_session": (self._new_session, (self.account_bucket,), False),
            "meter_event_stream": (self._stream_meter_events, (own["meter_event_stream"],), False),
        }[endpoint]
        return Route(
            endpoint,
            partial(serve, params),
            buckets,
            write=True,
            resource="meter_events",
            idempotent=idempotent,
            session=endpoint == "meter_event_stream",
        )

    def _authenticate(self, route: Route, key: str) -> None:
        if route.session:
            with self.lock:
                expires_at = self.sessions.get(key, 0.0)
            if expires_at <= self.now():
                raise ApiError(
                    401,
                    "The meter event session's authentication token has expired or does not exist: create a new "
                    "session.",
                    type_="temporary_session_expired",
                    code="billing_meter_event_session_expired",
                )
            return
        if not key.startswith(("sk_", "rk_")):
            raise ApiError(401, "Invalid API Key provided", type_="invalid_request_error")
        if route.write and key in self.config.read_only_keys:
            raise ApiError(403, "The provided key does not have the required permissions for this endpoint")

    def _execute(self, route: Route) -> tuple[int, str, bool]:
        """Status, the body as JSON (apart from the live objects, which later writes change), and whether
        the response is to be lost."""
        try:
            body = route.serve()
        except ApiError as error:
            return error.status, json.dumps(error.body), False
        if route.write:
            self.stats[f"done_{route.endpoint}"] += 1
        lost = route.write and self.random.random() < self.config.fail_after_rate
        return 200, json.dumps(body), lost

    def load(self, customers: list[dict]) -> list[str]:
        with self.lock:
            ids = [self._new_customer(params)["id"] for params in customers]
            self.written.set()
            return ids

    # -- the store -------------------------------------------------------------------------

    def snapshot(self) -> dict:
        self.streamed.settle()
        with self.lock:
            return {
                **json.loads(
                    json.dumps(
                        {
                            "customers": self.customers.snapshot(),
                            "deleted": sorted(self.deleted),
                            "products": self.products.snapshot(),
                            "prices": self.prices.snapshot(),
                            "meters": self.meters.snapshot(),
                            "idempotent": self.idempotent,
                            "clock": self.clock,
                        }
                    )
                ),
                # Not copied through JSON like the rest: millions of events would hold the lock for seconds.
                "meter_events": self.meter_events.snapshot(),
            }

    def restore(self, saved: dict) -> None:
        self.reset()
        with self.lock:
            self.customers.restore(saved["customers"])
            for customer in self.customers.objects.values():
                self.by_email[customer["email"]].append(customer["id"])
            self.deleted = set(saved["deleted"])
            self.products.restore(saved["products"])
            self.prices.restore(saved["prices"])
            self.lookup_keys = {p["lookup_key"]: p["id"] for p in self.prices.objects.values() if p["lookup_key"]}
            self.meters.restore(saved.get("meters", []))  # files saved before meters have none
            for meter in sorted(self.meters.objects.values(), key=lambda meter: meter["status"] == "active"):
                self.meter_by_event_name[meter["event_name"]] = meter
            now = self.now()
            self.idempotent = {key: compact_response(*entry, now=now) for key, entry in saved["idempotent"].items()}
            self.clock = saved["clock"]
            self.meter_events = MeterEvents(saved.get("meter_events"))  # files saved before meter events have none


class Store:
    """The double's objects in a JSON file: read at start, written after writes and at the end."""

    def __init__(self, double: StripeDouble, path: Path):
        self.double = double
        self.path = path
        self.saving = threading.Lock()

    def load(self) -> None:
        if self.path.exists():
            self.double.restore(json.loads(self.path.read_text()))
        self.double.written.clear()

    def save(self) -> None:
        with self.saving:
            self.double.written.clear()
            snapshot = self.double.snapshot()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(json.dumps(snapshot))
            os.replace(partial, self.path)  # a reader, or a kill mid-save, never sees half a file

    def keep_saved(self) -> None:
        """Save shortly after each burst of writes, for as long as the process lives."""

        def loop() -> None:
            while True:
                self.double.written.wait()
                time.sleep(SAVE_DELAY_SECONDS)
                self.save()

        threading.Thread(target=loop, daemon=True, name="stripe-double-store").start()


def make_handler(double: StripeDouble):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # one small response per request: never wait for an ACK
        wbufsize = -1  # buffered, so that a reply leaves in one send (flushed by _reply), not one per header

        def log_message(self, *args) -> None:  # quiet: tests read the stats instead
            pass

        def _reply(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", "req_" + secrets.token_hex(6))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()  # before anything done after the reply

        def _body(self) -> str | None:
            """The request's body; None when the client went away before sending all of it (urllib3
            sends the headers and the body in two writes, so a killed client can leave only the
            headers). Stripe never acts on a request it did not receive whole."""
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else b""
            return data.decode() if len(data) == length else None

        def _control(self, method: str, path: str) -> bool:
            if not path.startswith("/_double/"):
                return False
            action = path.removeprefix("/_double/")
            if method == "GET" and action == "stats":
                double.streamed.settle()
                with double.lock:
                    counts = {
                        "customers": len(double.customers.objects),
                        "products": len(double.products.objects),
                        "prices": len(double.prices.objects),
                    }
                    self._reply(200, {**double.stats, **counts})
            elif method == "GET" and action == "config":
                self._reply(200, asdict(double.config))
            elif method == "POST" and action == "config":
                double.configure(DoubleConfig(**{**asdict(double.config), **json.loads(self._body() or "{}")}))
                self._reply(200, asdict(double.config))
            elif method == "POST" and action == "reset":
                double.reset()
                self._reply(200, {})
            elif method == "POST" and action == "customers":
                self._reply(200, {"ids": double.load(json.loads(self._body() or "[]"))})
            elif method == "GET" and action == "meter_events":
                self._reply(200, double.meter_summary())
            elif method == "GET" and action == "pause":
                self._reply(200, double.pause.state())
            elif method == "POST" and action == "pause":
                settings = json.loads(self._body() or "{}")
                double.pause.arm(settings.get("endpoints", []), int(settings["after"]))
                self._reply(200, double.pause.state())
            elif method == "POST" and action == "resume":
                double.pause.release(bool(json.loads(self._body() or "{}").get("drop_waiting")))
                self._reply(200, double.pause.state())
            else:
                self._reply(404, {"error": {"message": "unknown control endpoint"}})
            return True

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            if self._control(method, url.path):
                return
            body = self._body()
            if body is None:
                with double.lock:
                    double.stats["incomplete_requests"] += 1
                self.close_connection = True
                return
            admission = double.pause.enter(endpoint_of(method, url.path))
            if not admission.serve:
                with double.lock:
                    double.stats["dropped_at_pause"] += 1
                self.close_connection = True
                return
            status = 500
            try:
                if double.config.latency:
                    time.sleep(double.config.latency)
                headers: dict[str, str] = {}
                try:
                    status, payload, headers = double.handle(
                        method, url.path, parse_form(url.query), parse_body(url.path, body), self.headers
                    )
                except ApiError as error:
                    status, payload, headers = error.status, error.body, error.headers
                self._reply(status, payload, headers)
            finally:
                double.pause.leave(admission, status)
                double.streamed.work_off()

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler


class DoubleHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's backlog of 5 drops SYNs when hundreds of clients connect at once (a usage push does),
    # and each dropped SYN costs its client a retransmit a second later.
    request_queue_size = 1024


def serve(port: int, double: StripeDouble) -> ThreadingHTTPServer:
    """The double listening on `port` if it is free, else on a port the system chooses."""
    try:
        return DoubleHTTPServer(("127.0.0.1", port), make_handler(double))
    except OSError:
        if not port:
            raise
        return DoubleHTTPServer(("127.0.0.1", 0), make_handler(double))


class StripeDoubleServer:
    """`with StripeDoubleServer(latency=0.15) as double: double.url` — the double in its own process.

    `store` keeps its objects in that JSON file between processes. The server binds its own port:
    `port` if it is free, else one the system chooses; `port` is the one it listens on once started."""

    def __init__(self, store: Path | None = None, port: int = 0, log_path: Path | None = None, **config):
        self.config = DoubleConfig(**config)
        self.store = store
        self.port = port
        self.log_path = log_path
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _control(self, method: str, action: str, payload=None):
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(f"{self.url}/_double/{action}", data=data, method=method)
        with urllib.request.urlopen(request) as response:
            return json.loads(response.read())

    def stats(self) -> dict:
        return self._control("GET", "stats")

    def configure(self, **changes) -> None:
        self._control("POST", "config", changes)

    def reset(self) -> None:
        """No objects, no stored keys, no counts; the configuration stays."""
        self._control("POST", "reset", {})

    def restore(self) -> None:
        """As new: empty, and configured as it was started."""
        self.reset()
        self.configure(**asdict(self.config))

    def load(self, customers: list[dict]) -> list[str]:
        return self._control("POST", "customers", customers)["ids"]

    def meter_events(self) -> dict:
        """Meter events counted (cancels excluded), identifiers counted more than once, cancels, the sums
        per event_name and customer, and the error report; once the events streamed so far are judged."""
        return self._control("GET", "meter_events")

    def pause_after(self, accepted: int, *endpoints: str) -> None:
        """A kill point: once `accepted` requests to `endpoints` (named as in the stats: `create`,
        `update`, `meter_event_create`, `meter_event_stream`, `account`, ...; every endpoint when
        none is named) have been answered 2xx, hold the next ones unserved until `resume`."""
        self._control("POST", "pause", {"after": accepted, "endpoints": list(endpoints)})

    def pause_state(self) -> dict:
        """`paused` (the requests accepted reached `after`, none in flight), `accepted`, `serving`,
        and `waiting`: the requests held."""
        return self._control("GET", "pause")

    def wait_until_paused(self, waiting: int = 1, client: subprocess.Popen | None = None, timeout: float = 600) -> dict:
        """The pause state once the double is paused with `waiting` requests held, so that the client is
        known to be mid-run, waiting on Stripe. Fails if `client` exits first, or after `timeout` s (a
        deadline for a broken test, not a timing)."""
        deadline = time.monotonic() + timeout
        while not ((state := self.pause_state())["paused"] and state["waiting"] >= waiting):
            if client is not None and client.poll() is not None:
                raise AssertionError(f"the client exited (code {client.returncode}) before the pause: {state}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the double did not pause within {timeout:.0f} s: {state}")
            time.sleep(0.02)
        return state

    def resume(self, drop_waiting: bool = False) -> dict:
        """Ends the pause: the requests held are served, or with `drop_waiting` dropped unserved (their
        clients see the connection closed)."""
        return self._control("POST", "resume", {"drop_waiting": drop_waiting})

    def advance_clock(self, seconds: float) -> None:
        """Moves the meter events' clock: a day later, an identifier is new again."""
        offset = self._control("GET", "config")["clock_offset_seconds"]
        self.configure(clock_offset_seconds=offset + seconds)

    def start(self) -> StripeDoubleServer:
        command = [sys.executable, "-m", "census_stripe.demo.stripe_double", "--port", str(self.port)]
        if self.store:
            command += ["--store", str(self.store)]
        self._process, self.port = start_server(command, self.log_path)
        self.configure(**asdict(self.config))
        return self

    def stop(self) -> None:
        """Stops the process; with a store, its objects are saved first (on SIGTERM)."""
        if self._process is not None:
            stop_process_group(self._process, signal.SIGTERM)

    def __enter__(self) -> StripeDoubleServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="tried first; taken or 0, the system chooses")
    parser.add_argument("--port-file", type=Path, help="where the port listened on is written once listening")
    parser.add_argument("--store", type=Path, help="a JSON file keeping the objects between runs")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--account-rate", type=float, default=0.0)
    parser.add_argument("--endpoint-rate", type=float, default=0.0)
    parser.add_argument("--fail-before-rate", type=float, default=0.0)
    parser.add_argument("--fail-after-rate", type=float, default=0.0)
    args = parser.parse_args()
    config = DoubleConfig(**{k: v for k, v in vars(args).items() if k not in ("port", "port_file", "store")})
    double = StripeDouble(config)
    store = Store(double, args.store) if args.store else None
    if store:
        store.load()
        store.keep_saved()
    # SIGTERM unwinds serve_forever like Ctrl-C does, so the store is saved on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    server = serve(args.port, double)
    print(f"Listening on http://127.0.0.1:{announce_port(server.socket, args.port_file)}", flush=True)
    try:
        server.serve_forever()
    finally:
        if store:
            store.save()


if __name__ == "__main__":
    main()
