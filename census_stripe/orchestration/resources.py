"""The Stripe account as a Dagster resource, configured from the environment (warehouses: warehouses.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from census_stripe.stripe_client.errors import StripeAccessError, check_api_key
from census_stripe.stripe_client.rate_limit import RateLimits, is_live_key, shared_budget
from census_stripe.stripe_client.values import dashboard_url

if TYPE_CHECKING:
    from census_stripe.stripe_client.client import StripeCustomers


class StripeResource(dg.ConfigurableResource):
    """A Stripe account. Give `api_key` as `EnvVar("STRIPE_API_KEY")` so the key stays out of config."""

    api_key: str = Field(description="Secret (sk_...) or restricted (rk_...) key with write access to Customers.")
    api_base: str | None = Field(
        default=None, description="Another API server, e.g. a local emulator; Stripe itself when unset."
    )
    allow_live_mode: bool = Field(
        default=False, description="Live keys (sk_live_, rk_live_) are refused unless this is true."
    )
    account_requests_per_second: float | None = Field(
        default=None, description="The account's rate limit; Stripe's default for the key's mode (live 100, test 25)."
    )
    create_requests_per_second: float = Field(default=25, description="Rate limit of creating customers.")
    update_requests_per_second: float = Field(default=25, description="Rate limit of updating customers.")
    headroom: float = Field(
        default=0.1, ge=0, lt=1, description="Share of every rate limit left for the account's other traffic."
    )
    concurrency: int = Field(default=16, ge=1, description="Stripe requests in flight at once.")

    def customers(self) -> StripeCustomers:
        # A malformed key is named as such before anything reads its mode. Not a pydantic
        # validator: pydantic's errors quote the value they refuse.
        from census_stripe.stripe_client.client import StripeCustomers  # the SDK, imported when a run calls Stripe

        check_api_key(self.api_key)
        if is_live_key(self.api_key) and not self.allow_live_mode:
            raise StripeAccessError(
                "STRIPE_API_KEY is a live-mode key; set allow_live_mode on the stripe resource to sync to live Stripe"
            )
        limits = RateLimits(
            account=self.account_requests_per_second,
            endpoints=(("create", self.create_requests_per_second), ("update", self.update_requests_per_second)),
            headroom=self.headroom,
        )
        return StripeCustomers(self.api_key, self.api_base, shared_budget(self.api_key, self.api_base, limits))

    def customer_url(self, customer_id: str) -> str | None:
        return dashboard_url(customer_id, self.api_key, self.api_base)
