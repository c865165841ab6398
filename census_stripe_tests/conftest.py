"""Real parts for the tests: a DuckDB file built by a real `dbt build`, and a real localstripe process.

The warehouse is built once per session through Dagster (which also exercises the dbt assets and
their checks); every test that syncs gets its own copy of the file, so tests never see each
other's state. The local Stripe server is one process per session, emptied before each test.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psutil
import psycopg
import pytest
from dagster_duckdb import DuckDBResource

from census_stripe.demo.local_stripe import LocalStripe, free_port, stop_process_group
from census_stripe.demo.seed_data import DEFAULT_CUSTOMERS, write_seeds
from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.orchestration.resources import StripeResource
from census_stripe.orchestration.sync_asset import Sync, build_sync_asset, load_sync
from census_stripe.orchestration.warehouses import DuckDBWarehouseResource
from census_stripe.settings import DEFS_DIR
from census_stripe.stripe_client.client import StripeObjects

# A key with a recognisable body, so tests can prove it never leaks.
API_KEY = "sk_test_CANARY4f9b2e7d1c"
DEMO_SYNC = DEFS_DIR / "customers" / "defs.yaml"


# `dagster asset materialize` of the demo sync, as a person runs it from a shell.
MATERIALIZE_DEMO_SYNC = [
    str(Path(sys.executable).parent / "dagster"),
    "asset",
    "materialize",
    "-m",
    "census_stripe.definitions",
    "--select",
    "stripe/customers",
]


def dagster_process_env(home: Path, warehouse: Path, stripe_url: str, api_key: str = API_KEY) -> dict[str, str]:
    """The environment of a Dagster process (the CLI, the webserver) on this instance, warehouse and Stripe."""
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CENSUS_STRIPE_DUCKDB_PATH": str(warehouse),
        "STRIPE_API_KEY": api_key,
        "STRIPE_API_BASE": stripe_url,
    }


def postgres_sql(statement: str, database: str = "test") -> list[tuple]:
    """A statement on this machine's PostgreSQL server (127.0.0.1:5432, trust auth)."""
    with psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname=database, autocommit=True) as connection:
        rows = connection.execute(statement)
        return rows.fetchall() if rows.description else []


def require_postgres() -> None:
    """Fail, never skip, with the command that starts the server when it is not running."""
    try:
        postgres_sql("select 1")
    except psycopg.OperationalError as error:
        pytest.fail(
            f"PostgreSQL is not reachable at 127.0.0.1:5432 ({error}). Start it with "
            "'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' (trust auth, database test)."
        )


def pytest_sessionfinish(session, exitstatus):
    """`make test` runs the suite in two passes, the tests marked serial apart: a pass that a narrower
    selection (PYTEST_ARGS) leaves empty has passed."""
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.OK


class Processes:
    """The processes a test starts: each in a process group of its own, every one stopped (its group
    and its descendants killed) when the test ends, passed or failed."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], **popen) -> subprocess.Popen:
        process = subprocess.Popen(command, start_new_session=True, **popen)
        self.started.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen) -> None:
        """SIGKILL of the process's whole group, as a crash or `kill -9` of a run does it."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.started:
            stop_process_group(process, signal.SIGKILL)


@pytest.fixture
def processes() -> Iterator[Processes]:
    owned = Processes()
    try:
        yield owned
    finally:
        owned.stop_all()


@pytest.fixture
def unreachable_url() -> Iterator[str]:
    """An address where every connection is refused: a port bound for the test's duration and never
    listened on, so that no other process can take it meanwhile."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


def listening_ports(process: subprocess.Popen) -> set[int]:
    """The TCP ports the process, or one of its descendants, listens on."""
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    ports = set()
    for member in family:
        try:
            connections = member.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        ports |= {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}
    return ports


def start_on_a_free_port(
    command: Callable[[int], list[str]], processes: Processes, log: Path, timeout: float = 300, **popen
) -> tuple[subprocess.Popen, int]:
    """A server that cannot bind a port of its own choosing (dagster-webserver takes `-p 0` for "3000"),
    started on a port free a moment before. It is up once a process of its own listens there, never
    another one that took the port meanwhile; if one did, the server exits, and another port is tried.
    `timeout` is a deadline for a server that cannot start, not a timing."""
    for _ in range(5):
        port = free_port()
        with open(log, "ab") as output:
            process = processes.start(command(port), stdout=output, stderr=subprocess.STDOUT, **popen)
        deadline = time.monotonic() + timeout
        while process.poll() is None:
            if port in listening_ports(process):
                return process, port
            assert time.monotonic() < deadline, f"no listener on port {port}:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
    raise AssertionError(f"the server exited on every port tried:\n{log.read_text()[-3000:]}")


@pytest.fixture
def postgres_database() -> Iterator[str]:
    """A throwaway database on this machine's PostgreSQL, dropped after the test."""
    require_postgres()
    database = f"dagster_{uuid.uuid4().hex[:8]}"
    postgres_sql(f"create database {database}")
    yield database
    postgres_sql(f"drop database {database} with (force)")


@dataclass(frozen=True)
class BuiltWarehouse:
    path: Path
    dbt_result: dg.ExecuteInProcessResult


