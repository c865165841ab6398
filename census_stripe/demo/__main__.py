"""`make demo` and `make dev`: the whole product on the embedded default, with no accounts.

    python -m census_stripe.demo run   # seed, build the models, sync to Stripe, print a summary
    python -m census_stripe.demo dev   # the Dagster UI on the same warehouse and Stripe data

Your STRIPE_API_KEY is used as given: with STRIPE_API_BASE unset, the demo talks to Stripe itself
(a live key is refused unless the stripe resource allows live mode). With no key at all, a local
Stripe server (localstripe) is started for the duration, with a demo key, and stopped after. Its
customers are kept in data/ between runs, like the sync's state in the warehouse, so the two always
agree: a second `make demo` creates and updates nothing. If the saved Stripe data is gone, the
sync's state is reset with it, on purpose and said out loud.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from census_stripe.demo.local_stripe import LocalStripe, free_port, stop_process_group
from census_stripe.demo.seed_data import demo_customer_count, write_seeds
from census_stripe.settings import DATA_DIR, DEFS_DIR, PROJECT_ROOT, UnknownWarehouseError, duckdb_path, warehouse_kind
from census_stripe.stripe_client.rate_limit import is_live_key

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
# `dagster dev` stops its webserver, daemon and code servers on SIGINT; on a loaded machine that takes a while.
DEV_STOP_SECONDS = 60


class DemoSetupError(Exception):
    """Settings the demo cannot run with; the message says what to change."""


def stripe_in_use(env: Mapping[str, str]) -> str | None:
    """How the demo reaches Stripe with the user's own settings, said without the key; None when
    no key is set and a local server is to be started. A given key is never replaced."""
    key, base = env.get("STRIPE_API_KEY"), env.get("STRIPE_API_BASE")
    if not key and base:
        raise DemoSetupError(
            f"STRIPE_API_BASE is {base} but STRIPE_API_KEY is not set: set the key that server accepts"
        )
    if not key:
        return None
    mode = "live mode" if is_live_key(key) else "test mode"
    where = f"the Stripe API at {base}" if base else "Stripe's API"
    refusal = "; the stripe resource refuses it unless allow_live_mode is set" if is_live_key(key) else ""
    return f"Using {where} with your key ({mode}){refusal}"


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
    announcement = stripe_in_use(env)
    if announcement:
        print(announcement)
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
    server = LocalStripe(port, saved_data=LOCAL_STRIPE_DATA, log_path=DATA_DIR / "localstripe.log")
    print(
        f"No STRIPE_API_KEY: starting a local Stripe server (localstripe) at {server.url} with a demo key; "
        f"its data is kept in {LOCAL_STRIPE_DATA}"
    )
    with server:
        yield env | {"STRIPE_API_BASE": server.url, "STRIPE_API_KEY": DEMO_API_KEY}


def _latest_metadata(instance, asset_path: list[str]) -> dict:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset_path))
    metadata = event.asset_materialization.metadata if event else {}
    return {name: value.value for name, value in metadata.items()}


def _print_summary(dagster_home: str) -> None:
    import dagster as dg

    from census_stripe.demo.report import describe_warehouse
    from census_stripe.orchestration.warehouses import warehouse_from_env
    from census_stripe.spec import load_sync_spec

    warehouse = warehouse_from_env()
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
        f"  - the warehouse and sync state:     {describe_warehouse(warehouse)} (tables "
        f"{warehouse.state_schema}.sync_state, {warehouse.state_schema}.sync_rejections, "
        f"{warehouse.state_schema}.sync_changes)\n"
        f"  - the run's full log:               {DATA_DIR / 'demo.log'}"
    )


def _print_failure(dagster_home: str, started: datetime) -> None:
    import dagster as dg

    from census_stripe.demo.report import failure_report

    with dg.DagsterInstance.from_config(dagster_home) as instance:
        print("\n".join(failure_report(instance, JOB, started)))
    print(f"The run's full log: {DATA_DIR / 'demo.log'}")


def run() -> int:
    counts = write_seeds(demo_customer_count())
    print("Demo data: " + ", ".join(f"{table} {n} rows" for table, n in counts.items()))
    with demo_environment() as env:
        print(f"Running Dagster job {JOB!r}: dbt build, then the Stripe sync ...")
        started = datetime.now(timezone.utc)
        with open(DATA_DIR / "demo.log", "w") as log:
            result = subprocess.run(
                ["dagster", "job", "execute", "-m", "census_stripe.definitions", "-j", JOB],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
            )
        if result.returncode != 0:
            _print_failure(env["DAGSTER_HOME"], started)
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
        finally:
            print("Stopping the Dagster webserver, daemon and code servers ...", flush=True)
            stop_process_group(process, signal.SIGINT, grace_seconds=DEV_STOP_SECONDS)


def _stop(signum: int, _frame) -> None:
    """Ctrl-C or a TERM: unwind, stopping what was started. `make` passes its own TERM on to this
    process too, and nothing may cut the stopping short, so later signals are ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parser = argparse.ArgumentParser(prog="python -m census_stripe.demo", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "dev"])
    args, _ = parser.parse_known_args()
    try:
        warehouse_kind()
        return run() if args.command == "run" else dev()
    except (UnknownWarehouseError, DemoSetupError) as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
