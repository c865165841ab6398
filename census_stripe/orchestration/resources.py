"""The Stripe account as a Dagster resource, configured from the environment (warehouses: warehouses.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from census_stripe.stripe_client.errors import StripeAccessError, check_api_key
from census_stripe.stripe_client.rate_limit import RateLimits, is_live_key, shared_budget
from census_stripe.stripe_client.values import dashboard_url

if TYPE_CHECKING:
    from census_stripe.objects.base import StripeObjectType
    from census_stripe.spec import MeterEventSettings
    from census_stripe.stripe_client.client import StripeObjects
    from census_stripe.stripe_client.meter_types import MeterEventApi


LIVE_KEY_REFUSED = (
    "STRIPE_API_KEY is a live-mode key; set allow_live_mode on the stripe resource to sync to live Stripe "
    "(sync_resources() sets it from CENSUS_STRIPE_ALLOW_LIVE_MODE=true)"
)


class StripeResource(dg.ConfigurableResource):
    """A Stripe account. Give `api_key` as `EnvVar("STRIPE_API_KEY")` so the key stays out of config."""

    api_key: str = Field(
        description="Secret (sk_...) or restricted (rk_...) key with write access to what the syncs write "
        "(Customers, Products, Prices, meter events; and read access to Billing meters for usage syncs)."
    )
    api_base: str | None = Field(
        default=None, description="Another API server, e.g. a local emulator; Stripe itself when unset."
    )
    billing_api_base: str | None = Field(
        default=None,
        description="Another server for the account's Billing meters and meter events, e.g. the demo's Stripe "
        "double beside a customer emulator without them; `api_base` (Stripe's hosts) when unset.",
    )
    allow_live_mode: bool = Field(
        default=False, description="Live keys (sk_live_, rk_live_) are refused unless this is true."
    )
    account_requests_per_second: float | None = Field(
        default=None, description="The account's rate limit; Stripe's default for the key's mode (live 100, test 25)."
    )
    create_requests_per_second: float = Field(
        default=25, description="Rate limit of creating customers, and of each other object's create endpoint."
    )
    update_requests_per_second: float = Field(
        default=25, description="Rate limit of updating customers, and of each other object's update endpoint."
    )
    headroom: float = Field(
        default=0.1, ge=0, lt=1, description="Share of every rate limit left for the account's other traffic."
    )
    concurrency: int = Field(default=16, ge=1, description="Stripe requests in flight at once.")
    meter_event_requests_per_second: float = Field(
        default=1000,
        description="Rate limit of v1 meter events in live mode (Stripe's own, apart from the account's); in test "
        "mode they count against the account's limit.",
    )
    meter_event_stream_requests_per_second: float = Field(
        default=10000, description="Rate limit of meter event stream requests, each up to 100 events."
    )
    meter_event_concurrency: int = Field(default=200, ge=1, description="Meter event requests in flight at once.")

    def objects(self, object_type: StripeObjectType | None = None) -> StripeObjects:
        """The endpoints of one object type (customers by default), within the account's budget."""
        from census_stripe.objects import CUSTOMER
        from census_stripe.stripe_client.client import StripeObjects  # the SDK, imported when a run calls Stripe

        self._check_key()
        budget = shared_budget(self.api_key, self.api_base, self._rate_limits())
        return StripeObjects(self.api_key, self.api_base, budget, object_type=object_type or CUSTOMER)

    def _check_key(self) -> None:
        # A malformed key is named as such before anything reads its mode. Not a pydantic
        # validator: pydantic's errors quote the value they refuse.
        check_api_key(self.api_key)
        if is_live_key(self.api_key) and not self.allow_live_mode:
            raise StripeAccessError(LIVE_KEY_REFUSED)

    def _rate_limits(self) -> RateLimits:
        """The account's limits, as every sync through this resource shares them (one budget per limits)."""
        from census_stripe.objects import OBJECT_TYPES

        return RateLimits(
            account=self.account_requests_per_second,
            endpoints=tuple(
                (each.endpoint(verb), rate)
                for each in OBJECT_TYPES.values()
                for verb, rate in (
                    ("create", self.create_requests_per_second),
                    ("update", self.update_requests_per_second),
                )
            ),
            headroom=self.headroom,
        )

    def meter_events(self, settings: MeterEventSettings) -> MeterEventApi:
        """The endpoint a meter event sync sends through; made inside the run's event loop."""
        from census_stripe.stripe_client.meter_events import MeterEventStream, V1MeterEvents
        from census_stripe.stripe_client.meter_types import MeterLimits

        self._check_key()
        limits = MeterLimits(
            v1_requests_per_second=self.meter_event_requests_per_second,
            stream_requests_per_second=self.meter_event_stream_requests_per_second,
            concurrency=self.meter_event_concurrency,
            account=self._rate_limits(),
        )
        endpoint = MeterEventStream if settings.api == "stream" else V1MeterEvents
        return endpoint(
            self.api_key,
            self.billing_api_base or self.api_base,
            limits,
            (settings.customer_payload_key, settings.value_payload_key),
        )

    def dashboard_url(self, stripe_id: str, plural: str = "customers") -> str | None:
        return dashboard_url(stripe_id, self.api_key, self.api_base, plural)