@pytest.fixture(scope="session")
def built_warehouse(tmp_path_factory) -> BuiltWarehouse:
    """A DuckDB file with the demo models, built by dbt through Dagster; never modified by tests."""
    path = tmp_path_factory.mktemp("warehouse") / "warehouse.duckdb"
    previous = os.environ.get("CENSUS_STRIPE_DUCKDB_PATH")
    os.environ["CENSUS_STRIPE_DUCKDB_PATH"] = str(path)
    try:
        from census_stripe.orchestration.dbt import dbt_resource, warehouse_models

        write_seeds(DEFAULT_CUSTOMERS)
        result = dg.materialize([warehouse_models], resources={"dbt": dbt_resource()})
        assert result.success
    finally:
        if previous is None:
            os.environ.pop("CENSUS_STRIPE_DUCKDB_PATH")
        else:
            os.environ["CENSUS_STRIPE_DUCKDB_PATH"] = previous
    return BuiltWarehouse(path, result)


@pytest.fixture
def warehouse_path(built_warehouse, tmp_path) -> Path:
    """This test's own copy of the built warehouse."""
    path = tmp_path / "warehouse.duckdb"
    shutil.copyfile(built_warehouse.path, path)
    return path


@pytest.fixture(scope="session")
def fakesnow_server() -> Iterator[dict]:
    """fakesnow's Snowflake server, one per session: `fakesnow.server()` works once per process, since
    it imports its module `fakesnow.server` over itself."""
    import fakesnow

    with fakesnow.server() as connection:
        yield connection


@pytest.fixture(scope="session")
def local_stripe_server():
    with LocalStripe() as server:
        yield server


@pytest.fixture
def stripe_url(local_stripe_server) -> str:
    """The local Stripe server, emptied for this test."""
    request = urllib.request.Request(f"{local_stripe_server.url}/_config/data", method="DELETE")
    urllib.request.urlopen(request).close()
    return local_stripe_server.url


@pytest.fixture(scope="session")
def stripe_double_server():
    with StripeDoubleServer() as server:
        yield server


@pytest.fixture
def double(stripe_double_server) -> StripeDoubleServer:
    """The Stripe test double, empty and without faults or limits, for this test."""
    stripe_double_server.restore()
    return stripe_double_server


@pytest.fixture
def stripe_customers(stripe_url) -> StripeObjects:
    return StripeObjects(API_KEY, stripe_url)


def resources(warehouse_path: Path, stripe_url: str, api_key=API_KEY) -> dict:
    return {
        # localstripe has no rate limits; Stripe's test-mode 25/s would only slow the tests down.
        "stripe": StripeResource(
            api_key=api_key,
            api_base=stripe_url,
            account_requests_per_second=1000,
            create_requests_per_second=1000,
            update_requests_per_second=1000,
        ),
        "warehouse": DuckDBWarehouseResource(duckdb=DuckDBResource(database=str(warehouse_path))),
    }


class SyncRunner:
    """Materializes one sync asset the way Dagster does, and reads back what it recorded."""

    def __init__(self, sync: Sync, warehouse_path: Path, stripe_url: str):
        self.asset = build_sync_asset(sync, "duckdb")
        self.warehouse_path = warehouse_path
        self.stripe_url = stripe_url

    def run(
        self, instance=None, api_key=API_KEY, raise_on_error=True, partition_key=None, tags=None, **config
    ) -> dg.ExecuteInProcessResult:
        run_config = {"ops": {self.asset.op.name: {"config": config}}} if config else None
        return dg.materialize(
            [self.asset],
            resources=resources(self.warehouse_path, self.stripe_url, api_key),
            run_config=run_config,
            instance=instance,
            raise_on_error=raise_on_error,
            partition_key=partition_key,
            tags=tags,
        )

    def metadata(self, result: dg.ExecuteInProcessResult) -> dict:
        """Metadata of the run's materialization, or of its observation for a dry run."""
        materializations = [e.materialization for e in result.get_asset_materialization_events()]
        observations = [e.asset_observation_data.asset_observation for e in result.get_asset_observation_events()]
        # A run over a range of partitions records one materialization per partition, alike.
        event = (materializations or observations)[-1]
        return {name: value.value for name, value in event.metadata.items()}

    def counts(self, result) -> dict[str, int]:
        metadata = self.metadata(result)
        return {
            name: value for name, value in metadata.items() if isinstance(value, int) and not isinstance(value, bool)
        }


@pytest.fixture
def sync_runner(warehouse_path, stripe_url):
    def make(path: Path = DEMO_SYNC) -> SyncRunner:
        return SyncRunner(load_sync(path), warehouse_path, stripe_url)

    return make


# Every warehouse a key must be the same on: PostgreSQL in a database of each kind of collation.
KEY_WAREHOUSES = ("duckdb", "postgres_c", "postgres_c_utf8", "postgres_icu", "postgres_icu_tr", "snowflake")


@pytest.fixture(scope="module", params=KEY_WAREHOUSES)
def key_warehouse(request, tmp_path_factory):
    """Each warehouse a key must be the same on, in turn, open for a module's tests: DuckDB, PostgreSQL
    databases of every kind of collation, fakesnow (census_stripe_tests/key_warehouses.py)."""
    from census_stripe_tests.key_warehouses import open_warehouse

    server = request.getfixturevalue("fakesnow_server") if request.param == "snowflake" else None
    with open_warehouse(request.param, tmp_path_factory.mktemp(request.param), server) as warehouse:
        yield warehouse
