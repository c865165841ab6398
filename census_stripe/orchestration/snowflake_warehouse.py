"""Snowflake as a warehouse resource, in a module of its own: its field's type imports
dagster_snowflake, which costs seconds, so only a Snowflake deployment imports it."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

from dagster_snowflake import SnowflakeResource

from census_stripe.orchestration.warehouses import WarehouseResource
from census_stripe.warehouse.base import Warehouse


class SnowflakeWarehouseResource(WarehouseResource):
    kind: ClassVar[str] = "snowflake"
    snowflake: SnowflakeResource

    @contextmanager
    def open(self, read_only: bool = False) -> Iterator[Warehouse]:
        from census_stripe.warehouse.snowflake import SnowflakeWarehouse

        with self.snowflake.get_connection() as connection:
            yield SnowflakeWarehouse(connection)
