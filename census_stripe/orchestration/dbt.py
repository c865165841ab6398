"""The dbt project as Dagster assets: models, seeds and snapshots; dbt tests become asset checks."""

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets

from census_stripe.orchestration.dbt_project import WAREHOUSE, dbt_project
from census_stripe.settings import duckdb_path

WAREHOUSE_GROUP = "warehouse"


def dbt_resource() -> DbtCliResource:
    # The dbt installed beside this Python, so that an un-activated virtualenv works too.
    beside_python = Path(sys.executable).parent / "dbt"
    return DbtCliResource(
        project_dir=dbt_project, dbt_executable=str(beside_python) if beside_python.exists() else "dbt"
    )


class Translator(DagsterDbtTranslator):
    def get_asset_spec(self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        return spec.replace_attributes(group_name=WAREHOUSE_GROUP, kinds={"dbt", WAREHOUSE})


def _point_dbt_at_the_warehouse() -> None:
    # dbt's profile reads this variable; resolving it here keeps dbt on the file the sync reads,
    # also when only CENSUS_STRIPE_DATA_DIR was set.
    os.environ["CENSUS_STRIPE_DUCKDB_PATH"] = str(duckdb_path())
    duckdb_path().parent.mkdir(parents=True, exist_ok=True)


PARTITIONED = "tag:partitioned"


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=Translator(),
    exclude=PARTITIONED,
)
def warehouse_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    _point_dbt_at_the_warehouse()
    yield from dbt.cli(["build"], context=context).stream()


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=Translator(),
    select=PARTITIONED,
    partitions_def=dg.DailyPartitionsDefinition(start_date="2023-01-01"),
    backfill_policy=dg.BackfillPolicy.single_run(),
    name="daily_partitioned_models",
)
def daily_partitioned_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    """Incremental models: the partition window (or a backfill's whole range) reaches dbt as --vars."""
    _point_dbt_at_the_warehouse()
    window = context.partition_time_window
    dates = {"min_date": window.start.strftime("%Y-%m-%d"), "max_date": window.end.strftime("%Y-%m-%d")}
    yield from dbt.cli(["build", "--vars", json.dumps(dates)], context=context).stream()
