"""docs/deploy.md's dagster.yaml, as shown there, loaded against this machine's PostgreSQL."""

import re

import dagster as dg
import yaml
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

from census_stripe.settings import PROJECT_ROOT

DEPLOY_GUIDE = PROJECT_ROOT / "docs" / "deploy.md"
INSTANCE_FILE_MARK = "# $DAGSTER_HOME/dagster.yaml\n"


def shown_instance_config() -> str:
    """The guide's YAML block that starts with the dagster.yaml mark."""
    blocks = re.findall(r"```yaml\n(.*?)```", DEPLOY_GUIDE.read_text(), re.DOTALL)
    [block] = [block for block in blocks if block.startswith(INSTANCE_FILE_MARK)]
    return block


def test_the_deploy_guides_dagster_yaml_runs_on_postgres_with_pools_and_run_monitoring(
    tmp_path, postgres_database, monkeypatch
):
    for name, value in {
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_USERNAME": "postgres",
        "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
        "DAGSTER_PG_DB": postgres_database,
    }.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster.yaml").write_text(shown_instance_config())

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        # The guide's `dagster instance concurrency set stripe_sync_customers 1`, then a run claims the slot.
        instance.event_log_storage.set_concurrency_slots("stripe_sync_customers", 1)
        assert instance.event_log_storage.get_concurrency_info("stripe_sync_customers").slot_count == 1
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
        instance.run_storage.add_run(dg.DagsterRun(job_name="sync_to_stripe", run_id="deploy-guide-run"))
        assert [r.run_id for r in instance.get_runs()] == ["deploy-guide-run"]
    tables = yaml.safe_load(shown_instance_config())
    assert set(tables) >= {"storage", "concurrency", "run_monitoring"}
