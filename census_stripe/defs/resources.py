"""Connections as Dagster resources: the Stripe key and the warehouse, configured from the environment."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from census_stripe.stripe_api import StripeCustomers, dashboard_url
from census_stripe.warehouse.base import Warehouse
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import DEFAULT_SCHEMA


class StripeResource(dg.ConfigurableResource):
    """A Stripe account. Give `api_key` as `EnvVar("STRIPE_API_KEY")` so the key stays out of config."""

    api_key: str = Field(description="Secret (sk_...) or restricted (rk_...) key with write access to Customers.")
    api_base: str | None = Field(
        default=None, description="Another API server, e.g. a local emulator; Stripe itself when unset."
    )
    max_network_retries: int = Field(default=2, description="Retries of network errors and 5xx, by the SDK.")

    def customers(self) -> StripeCustomers:
        return StripeCustomers(self.api_key, self.api_base, self.max_network_retries)

    def customer_url(self, customer_id: str) -> str:
        return dashboard_url(customer_id, self.api_key, self.api_base)


class WarehouseResource(dg.ConfigurableResource):
    """Where the models live and the sync keeps its state; one subclass per kind of warehouse."""

    kind: ClassVar[str]  # shown on assets in the UI
    state_schema: str = Field(
        default=DEFAULT_SCHEMA, description="Schema of the sync's state and rejection tables (created on first use)."
    )

    @contextmanager
    def open(self) -> Iterator[Warehouse]:
        raise NotImplementedError
        yield


class DuckDBWarehouseResource(WarehouseResource):
    """The embedded warehouse: a DuckDB file, the one dbt builds the models into."""

    kind: ClassVar[str] = "duckdb"
    duckdb: DuckDBResource

    @contextmanager
    def open(self) -> Iterator[Warehouse]:
        Path(self.duckdb.database).parent.mkdir(parents=True, exist_ok=True)
        with self.duckdb.get_connection() as connection:
            yield DuckDBWarehouse(connection)
