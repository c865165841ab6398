"""`make demo` and `make dev`: the whole product on the embedded default, with no accounts.

    python -m census_stripe.demo run   # seed, build the models, sync to Stripe, print a summary
    python -m census_stripe.demo dev   # the Dagster UI on the same warehouse and Stripe data

Unless STRIPE_API_BASE points elsewhere, a local Stripe server (localstripe) is started for the
duration and stopped after. Its customers are kept in data/ between runs, like the sync's state in
the warehouse, so the two always agree: a second `make demo` creates and updates nothing. If the
saved Stripe data is gone, the sync's state is reset with it, on purpose and said out loud.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from census_stripe.demo.local_stripe import LocalStripe, free_port, stop_process_group
from census_stripe.demo.seed_data import demo_customer_count, write_seeds
from census_stripe.settings import DATA_DIR, DEFS_DIR, PROJECT_ROOT, duckdb_path

LOCAL_STRIPE_DATA = DATA_DIR / "localstripe.pickle"
DAGSTER_HOME = DATA_DIR / "dagster_home"
DEMO_API_KEY = "sk_test_census_stripe_demo"
# A local server has no account id: the sync knows it by its address, so the demo keeps one.
LOCAL_STRIPE_PORT = 8420
# The demo instance's dagster.yaml, by top-level section.
INSTANCE_SECTIONS = {
    # One run of a sync at a time: every sync asset is in a pool of its own, limited to 1 here.
    "concurrency": "concurrency:\n  pools:\n    default_limit: 1\n",
    # Under `make dev`, the daemon fails runs stuck starting or canceling, and frees the slots of
    # runs that ended, such as a run whose worker was killed (its code server marks it failed).
    "run_monitoring": (
        "run_monitoring:\n  enabled: true\n  poll_interval_seconds: 5\n  free_slots_after_run_end_seconds: 5\n"
    ),
}
INSTANCE_CONFIG = "".join(INSTANCE_SECTIONS.values())
JOB = "sync_to_stripe"


def _forget_sync_state() -> None:
    """The local Stripe account starts empty: drop what the syncs remember of the old one."""
    import duckdb

    from census_stripe.spec import load_sync_spec
    from census_stripe.warehouse.duckdb import DuckDBWarehouse
    from census_stripe.warehouse.state import SyncStateStore

    if not duckdb_path().exists():
        return
    with duckdb.connect(str(duckdb_path())) as connection:
        store = SyncStateStore(DuckDBWarehouse(connection))
        store.ensure_tables()
        for path in sorted(DEFS_DIR.glob("*/defs.yaml")):
            store.forget(load_sync_spec(path).name)
    print("No saved local Stripe data: starting from an empty Stripe account and an empty sync state.")


def write_instance_config(path: Path) -> None:
    """The demo's dagster.yaml. A file an older demo wrote keeps what it has and gets the sections it lacks."""
    import yaml

    text = path.read_text() if path.exists() else ""
    present = yaml.safe_load(text) or {}
    missing = [section for name, section in INSTANCE_SECTIONS.items() if name not in present]
    if missing:
        path.write_text(text + ("\n" if text and not text.endswith("\n") else "") + "".join(missing))


@contextmanager
def demo_environment() -> Iterator[dict[str, str]]:
    """Environment variables for Dagster processes, with a local Stripe server running if needed."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # dbt and dagster are found beside this Python, also from an un-activated virtualenv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("DAGSTER_HOME", str(DAGSTER_HOME))
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    write_instance_config(home / "dagster.yaml")
    if env.get("STRIPE_API_BASE"):
        print(f"Using the Stripe API at {env['STRIPE_API_BASE']}")
        yield env
        return
    if not LOCAL_STRIPE_DATA.exists():
        _forget_sync_state()
    port = free_port(LOCAL_STRIPE_PORT)
    if port != LOCAL_STRIPE_PORT:
        print(
            f"Port {LOCAL_STRIPE_PORT} is taken; the local Stripe server runs on {port}. The sync knows a local "
            "server by its address, so it looks every customer up there again (it duplicates none)."
        )
    with LocalStripe(port, saved_data=LOCAL_STRIPE_DATA, log_path=DATA_DIR / "localstripe.log") as server:
        print(f"Local Stripe server (localstripe) at {server.url}; its data is kept in {LOCAL_STRIPE_DATA}")
        yield env | {"STRIPE_API_BASE": server.url, "STRIPE_API_KEY": DEMO_API_KEY}


def _latest_metadata(instance, asset_path: list[str]) -> dict:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset_path))
    metadata = event.asset_materialization.metadata if event else {}
    return {name: value.value for name, value in metadata.items()}


def _print_summary(dagster_home: str) -> None:
    import dagster as dg

    from census_stripe.spec import load_sync_spec

    with dg.DagsterInstance.from_config(dagster_home) as instance:
        for path in sorted(DEFS_DIR.glob("*/defs.yaml")):
            spec = load_sync_spec(path)
            name = spec.name
            if spec.partitions:
                print(
                    f"\nSync {name!r} is partitioned by {spec.partitions.column}: materialize its partitions in the UI."
                )
                continue
            metadata = _latest_metadata(instance, ["stripe", name])
            print(
                f"\nSync {name!r} ({path.relative_to(PROJECT_ROOT)}), Stripe account {metadata.get('stripe_account')}:"
            )
            for count in ("rows_read", "created", "updated", "unchanged", "rejected", "failed", "stripe_api_calls"):
                print(f"  {count:>18}: {metadata.get(count)}")
            for record in metadata["rejected_rows"].records if "rejected_rows" in metadata else []:
                print(f"    rejected {record.data['key']!r}: {record.data['reason']}")
    print(
        "\nWhere to look:\n"
        f"  - the Dagster UI with these runs:   make dev   (then http://127.0.0.1:3000)\n"
        f"  - the warehouse and sync state:     {duckdb_path()} (tables census_stripe.sync_state, "
        "census_stripe.sync_rejections)\n"
        f"  - the run's full log:               {DATA_DIR / 'demo.log'}"
    )


def run() -> int:
    counts = write_seeds(demo_customer_count())
    print("Demo data: " + ", ".join(f"{table} {n} rows" for table, n in counts.items()))
    with demo_environment() as env:
        print(f"Running Dagster job {JOB!r}: dbt build, then the Stripe sync ...")
        with open(DATA_DIR / "demo.log", "w") as log:
            result = subprocess.run(
                ["dagster", "job", "execute", "-m", "census_stripe.definitions", "-j", JOB],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
            )
        if result.returncode != 0:
            print(f"The job failed; see {DATA_DIR / 'demo.log'}")
            return result.returncode
        _print_summary(env["DAGSTER_HOME"])
    return 0


def dev() -> int:
    with demo_environment() as env:
        command = ["dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), *sys.argv[2:]]
        # Its own process group, so that stopping reaches the webserver, daemon and code server
        # it starts, and the local Stripe server is stopped (and its data saved) only after them.
        process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, start_new_session=True)
        try:
            return process.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            stop_process_group(process, signal.SIGINT, grace_seconds=30)


def main() -> int:
    # A plain `kill` stops the demo as Ctrl-C does: what it started is stopped and saved.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(prog="python -m census_stripe.demo", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "dev"])
    args, _ = parser.parse_known_args()
    return run() if args.command == "run" else dev()


if __name__ == "__main__":
    sys.exit(main())
