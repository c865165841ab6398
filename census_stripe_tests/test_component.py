"""The sync as a Dagster Component: `dg` on this project, and a user's own Dagster project, with its
own dbt project, that adds a sync the way the README ("In your own Dagster project") says and
materializes it into Stripe."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from census_stripe.orchestration.project import refuse_duplicate_syncs, refuse_stray_sync_files
from census_stripe.orchestration.sync_asset import build_sync_asset, load_sync
from census_stripe.settings import PROJECT_ROOT
from census_stripe.spec import SyncConfigError
from census_stripe_tests.conftest import API_KEY, DEMO_SYNC

BIN = Path(sys.executable).parent


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def dg_env(home: Path, pythonpath: list[Path], **variables: str) -> dict[str, str]:
    """A `dg` or `dagster` process with census_stripe importable from this checkout, and dbt found
    beside this Python (dg prepares a dbt project's manifest with the `dbt` on PATH)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    paths = [*map(str, pythonpath), str(PROJECT_ROOT)]
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": os.pathsep.join(paths),
        **variables,
    }


def listed_assets(completed: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """Each asset `dg list defs --json` lists, with its dependencies."""
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    listing = json.loads(completed.stdout)
    return {asset["asset_key"]: asset.get("dependency_keys", []) for asset in listing["assets"]}


def test_dg_checks_and_lists_this_projects_syncs(tmp_path):
    env = dg_env(tmp_path / "home", [])
    checked = run([str(BIN / "dg"), "check", "defs"], PROJECT_ROOT, env)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    listed = listed_assets(run([str(BIN / "dg"), "list", "defs", "--json"], PROJECT_ROOT, env))
    assert {"stripe/customers", "stripe/customer_regions", "stripe_customers"} <= set(listed)
    assert listed["stripe/customers"] == ["stripe_customers"]


def test_two_syncs_with_one_name_are_refused_naming_both_files(tmp_path):
    copies = []
    for folder in ("customers_a", "customers_b"):
        path = tmp_path / folder / "defs.yaml"
        path.parent.mkdir()
        path.write_text(DEMO_SYNC.read_text().replace("attributes:\n", "attributes:\n  name: customers\n"))
        copies.append(path)
    defs = dg.Definitions(assets=[build_sync_asset(load_sync(path), "duckdb") for path in copies])
    with pytest.raises(SyncConfigError) as raised:
        refuse_duplicate_syncs(defs)
    assert str(copies[0]) in str(raised.value) and str(raised.value).startswith(f"{copies[1]}: attributes.name: ")


def test_a_sync_in_a_file_dagster_would_ignore_is_refused(tmp_path):
    (tmp_path / "customers.yml").write_text(DEMO_SYNC.read_text())
    (tmp_path / "unrelated.yml").write_text("some: other tool's settings\n")
    with pytest.raises(SyncConfigError, match=r"customers.yml: \(file\): Dagster reads a sync only from a defs.yaml"):
        refuse_stray_sync_files(tmp_path)


SHOP_PYPROJECT = """\
[project]
name = "shop"
version = "0.1.0"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "shop"
# An installed census_stripe registers itself for `dg` (an entry point); the test's census_stripe
# is a checkout on PYTHONPATH, so the project names the module itself.
registry_modules = ["census_stripe"]
"""

SHOP_DEFINITIONS = """\
from pathlib import Path

import dagster as dg


@dg.definitions
def defs():
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
"""

SHOP_RESOURCES = """\
import dagster as dg

from census_stripe import sync_resources


@dg.definitions
def resources():
    return dg.Definitions(resources=sync_resources())
"""

SHOP_DBT_PROJECT = """\
name: shop
version: "1.0"
profile: shop
models:
  shop:
    +materialized: table
"""

SHOP_PROFILES = """\
shop:
  target: dev
  outputs:
    dev:
      type: duckdb
      path: "{{ env_var('CENSUS_STRIPE_DUCKDB_PATH') }}"
"""

PAYING_USERS = """\
select 'ada@shop.test' as email, 'Ada Lovelace' as full_name, 'pro' as plan
union all select 'alan@shop.test', 'Alan Turing', 'team'
union all select 'grace@shop.test', 'Grace Hopper', 'pro'
"""

# The sync checks the columns it reads against the ones the model declares.
PAYING_USERS_SCHEMA = """\
version: 2
models:
  - name: paying_users
    columns: [{name: email}, {name: full_name}, {name: plan}]
"""

PAYING_USERS_SYNC = """\
type: census_stripe.StripeSyncComponent
attributes:
  dbt_project: dbt
  model: paying_users
  behavior: update_or_create
  key: {field: email, column: email}
  mapping:
    name: full_name
    metadata.plan: plan
  constants:
    metadata.source: shop
"""


def write_shop(root: Path) -> None:
    files = {
        "pyproject.toml": SHOP_PYPROJECT,
        "shop/__init__.py": "",
        "shop/definitions.py": SHOP_DEFINITIONS,
        "shop/defs/__init__.py": "",
        "shop/defs/resources.py": SHOP_RESOURCES,
        "shop/defs/paying_users/defs.yaml": PAYING_USERS_SYNC,
        "dbt/dbt_project.yml": SHOP_DBT_PROJECT,
        "dbt/profiles.yml": SHOP_PROFILES,
        "dbt/models/paying_users.sql": PAYING_USERS,
        "dbt/models/paying_users.yml": PAYING_USERS_SCHEMA,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_a_users_own_dagster_and_dbt_project_syncs_to_stripe(tmp_path, stripe_url, stripe_customers):
    shop, warehouse = tmp_path / "shop", tmp_path / "shop.duckdb"
    write_shop(shop)
    env = dg_env(
        tmp_path / "home",
        [shop],
        CENSUS_STRIPE_DUCKDB_PATH=str(warehouse),
        CENSUS_STRIPE_WAREHOUSE="duckdb",
        STRIPE_API_KEY=API_KEY,
        STRIPE_API_BASE=stripe_url,
    )
    built = run([str(BIN / "dbt"), "build", "--project-dir", "dbt", "--profiles-dir", "dbt"], shop, env)
    assert built.returncode == 0, built.stdout[-3000:]

    scaffolded = run([str(BIN / "dg"), "scaffold", "defs", "census_stripe.StripeSyncComponent", "new_sync"], shop, env)
    assert scaffolded.returncode == 0, scaffolded.stdout[-3000:] + scaffolded.stderr[-3000:]
    assert (shop / "shop/defs/new_sync/defs.yaml").read_text().startswith("type: census_stripe.StripeSyncComponent\n")
    listed = listed_assets(run([str(BIN / "dg"), "list", "defs", "--json"], shop, env))
    assert listed["stripe/paying_users"] == ["paying_users"]
    # The scaffolded sync loads as it is, on the demo's model (the default dbt project).
    assert listed["stripe/new_sync"] == ["stripe_customers"]

    materialize = ["asset", "materialize", "-m", "shop.definitions", "--select", "stripe/paying_users"]
    materialized = run([str(BIN / "dagster"), *materialize], shop, env)
    assert materialized.returncode == 0, materialized.stderr[-3000:]
    customers = {c.values["email"]: c.values for c in stripe_customers.iter_all()}
    assert {email: (c["name"], c["metadata.plan"], c["metadata.source"]) for email, c in customers.items()} == {
        "ada@shop.test": ("Ada Lovelace", "pro", "shop"),
        "alan@shop.test": ("Alan Turing", "team", "shop"),
        "grace@shop.test": ("Grace Hopper", "pro", "shop"),
    }
    assert API_KEY not in materialized.stdout + materialized.stderr

    sync_file = shop / "shop/defs/paying_users/defs.yaml"
    sync_file.write_text(PAYING_USERS_SYNC.replace("    name: full_name", "    nmae: full_name"))
    checked = run([str(BIN / "dg"), "check", "defs"], shop, env)
    assert checked.returncode != 0
    output = checked.stdout + checked.stderr
    assert f"{sync_file}: attributes.mapping.nmae: unknown Stripe customer field 'nmae'" in output
