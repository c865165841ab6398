"""The dbt project, on its own so that `dagster-dbt project prepare-and-package` can load it before
any manifest exists (the assets in dbt.py need one)."""

from dagster_dbt import DbtProject

from census_stripe.settings import DBT_PROJECT_DIR

dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR)
# Under `dagster dev` this parses the project; elsewhere the manifest must have been prepared
# (`dagster-dbt project prepare-and-package`, which `make` runs) — never at import in production.
dbt_project.prepare_if_dev()
