"""What the sync knows of Stripe customers, free of the SDK: flat field values, pages, accounts.

Everything here speaks in flat field values (`{"address.city": "Paris"}`), the sync's own
vocabulary; `to_params` and `flatten_customer` translate to and from Stripe's nested objects.
The planner imports this module, never the SDK's client (client.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from census_stripe.fields import METADATA_PREFIX, WHOLE_OBJECTS, lookup_field
from census_stripe.stripe_client.rate_limit import is_live_key

STRIPE_API_BASE = "https://api.stripe.com"  # the SDK's default, without importing it

FieldValues = Mapping[str, "str | None"]
PAGE_SIZE = 100


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

    @property
    def key(self) -> str:
        """What the state tables file rows under: test and live data of one account never meet."""
        return f"{self.id}/{self.mode}"

    def __str__(self) -> str:
        return f"{self.id} ({self.mode} mode)"


@dataclass(frozen=True)
class StripeCustomer:
    id: str
    values: dict[str, str | None]
    created: int = 0  # unix seconds, to tell duplicates apart


@dataclass(frozen=True)
class Created:
    id: str
    # Stripe answered with the stored response of an earlier request with the same key.
    replayed: bool


@dataclass(frozen=True)
class Page:
    customers: list[StripeCustomer]
    has_more: bool


def dashboard_url(customer_id: str, api_key: str, api_base: str | None) -> str | None:
    """Where a person looks at a customer in Stripe's dashboard; None for another server (a local
    emulator has no dashboard, and its API answers a browser with 401)."""
    if api_base and api_base.rstrip("/") != STRIPE_API_BASE:
        return None
    mode = "" if is_live_key(api_key) else "test/"
    return f"https://dashboard.stripe.com/{mode}customers/{customer_id}"
