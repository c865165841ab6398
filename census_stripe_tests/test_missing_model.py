"""A sync whose model was never built in the warehouse it reads stops before any Stripe write, naming
the model and that warehouse (its file, or its address): every kind of sync, on DuckDB and PostgreSQL,
and through Dagster as a person reads it."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import psycopg
import pytest

from census_stripe.meter_sync import run_meter_event_sync
from census_stripe.orchestration.sync_asset import load_sync
from census_stripe.plan.meter_events import CustomerSource
from census_stripe.spec import load_sync_spec
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.stripe_client.meter_events import MeterEventStream
from census_stripe.sync import run_sync
from census_stripe.warehouse.base import ModelTableMissingError, Relation, Warehouse
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.postgres import PostgresWarehouse
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.conftest import API_KEY, DEMO_SYNC, SyncRunner
from census_stripe_tests.usage import ACCOUNT, UNLIMITED, meter_spec

MODEL = Relation("main", "paying_users")


@contextmanager
def duckdb_warehouse(tmp_path: Path, postgres_database: Callable[[], str]) -> Iterator[tuple[Warehouse, str]]:
    path = tmp_path / "empty.duckdb"
    with duckdb.connect(str(path)) as connection:
        yield DuckDBWarehouse(connection), f"the DuckDB file {path}"


@contextmanager
def postgres_warehouse(tmp_path: Path, postgres_database: Callable[[], str]) -> Iterator[tuple[Warehouse, str]]:
    database = postgres_database()
    with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=database) as connection:
        yield PostgresWarehouse(connection), f"postgresql://postgres@127.0.0.1:5432/{database}"


WAREHOUSES = {"duckdb": duckdb_warehouse, "postgres": postgres_warehouse}


@pytest.fixture
def lazy_postgres_database(request) -> Callable[[], str]:
    """A throwaway PostgreSQL database, made only for the tests that ask for one."""
    return lambda: request.getfixturevalue("postgres_database")


def api_requests(double) -> dict[str, int]:
    """The requests the double served, by endpoint (reading the account is not one)."""
    return {name: count for name, count in double.stats().items() if name.startswith("requests_") and count}


def expected_error(model: str, relation: Relation, where: str) -> str:
    return f"model '{model}' has no table or view {relation.schema}.{relation.name} in {where}: build it there first"


@pytest.mark.parametrize("warehouse_kind", WAREHOUSES)
def test_a_customer_sync_of_a_model_never_built_names_model_and_warehouse(
    warehouse_kind, tmp_path, lazy_postgres_database, double
):
    spec = load_sync_spec(DEMO_SYNC)
    with WAREHOUSES[warehouse_kind](tmp_path, lazy_postgres_database) as (warehouse, where):
        with pytest.raises(ModelTableMissingError) as raised:
            run_sync(
                spec,
                model=MODEL,
                store=SyncStateStore(warehouse),
                stripe=StripeObjects(API_KEY, double.url),
                run_id="r",
            )
    assert str(raised.value).startswith(expected_error(spec.model, MODEL, where))
    assert api_requests(double) == {}


@pytest.mark.parametrize("warehouse_kind", WAREHOUSES)
def test_a_meter_event_sync_of_a_model_never_built_names_model_and_warehouse(
    warehouse_kind, tmp_path, lazy_postgres_database, double
):
    spec = meter_spec()
    with WAREHOUSES[warehouse_kind](tmp_path, lazy_postgres_database) as (warehouse, where):
        with pytest.raises(ModelTableMissingError) as raised:
            run_meter_event_sync(
                spec,
                model=MODEL,
                store=SyncStateStore(warehouse),
                api=lambda: MeterEventStream(API_KEY, double.url, UNLIMITED, ("stripe_customer_id", "value")),
                account_of=lambda: ACCOUNT,
                customers=CustomerSource(),
                run_id="r",
            )
    assert str(raised.value).startswith(expected_error(spec.model, MODEL, where))
    assert api_requests(double) == {}


def test_through_dagster_the_failure_says_which_file_lacks_which_model(tmp_path, stripe_url, stripe_customers):
    empty = tmp_path / "not_the_one_dbt_built.duckdb"
    result = SyncRunner(load_sync(DEMO_SYNC), empty, stripe_url).run(raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None
    causes = [failure, *([failure.cause] if failure.cause else [])]
    messages = [cause.message for cause in causes]
    assert any(
        expected_error("stripe_customers", Relation("main", "stripe_customers"), f"the DuckDB file {empty}") in message
        for message in messages
    ), messages
    assert list(stripe_customers.iter_all()) == []
