"""The dbt project, on its own so that `dagster-dbt project prepare-and-package` can load it before
any manifest exists (the assets in dbt.py need one).

A manifest names each model's relation for one target (schema, database), so each warehouse gets
its own: dbt_project/target/<warehouse>/manifest.json, for CENSUS_STRIPE_WAREHOUSE's target.
"""

from dagster_dbt import DbtProject

from census_stripe.settings import DBT_PROJECT_DIR, warehouse_kind

WAREHOUSE = warehouse_kind()

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, target=WAREHOUSE, target_path=f"target/{WAREHOUSE}")
# Under `dagster dev` this parses the project; elsewhere the manifest must have been prepared
# (`dagster-dbt project prepare-and-package`, which `make` runs) — never at import in production.
dbt_project.prepare_if_dev()
