"""`make demo`'s runner, as a user runs it: twice, on a fresh data folder, with no accounts."""

import os
import re
import subprocess
import sys

from census_stripe.settings import PROJECT_ROOT


def run_demo(data_dir) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DAGSTER_", "CENSUS_STRIPE_"))}
    env["CENSUS_STRIPE_DATA_DIR"] = str(data_dir)
    completed = subprocess.run(
        [sys.executable, "-m", "census_stripe.demo", "run"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def counts(output: str) -> dict[str, int]:
    return {name: int(value) for name, value in re.findall(r"^\s+(\w+): (\d+)$", output, re.MULTILINE)}


def test_demo_twice_second_run_writes_nothing_and_a_lost_stripe_resets_state(tmp_path):
    first = run_demo(tmp_path)
    assert counts(first) == {
        "rows_read": 300,
        "created": 294,
        "updated": 0,
        "unchanged": 0,
        "rejected": 6,
        "failed": 0,
        "stripe_api_calls": 297,
    }
    assert "rejected 'not-an-email': invalid email" in first
    assert (tmp_path / "localstripe.pickle").exists()

    second = run_demo(tmp_path)
    assert counts(second) == {
        "rows_read": 300,
        "created": 0,
        "updated": 0,
        "unchanged": 294,
        "rejected": 6,
        "failed": 0,
        "stripe_api_calls": 0,
    }

    # Both records are kept, or both reset: never a state that claims customers Stripe lacks.
    (tmp_path / "localstripe.pickle").unlink()
    third = run_demo(tmp_path)
    assert "starting from an empty Stripe account and an empty sync state" in third
    assert counts(third)["created"] == 294
