"""Connections as Dagster resources: the Stripe key and the warehouse, configured from the environment."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from census_stripe.apply.rate_limit import RateLimits, shared_budget
from census_stripe.stripe_api import StripeAccessError, StripeCustomers, dashboard_url, is_live_key
from census_stripe.warehouse.base import Warehouse
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import DEFAULT_SCHEMA


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

    def customer_url(self, customer_id: str) -> str:
        return dashboard_url(customer_id, self.api_key, self.api_base)


class WarehouseResource(dg.ConfigurableResource):
    """Where the models live and the sync keeps its state; one subclass per kind of warehouse."""

    kind: ClassVar[str]  # shown on assets in the UI
    state_schema: str = Field(
        default=DEFAULT_SCHEMA, description="Schema of the sync's state and rejection tables (created on first use)."
    )

    @contextmanager
    def open(self, read_only: bool = False) -> Iterator[Warehouse]:
        """A session; `read_only` for sensors, which must not take a writer's place."""
        raise NotImplementedError
        yield


class DuckDBWarehouseResource(WarehouseResource):
    """The embedded warehouse: a DuckDB file, the one dbt builds the models into."""

    kind: ClassVar[str] = "duckdb"
    duckdb: DuckDBResource

    @contextmanager
    def open(self, read_only: bool = False) -> Iterator[Warehouse]:
        if read_only:
            # DuckDB has one writer per file; a reader must not wait on it, nor block it for long.
            with duckdb.connect(self.duckdb.database, read_only=True) as connection:
                yield DuckDBWarehouse(connection)
            return
        Path(self.duckdb.database).parent.mkdir(parents=True, exist_ok=True)
        with self.duckdb.get_connection() as connection:
            yield DuckDBWarehouse(connection)
