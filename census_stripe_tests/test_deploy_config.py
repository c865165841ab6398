"""docs/deploy.md, held to what the code does: its dagster.yaml starts Dagster on this machine's
PostgreSQL (its pool commands, then a sync materialized by `dagster asset materialize` on that
instance), its pools are every sync's, its environment tables list every variable the warehouses
read, and live mode is allowed the way it says."""

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from census_stripe.orchestration.project import ALLOW_LIVE_MODE, sync_resources
from census_stripe.orchestration.warehouses import warehouse_from_env
from census_stripe.settings import DEFS_DIR, PROJECT_ROOT, WAREHOUSES
from census_stripe.stripe_client.errors import StripeAccessError
from census_stripe_tests.conftest import MATERIALIZE_DEMO_SYNC, dagster_process_env

DEPLOY_GUIDE = PROJECT_ROOT / "docs" / "deploy.md"
INSTANCE_FILE_MARK = "# $DAGSTER_HOME/dagster.yaml\n"
POOL_COMMAND = re.compile(r"^dagster instance concurrency set (stripe_sync_\w+) 1$", re.M)


def guide() -> str:
    return DEPLOY_GUIDE.read_text()


def shown_instance_config() -> str:
    """The guide's YAML block that starts with the dagster.yaml mark."""
    blocks = re.findall(r"```yaml\n(.*?)```", guide(), re.DOTALL)
    [block] = [block for block in blocks if block.startswith(INSTANCE_FILE_MARK)]
    return block


def shown_pool_commands() -> str:
    """The guide's shell block that creates the pools."""
    [block] = [block for block in re.findall(r"```sh\n(.*?)```", guide(), re.DOTALL) if POOL_COMMAND.search(block)]
    return block


def test_the_guide_creates_a_pool_for_every_sync_of_this_project():
    syncs = {path.parent.name for path in DEFS_DIR.glob("*/defs.yaml")}
    assert set(POOL_COMMAND.findall(shown_pool_commands())) == {f"stripe_sync_{name}" for name in syncs}


def test_dagster_runs_a_sync_on_the_guides_dagster_yaml(
    tmp_path, postgres_database, warehouse_path, stripe_url, stripe_customers, monkeypatch
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(shown_instance_config())
    env = dagster_process_env(home, warehouse_path, stripe_url) | {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
        "DAGSTER_PG_DB": postgres_database,
    }
    # The guide's pool commands, as an operator runs them, then a run that claims its sync's slot.
    pools = subprocess.run(
        ["bash", "-e", "-c", shown_pool_commands()],
        env=env | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pools.returncode == 0, pools.stderr[-3000:]
    materialized = subprocess.run(
        MATERIALIZE_DEMO_SYNC, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600
    )
    assert materialized.returncode == 0, materialized.stderr[-3000:]
    assert len(list(stripe_customers.iter_all())) == 294

    for name in [name for name in env if name.startswith("DAGSTER_PG_")]:
        monkeypatch.setenv(name, env[name])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        [run] = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        for pool in POOL_COMMAND.findall(shown_pool_commands()):
            info = instance.event_log_storage.get_concurrency_info(pool)
            assert (info.slot_count, info.active_slot_count) == (1, 0), pool  # the run gave its slot back
    assert set(yaml.safe_load(shown_instance_config())) >= {"storage", "concurrency", "run_monitoring"}


class ReadVariables(dict):
    """An environment that remembers every variable asked for."""

    def __init__(self, values: dict[str, str]):
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, name, default=None):
        self.asked.add(name)
        return super().get(name, default)

    def __contains__(self, name) -> bool:
        self.asked.add(name)
        return super().__contains__(name)

    def __getitem__(self, name):
        self.asked.add(name)
        return super().__getitem__(name)


def variables_of_table_row(first_cell: str) -> set[str]:
    """The variables the guide's environment tables list in the row whose first cell is given."""
    [row] = [line for line in guide().splitlines() if line.startswith(f"| {first_cell} |")]
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|", 2)[2]))


@pytest.mark.parametrize("warehouse", WAREHOUSES)
def test_the_guide_lists_every_variable_each_warehouse_reads(warehouse, monkeypatch):
    monkeypatch.setenv("CENSUS_STRIPE_WAREHOUSE", warehouse)
    warehouse_from_env()  # first, so that the drivers' imports (which read variables of their own) are done
    environment = ReadVariables({"CENSUS_STRIPE_WAREHOUSE": warehouse})
    monkeypatch.setattr(os, "environ", environment)
    warehouse_from_env()
    monkeypatch.undo()
    read = environment.asked - {"CENSUS_STRIPE_WAREHOUSE"}
    listed = variables_of_table_row(f"`{warehouse}`")
    if warehouse == "snowflake":
        # SNOWFLAKE_HOST, _PORT and _PROTOCOL only point the tests at fakesnow (warehouses.md).
        read -= {"SNOWFLAKE_HOST", "SNOWFLAKE_PORT", "SNOWFLAKE_PROTOCOL"}
    if warehouse == "duckdb":
        read -= {"CENSUS_STRIPE_DUCKDB_MEMORY_LIMIT"}  # a tuning knob with a default (configuration.md)
    assert read <= listed, read - listed
    # The schema is read by dbt's profile, the key file by Google's client: listed for them.
    assert listed - read <= {"CENSUS_STRIPE_SCHEMA", "GOOGLE_APPLICATION_CREDENTIALS"}


def test_every_deployment_variable_is_passed_to_docker_runs():
    launcher = yaml.safe_load(
        next(b for b in re.findall(r"```yaml\n(.*?)```", guide(), re.DOTALL) if "DockerRunLauncher" in b)
    )
    passed = set(launcher["run_launcher"]["config"]["env_vars"])
    every_deployment = {"STRIPE_API_KEY", "CENSUS_STRIPE_WAREHOUSE", ALLOW_LIVE_MODE}
    dagster_storage = {"DAGSTER_PG_HOST", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"}
    assert every_deployment | dagster_storage | variables_of_table_row("`postgres`") <= passed
    assert (
        re.findall(r"\{env: (\w+)\}", shown_instance_config())
        and set(re.findall(r"\{env: (\w+)\}", shown_instance_config())) <= passed
    )


LIVE_KEY = "rk_live_0123456789"


@pytest.mark.parametrize(("setting", "allowed"), [(None, False), ("false", False), ("true", True), ("TRUE", True)])
def test_live_keys_write_only_where_the_environment_allows_live_mode(setting, allowed, monkeypatch):
    monkeypatch.setenv("STRIPE_API_KEY", LIVE_KEY)
    monkeypatch.delenv("STRIPE_API_BASE", raising=False)
    if setting is None:
        monkeypatch.delenv(ALLOW_LIVE_MODE, raising=False)
    else:
        monkeypatch.setenv(ALLOW_LIVE_MODE, setting)
    resources = sync_resources()
    with dg.build_resources({name: resources[name] for name in ("stripe", "stripe_catalog")}) as built:
        for stripe in (built.stripe, built.stripe_catalog):
            if allowed:
                assert stripe.objects()
            else:
                with pytest.raises(StripeAccessError, match=f"{ALLOW_LIVE_MODE}=true"):
                    stripe.objects()


def test_a_misspelt_live_mode_setting_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(ALLOW_LIVE_MODE, "yes")
    with pytest.raises(ValueError, match=f"{ALLOW_LIVE_MODE}='yes': use true"):
        sync_resources()
