"""The sync as a Dagster Component: `dg` on this project, and the checks on a project's defs folder.
A user's own Dagster project, from an empty folder to a sync into Stripe: test_own_project.py."""

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
from census_stripe_tests.conftest import DEMO_SYNC

BIN = Path(sys.executable).parent


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def dg_env(home: Path) -> dict[str, str]:
    """A `dg` process with census_stripe importable from this checkout, and dbt found beside this
    Python (dg prepares a dbt project's manifest with the `dbt` on PATH)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return {
        **os.environ,
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        "DAGSTER_HOME": str(home),
        "PYTHONPATH": str(PROJECT_ROOT),
    }


def listed_assets(completed: subprocess.CompletedProcess) -> dict[str, list[str]]:
    """Each asset `dg list defs --json` lists, with its dependencies."""
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    listing = json.loads(completed.stdout)
    return {asset["asset_key"]: asset.get("dependency_keys", []) for asset in listing["assets"]}


def test_dg_checks_and_lists_this_projects_syncs(tmp_path):
    env = dg_env(tmp_path / "home")
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
