"""Everything Dagster loads: the dbt models, the syncs (StripeSyncComponent instances in defs/),
what triggers them, and the resources."""

from __future__ import annotations

import warnings

import dagster as dg

from census_stripe.orchestration.dbt import daily_partitioned_models, dbt_resource, warehouse_models
from census_stripe.orchestration.executor import sync_executor
from census_stripe.orchestration.project import (
    refuse_duplicate_syncs,
    refuse_stray_sync_files,
    sync_resources,
    whole_model_sync_job,
)
from census_stripe.settings import DEFS_DIR, PROJECT_ROOT

# The beta and preview parts of Dagster's API this project uses on purpose (a backfill policy, the
# components' code references) warn each time a process loads the code: under `make dev` that is every
# code server, run and sensor tick, dozens of identical lines hiding the ones that matter.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def _sync_instances() -> dg.Definitions:
    """The defs folder's component instances, as `dg.load_from_defs_folder` builds them, without its
    catalogue of every installed package's component types for the UI: that imports each package
    registering components (dagster-snowflake, dagster-gcp with their SDKs and pandas) in every
    process that loads the code location, several seconds each time (BENCHMARKS.md, section 5)."""
    tree = dg.ComponentTree.for_project(path_within_project=PROJECT_ROOT)
    return dg.Definitions.merge(tree.build_defs(DEFS_DIR), dg.Definitions(component_tree=tree))


def _project_defs() -> dg.Definitions:
    refuse_stray_sync_files(DEFS_DIR)
    syncs = _sync_instances()
    refuse_duplicate_syncs(syncs)
    return dg.Definitions.merge(
        syncs,
        dg.Definitions(
            assets=[warehouse_models, daily_partitioned_models],
            jobs=[whole_model_sync_job(syncs)],
            # Steps run one after another in the run's process: DuckDB allows a single writer, and
            # a sync waits for its model anyway. Waiting for a sync's pool, a run sleeps, and frees the
            # slot of a run that died holding it (census_stripe/orchestration/executor.py).
            executor=sync_executor,
            resources={"dbt": dbt_resource(), **sync_resources()},
        ),
    )


defs = _project_defs()
