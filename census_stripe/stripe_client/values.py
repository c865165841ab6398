"""What the sync knows of Stripe objects, free of the SDK: objects as flat field values
(`{"address.city": "Paris"}`, census_stripe/objects/), pages, accounts. The planner imports this
module, never the SDK's client (client.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from census_stripe.stripe_client.rate_limit import is_live_key

STRIPE_API_BASE = "https://api.stripe.com"  # the SDK's default, without importing it

PAGE_SIZE = 100


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
class StripeObject:
    id: str
    values: dict[str, str | None]  # flat, as the object's type flattens it
    created: int = 0  # unix seconds, to tell duplicates apart


@dataclass(frozen=True)
class Created:
    id: str
    # Stripe answered with the stored response of an earlier request with the same key.
    replayed: bool


@dataclass(frozen=True)
class Page:
    objects: list[StripeObject]
    has_more: bool


def dashboard_url(stripe_id: str, api_key: str, api_base: str | None, plural: str = "customers") -> str | None:
    """Where a person looks at an object (of the dashboard's `plural` path) in Stripe's dashboard;
    None for another server (a local emulator has no dashboard, and its API answers a browser with 401)."""
    if api_base and api_base.rstrip("/") != STRIPE_API_BASE:
        return None
    mode = "" if is_live_key(api_key) else "test/"
    return f"https://dashboard.stripe.com/{mode}{plural}/{stripe_id}"
