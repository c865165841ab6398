"""A test double of Stripe's Customer API, for what localstripe cannot do: volume, 429s,
idempotency, latency and lost responses.

It is an in-memory HTTP server, run as its own process, modelled on Stripe's documented behaviour
(docs/stripe.md):

- The account: `GET /v1/account` answers with the configured `account_id`.
- Customers: create, update, retrieve, delete, and list (newest first, `limit` up to 100,
  `starting_after`, an exact and case-sensitive `email` filter). A deleted customer is gone from
  lists and updates (404), but retrieving it answers `{"id": ..., "deleted": true}`, as Stripe
  does. Updates merge `metadata` (a "" value deletes the key), replace `address` and `shipping`
  whole, and unset a field sent as "".
- Rate limits: token buckets per endpoint (create, update, list, retrieve, delete) and one for the
  account; a request over either gets a 429 *before* the idempotency layer sees it.
- Idempotency: the first response to an `Idempotency-Key` is stored (400s and 500s included) and
  replayed for the same key, with the header `Idempotent-Replayed: true`; the same key with other
  parameters is a 400 `idempotency_error`.
- Faults: a chosen share of writes fails with a 500 before the endpoint runs (nothing done,
  nothing stored for the key), or after it ran (the response is lost: the customer exists and the
  key replays the success), plus a fixed latency per request. Or every write answered with one
  chosen status, optionally with Stripe's `Stripe-Should-Retry` header, Stripe's advice on whether
  retrying can succeed.
- Invalid emails: writes of an email matching a configured pattern get a 400 `email_invalid`, as
  Stripe answers an address it cannot accept.
- Keys: `sk_`/`rk_` keys are accepted; a key listed as read-only gets 403 on writes. The stats
  count the API requests made with each key, by a hash of it (`key_stat`).

Control endpoints (no auth): GET /_double/stats, POST /_double/config (JSON), POST /_double/reset,
POST /_double/customers (JSON list of customer params, created directly, for fixtures).

    python -m census_stripe.demo.stripe_double --port 12111 --latency 0.15 --create-rate 25
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import secrets
import signal
import sys
import threading
import time
import urllib.request
from bisect import insort
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlparse

from census_stripe.demo.local_stripe import free_port, start_server, stop_process_group

WHOLE_OBJECTS = ("address", "shipping")
ENDPOINT_LIMITED = ("create", "update", "list", "retrieve", "delete")


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
    seed: int = 0
    account_id: str = "acct_double"


class TokenBucket:
    """`rate` tokens per second, holding at most one second's worth."""

    def __init__(self, rate: float):
        self.rate = rate
        self.tokens = rate
        self.updated = time.monotonic()

    def has_token(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return self.tokens >= 1

    def take(self) -> None:
        if self.rate > 0:
            self.tokens -= 1


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        self.status = status
        self.body = {"error": {"message": message, "type": type_, **({"code": code} if code else {})}}
        self.headers = headers or {}


def key_stat(api_key: str) -> str:
    """The stats entry counting API requests made with this key: a hash, so stats never hold a key."""
    return "key_sha256_" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


def parse_form(body: str) -> dict:
    """Stripe's form encoding (`address[city]=Paris`, `metadata[plan]=pro`) as nested dicts."""
    params: dict = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        target = params
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return params


class StripeDouble:
    """The state and rules; the HTTP handler only translates."""

    def __init__(self, config: DoubleConfig):
        self.lock = threading.Lock()
        self.configure(config)
        self.reset()

    def configure(self, config: DoubleConfig) -> None:
        self.config = config
        self.random = random.Random(config.seed)
        self.account_bucket = TokenBucket(config.account_rate)
        self.endpoint_buckets = {name: TokenBucket(config.endpoint_rate) for name in ENDPOINT_LIMITED}

    def reset(self) -> None:
        with self.lock:
            self.customers: dict[str, dict] = {}
            self.order: list[str] = []  # creation order; listing walks it backwards
            self.position: dict[str, int] = {}  # id -> index in `order`
            self.by_email: dict[str, list[str]] = defaultdict(list)  # email -> ids, in creation order
            self.deleted: set[str] = set()
            self.idempotent: dict[str, tuple[str, int, dict]] = {}
            self.stats: Counter = Counter()
            self.clock = 1_700_000_000

    # -- customers -------------------------------------------------------------------------

    def _new_customer(self, params: dict) -> dict:
        self.clock += 1
        customer = {
            "id": "cus_" + secrets.token_hex(7),
            "object": "customer",
            "created": self.clock,
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
        self._apply(customer, params)
        self.customers[customer["id"]] = customer
        self.position[customer["id"]] = len(self.order)
        self.order.append(customer["id"])
        self.by_email[customer["email"]].append(customer["id"])
        return customer

    def _update(self, customer: dict, params: dict) -> None:
        old_email = customer["email"]
        self._apply(customer, params)
        if customer["email"] != old_email:
            self.by_email[old_email].remove(customer["id"])
            insort(self.by_email[customer["email"]], customer["id"], key=self.position.__getitem__)

    def _delete(self, customer_id: str) -> None:
        customer = self.customers.pop(customer_id)
        self.by_email[customer["email"]].remove(customer_id)
        self.order.remove(customer_id)
        self.position = {id_: index for index, id_ in enumerate(self.order)}
        self.deleted.add(customer_id)

    @staticmethod
    def _apply(customer: dict, params: dict) -> None:
        for name, value in params.items():
            if name == "metadata":
                if value == "":
                    customer["metadata"] = {}
                    continue
                for key, item in value.items():
                    if item == "":
                        customer["metadata"].pop(key, None)
                    else:
                        customer["metadata"][key] = item
            elif name in WHOLE_OBJECTS:
                customer[name] = None if value == "" else value
            elif name == "balance":
                customer[name] = int(value)
            elif name in customer and name not in ("id", "object", "created", "livemode"):
                customer[name] = None if value == "" else value
            else:
                raise ApiError(400, f"Received unknown parameter: {name}", code="parameter_unknown")

    def _customer(self, customer_id: str) -> dict:
        if customer_id not in self.customers:
            raise ApiError(404, f"No such customer: '{customer_id}'", code="resource_missing")
        return self.customers[customer_id]

    def _list(self, query: dict) -> dict:
        limit = int(query.get("limit", 10))
        if not 1 <= limit <= 100:
            raise ApiError(400, "Invalid integer: limit must be between 1 and 100")
        ids = self.by_email.get(query["email"], []) if "email" in query else self.order
        end = len(ids)  # newest first: pages walk the creation order backwards from here
        if "starting_after" in query:
            after = query["starting_after"]
            if after not in self.customers:
                raise ApiError(404, f"No such customer: '{after}'", code="resource_missing")
            end = self.position[after] if ids is self.order else ids.index(after)
        page = ids[max(0, end - limit) : end][::-1]
        return {
            "object": "list",
            "url": "/v1/customers",
            "has_more": end > limit,
            "data": [self.customers[i] for i in page],
        }

    # -- request handling ------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict, params: dict, headers) -> tuple[int, dict, dict]:
        """Status, body and extra response headers."""
        parts = [p for p in path.split("/") if p]
        key = (headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        with self.lock:
            self.stats[key_stat(key)] += 1
        if parts == ["v1", "account"] and method == "GET":
            return 200, {"id": self.config.account_id, "object": "account"}, {}
        if parts[:2] != ["v1", "customers"] or len(parts) > 3:
            raise ApiError(404, f"Unrecognized request URL ({method}: {path})")
        customer_id = parts[2] if len(parts) == 3 else None
        endpoint = {
            ("POST", False): "create",
            ("POST", True): "update",
            ("GET", False): "list",
            ("GET", True): "retrieve",
            ("DELETE", True): "delete",
        }.get((method, customer_id is not None))
        if endpoint is None:
            raise ApiError(405, "Method not allowed")
        if not key.startswith(("sk_", "rk_")):
            raise ApiError(401, "Invalid API Key provided", type_="invalid_request_error")
        write = endpoint in ("create", "update", "delete")
        if write and key in self.config.read_only_keys:
            raise ApiError(403, "The provided key does not have the required permissions for this endpoint")
        email = params.get("email")
        if write and email and self.config.invalid_emails and re.search(self.config.invalid_emails, email):
            raise ApiError(400, f"Invalid email address: {email}", code="email_invalid")
        with self.lock:
            self.stats[f"requests_{endpoint}"] += 1
            # Rate limits come first: a 429 is decided before idempotency is consulted.
            buckets = (self.account_bucket, self.endpoint_buckets[endpoint])
            if not all(bucket.has_token() for bucket in buckets):
                self.stats["rate_limited"] += 1
                raise ApiError(429, "Too many requests hit the API too quickly.", code="rate_limit")
            for bucket in buckets:
                bucket.take()
            if write and self.config.refuse_writes_with:
                self.stats["refused"] += 1
                advice = {"Stripe-Should-Retry": self.config.should_retry} if self.config.should_retry else {}
                raise ApiError(self.config.refuse_writes_with, "Refused by configuration", headers=advice)
            # A failure before the endpoint runs: nothing done, nothing stored for the key.
            if write and self.random.random() < self.config.fail_before_rate:
                self.stats["failed_before"] += 1
                raise ApiError(500, "An unknown error occurred", type_="api_error")
        idempotency_key = headers.get("Idempotency-Key") if write else None
        fingerprint = json.dumps([endpoint, customer_id, params], sort_keys=True)
        with self.lock:
            if idempotency_key and idempotency_key in self.idempotent:
                stored_fingerprint, status, body = self.idempotent[idempotency_key]
                if stored_fingerprint != fingerprint:
                    raise ApiError(
                        400,
                        "Keys for idempotent requests can only be used with the same parameters they were first "
                        "used with.",
                        type_="idempotency_error",
                    )
                self.stats["idempotent_replays"] += 1
                return status, body, {"Idempotent-Replayed": "true"}
            status, body, lost = self._execute(endpoint, customer_id, query, params)
            if idempotency_key:
                self.idempotent[idempotency_key] = (fingerprint, status, body)
        if lost:
            self.stats["lost_responses"] += 1
            return 500, ApiError(500, "An unknown error occurred (lost response)", type_="api_error").body, {}
        return status, body, {}

    def _execute(self, endpoint: str, customer_id: str | None, query: dict, params: dict) -> tuple[int, dict, bool]:
        write = endpoint in ("create", "update", "delete")
        try:
            if endpoint == "create":
                body = self._new_customer(params)
            elif endpoint == "update":
                body = self._customer(customer_id)
                self._update(body, params)
            elif endpoint == "retrieve" and customer_id in self.deleted:
                body = {"id": customer_id, "object": "customer", "deleted": True}
            elif endpoint == "retrieve":
                body = self._customer(customer_id)
            elif endpoint == "delete":
                self._customer(customer_id)
                self._delete(customer_id)
                body = {"id": customer_id, "object": "customer", "deleted": True}
            else:
                body = self._list(query)
        except ApiError as error:
            return error.status, error.body, False
        if write:
            self.stats[f"done_{endpoint}"] += 1
        lost = write and self.random.random() < self.config.fail_after_rate
        return 200, json.loads(json.dumps(body)), lost

    def load(self, customers: list[dict]) -> list[str]:
        with self.lock:
            return [self._new_customer(params)["id"] for params in customers]


def make_handler(double: StripeDouble):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # one small response per request: never wait for an ACK

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

        def _body(self) -> str:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length).decode() if length else ""

        def _control(self, method: str, path: str) -> bool:
            if not path.startswith("/_double/"):
                return False
            action = path.removeprefix("/_double/")
            if method == "GET" and action == "stats":
                with double.lock:
                    self._reply(200, {**double.stats, "customers": len(double.customers)})
            elif method == "GET" and action == "config":
                self._reply(200, asdict(double.config))
            elif method == "POST" and action == "config":
                double.configure(DoubleConfig(**{**asdict(double.config), **json.loads(self._body() or "{}")}))
                self._reply(200, asdict(double.config))
            elif method == "POST" and action == "reset":
                double.reset()
                self._reply(200, {})
            elif method == "POST" and action == "customers":
                self._reply(200, {"ids": double.load(json.loads(self._body()))})
            else:
                self._reply(404, {"error": {"message": "unknown control endpoint"}})
            return True

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            if self._control(method, url.path):
                return
            body = self._body()
            if double.config.latency:
                time.sleep(double.config.latency)
            query = dict(parse_qsl(url.query, keep_blank_values=True))
            headers = {}
            try:
                status, payload, headers = double.handle(method, url.path, query, parse_form(body), self.headers)
            except ApiError as error:
                status, payload, headers = error.status, error.body, error.headers
            self._reply(status, payload, headers)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler


def serve(port: int, config: DoubleConfig) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(StripeDouble(config)))
    server.daemon_threads = True
    return server


class StripeDoubleServer:
    """`with StripeDoubleServer(latency=0.15) as double: double.url` — the double in its own process."""

    def __init__(self, **config):
        self.config = DoubleConfig(**config)
        self.port = free_port()
        self._process = None

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
        """No customers, no stored keys, no counts; the configuration stays."""
        self._control("POST", "reset", {})

    def restore(self) -> None:
        """As new: empty, and configured as it was started."""
        self.reset()
        self.configure(**asdict(self.config))

    def load(self, customers: list[dict]) -> list[str]:
        return self._control("POST", "customers", customers)["ids"]

    def __enter__(self) -> StripeDoubleServer:
        command = [sys.executable, "-m", "census_stripe.demo.stripe_double", "--port", str(self.port)]
        self._process = start_server(command, self.port)
        self.configure(**asdict(self.config))
        return self

    def __exit__(self, *exc) -> None:
        stop_process_group(self._process, signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--account-rate", type=float, default=0.0)
    parser.add_argument("--endpoint-rate", type=float, default=0.0)
    parser.add_argument("--fail-before-rate", type=float, default=0.0)
    parser.add_argument("--fail-after-rate", type=float, default=0.0)
    args = parser.parse_args()
    config = DoubleConfig(**{k: v for k, v in vars(args).items() if k != "port"})
    serve(args.port, config).serve_forever()


if __name__ == "__main__":
    main()
