"""`make demo` and `make dev`: the whole product on the embedded default, with no accounts.

    python -m census_stripe.demo run   # seed, build the models, sync to Stripe, print a summary
    python -m census_stripe.demo dev   # the Dagster UI on the same warehouse and Stripe data

Your STRIPE_API_KEY is used as given: with STRIPE_API_BASE unset, the demo talks to Stripe itself
(a live key is refused unless the stripe resource allows live mode). With no key at all, two local
Stripe servers are started for the duration, with a demo key, and stopped after: localstripe for
the customers, and the project's Stripe test double for the catalog (products and prices) and the
Billing meters and usage, since localstripe has none of them; the demo creates its meters there.
Their data is kept in data/ between runs, like the syncs' state in the warehouse, so the two
always agree: a second `make demo` creates and updates no customer. If a server's saved data is
gone, the state of the syncs it serves is reset with it, on purpose and said out loud. Once the
catalog is in the local Stripe, the demo raises one price (pro_monthly_usd, 10.00 → 12.00 USD), so
its second run shows a new version of a price, and says so.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from census_stripe.demo.local_stripe import LocalStripe, stop_process_group
from census_stripe.demo.seed_data import RAISED_PRICE, USAGE_DAYS, demo_customer_count, write_seeds
from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.settings import DATA_DIR, DEFS_DIR, PROJECT_ROOT, UnknownWarehouseError, duckdb_path, warehouse_kind
from census_stripe.stripe_client.rate_limit import is_live_key

LOCAL_STRIPE_DATA = DATA_DIR / "localstripe.pickle"
LOCAL_CATALOG_DATA = DATA_DIR / "stripe_catalog.json"
# The test double answers GET /v1/account, so the catalog syncs' state is filed under this account
# whatever port the double listens on.
LOCAL_CATALOG_ACCOUNT = "acct_demo_catalog"
# The objects the demo's test double serves; localstripe serves the rest (customers).
CATALOG_OBJECTS = ("product", "price")
# The report's order: customers, then the products the prices need, then the prices.
OBJECT_ORDER = ("customer", "product", "price")
DAGSTER_HOME = DATA_DIR / "dagster_home"
DEMO_API_KEY = "sk_test_census_stripe_demo"
# A local server has no account id: the sync knows it by its address, so the demo keeps one. These are
# the usual ports; a server that had to take another (this one was taken) asks for that one from then on.
LOCAL_STRIPE_PORT = 8420
LOCAL_CATALOG_PORT = 8421
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
SUMMARY_COUNTS = (
    "rows_read",
    "created",
    "updated",
    "new_versions",
    "archived",
    "unchanged",
    "rejected",
    "failed",
    "stripe_api_calls",
)
# Only syncs of objects with versions (prices) or that may archive (archive_missing) count these.
OPTIONAL_COUNTS = ("new_versions", "archived")
PREVIEW_SHOWN = 20
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


def _forget_sync_state(catalog: bool) -> list[str]:
    """A local Stripe server starts empty: drop what the syncs it serves remember (the catalog's
    syncs for the test double, the others for localstripe). Returns the syncs forgotten."""
    import duckdb

    from census_stripe.spec import load_sync_spec
    from census_stripe.warehouse.duckdb import DuckDBWarehouse
    from census_stripe.warehouse.state import SyncStateStore

    if not duckdb_path().exists():
        return []
    specs = [load_sync_spec(path) for path in sorted(DEFS_DIR.glob("*/defs.yaml"))]
    names = [spec.name for spec in specs if (spec.object in CATALOG_OBJECTS) == catalog]
    with duckdb.connect(str(duckdb_path())) as connection:
        store = SyncStateStore(DuckDBWarehouse(connection))
        store.ensure_tables()
        for name in names:
            store.forget(name)
    return names


def write_instance_config(path: Path) -> None:
    """The demo's dagster.yaml. A file an older demo wrote keeps what it has and gets the sections it lacks."""
    import yaml

    text = path.read_text() if path.exists() else ""
    present = yaml.safe_load(text) or {}
    missing = [section for name, section in INSTANCE_SECTIONS.items() if name not in present]
    if missing:
        path.write_text(text + ("\n" if text and not text.endswith("\n") else "") + "".join(missing))


def last_port(server: str, usual: int) -> int:
    """The port `server` listened on in the last run, else its usual one: a port taken once (by another
    program, another checkout's demo) does not change the server's address again."""
    kept = DATA_DIR / f"{server}.port"
    return int(kept.read_text()) if kept.exists() else usual


def keep_port(server: str, port: int) -> None:
    (DATA_DIR / f"{server}.port").write_text(str(port))


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
        _forget_sync_state(catalog=False)
        print("No saved local Stripe data: starting from an empty Stripe account and an empty sync state.")
    if not LOCAL_CATALOG_DATA.exists() and _forget_sync_state(catalog=True):
        print("No saved local catalog data: the catalog's syncs start from an empty Stripe catalog and state.")
    port = last_port("localstripe", LOCAL_STRIPE_PORT)
    server = LocalStripe(port, saved_data=LOCAL_STRIPE_DATA, log_path=DATA_DIR / "localstripe.log")
    # A fixed port, like localstripe's: the account is remembered by address and key, so a new
    # address would cost the next run a call to ask which account it is.
    catalog = StripeDoubleServer(
        store=LOCAL_CATALOG_DATA,
        port=last_port("stripe_catalog", LOCAL_CATALOG_PORT),
        log_path=DATA_DIR / "stripe_double.log",
        account_id=LOCAL_CATALOG_ACCOUNT,
        meter_customers_elsewhere=True,
    )
    with server, catalog:
        keep_port("localstripe", server.port)
        keep_port("stripe_catalog", catalog.port)
        if server.port != port:
            print(
                f"Port {port} is taken; the local Stripe server runs on {server.port}, from now on. The sync knows a "
                "local server by its address, so it looks every customer up there again (it duplicates none)."
            )
        print(
            f"No STRIPE_API_KEY: starting a local Stripe server (localstripe) at {server.url} with a demo key; "
            f"its data is kept in {LOCAL_STRIPE_DATA}"
        )
        print(
            f"The catalog (products and prices) and the usage (meter events) are served by the project's Stripe "
            f"test double at {catalog.url}, as localstripe has neither; its data is kept in {LOCAL_CATALOG_DATA}"
        )
        create_meters(catalog.url)
        yield env | {
            "STRIPE_API_BASE": server.url,
            "STRIPE_API_KEY": DEMO_API_KEY,
            "STRIPE_CATALOG_API_BASE": catalog.url,
            "STRIPE_BILLING_API_BASE": catalog.url,
        }


def create_meters(billing_url: str) -> None:
    """The meters the usage syncs send to, in the local double, as you would create them in Stripe's
    Dashboard: a usage sync stops before sending to an event name without one."""
    import stripe

    from census_stripe.spec import MeterEventSpec, load_sync_spec

    meters = stripe.StripeClient(DEMO_API_KEY, base_addresses={"api": billing_url}).v1.billing.meters
    active = {meter.event_name for meter in meters.list(params={"status": "active", "limit": 100}).auto_paging_iter()}
    specs = [load_sync_spec(path) for path in sorted(DEFS_DIR.glob("*/defs.yaml"))]
    for spec in (spec for spec in specs if isinstance(spec, MeterEventSpec)):
        event_name = spec.meter_event.event_name
        if event_name is None or event_name in active:
            continue
        meters.create(
            params={
                "display_name": event_name.replace("_", " ").capitalize(),
                "event_name": event_name,
                "default_aggregation": {"formula": "sum"},
                "customer_mapping": {"type": "by_id", "event_payload_key": spec.meter_event.customer_payload_key},
                "value_settings": {"event_payload_key": spec.meter_event.value_payload_key},
            }
        )
        print(f"Created the Stripe meter {event_name!r} in the local Stripe double, for the usage sync {spec.name!r}.")


def raise_a_price_once_the_catalog_is_in_stripe(env: Mapping[str, str]) -> bool:
    """Whether the demo's data has pro_monthly_usd at its raised price: yes once the local catalog
    holds that price, so the run after the first makes a new version of it. The demo never changes
    prices in a Stripe of yours."""
    catalog_url = env.get("STRIPE_CATALOG_API_BASE")
    if not catalog_url or env.get("STRIPE_API_KEY") != DEMO_API_KEY:
        return False
    import stripe

    lookup_key, before, after = RAISED_PRICE
    client = stripe.StripeClient(env["STRIPE_API_KEY"], base_addresses={"api": catalog_url})
    prices = client.v1.prices.list(params={"lookup_keys": [lookup_key]}).data
    if prices and prices[0].unit_amount == before:
        print(
            f"The catalog is in the local Stripe: this run raises {lookup_key} from {before / 100:.2f} to "
            f"{after / 100:.2f} {prices[0].currency.upper()}, so the prices sync makes a new version of that price "
            "and archives the old one."
        )
    return bool(prices)


def _latest_metadata(instance, asset_path: list[str]) -> dict:
    import dagster as dg

    event = instance.get_latest_materialization_event(dg.AssetKey(asset_path))
    metadata = event.asset_materialization.metadata if event else {}
    return {name: value.value for name, value in metadata.items()}


def _report_position(stripe_object: str) -> int:
    return OBJECT_ORDER.index(stripe_object) if stripe_object in OBJECT_ORDER else len(OBJECT_ORDER)


def _records(table) -> list[Mapping]:
    """The rows of a table in a run's metadata; a preview with nothing to change is text instead."""
    from dagster import TableMetadataValue

    return [record.data for record in table.records] if isinstance(table, TableMetadataValue) else []


def _print_summary(dagster_home: str) -> None:
    import dagster as dg

    from census_stripe.demo.report import describe_warehouse, key_text
    from census_stripe.orchestration.warehouses import warehouse_from_env
    from census_stripe.spec import load_sync_spec

    warehouse = warehouse_from_env()
    with dg.DagsterInstance.from_config(dagster_home) as instance:
        specs = sorted(
            ((path, load_sync_spec(path)) for path in DEFS_DIR.glob("*/defs.yaml")),
            key=lambda pair: (_report_position(pair[1].object), pair[0]),
        )
        for path, spec in specs:
            name = spec.name
            if spec.object == "meter_event":
                _print_usage_summary(instance, path, name)
                continue
            if spec.partitions:
                print(
                    f"\nSync {name!r} is partitioned by {spec.partitions.column}: materialize its partitions in the UI."
                )
                continue
            metadata = _latest_metadata(instance, ["stripe", name])
            print(
                f"\nSync {name!r} ({path.relative_to(PROJECT_ROOT)}), Stripe account {metadata.get('stripe_account')}:"
            )
            for count in SUMMARY_COUNTS:
                if count in metadata or count not in OPTIONAL_COUNTS:
                    print(f"  {count:>18}: {metadata.get(count)}")
            if spec.object in CATALOG_OBJECTS:  # a catalog is small: its changes fit in the terminal
                for record in _records(metadata.get("preview"))[:PREVIEW_SHOWN]:
                    print(f"    {key_text(record['key'])}: {record['changes']}")
            for record in _records(metadata.get("rejected_rows")):
                print(f"    rejected {key_text(record['key'])}: {record['reason']}")
    print(
        "\nWhere to look:\n"
        f"  - the Dagster UI with these runs:   make dev   (then http://127.0.0.1:3000)\n"
        f"  - the warehouse and sync state:     {describe_warehouse(warehouse)} (tables "
        f"{warehouse.state_schema}.sync_state, {warehouse.state_schema}.sync_rejections, "
        f"{warehouse.state_schema}.sync_changes)\n"
        f"  - the run's full log:               {DATA_DIR / 'demo.log'}"
    )


def _print_usage_summary(instance, path: Path, name: str) -> None:
    import dagster as dg

    from census_stripe.demo.usage_report import usage_lines

    print(f"\nSync {name!r} ({path.relative_to(PROJECT_ROOT)}), meter events, per partition of its last run:")
    print("\n".join(usage_lines(instance, dg.AssetKey(["stripe", name]))))


def _print_failure(env: Mapping[str, str], started: datetime) -> None:
    import dagster as dg

    from census_stripe.demo.report import failure_report

    log = (DATA_DIR / "demo.log").read_text(errors="replace")
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        print("\n".join(failure_report(instance, started, env.get("STRIPE_API_KEY", ""), log)))
    print(f"The run's full log: {DATA_DIR / 'demo.log'}")


def run() -> int:
    with demo_environment() as env:
        counts = write_seeds(demo_customer_count(), pro_price_raised=raise_a_price_once_the_catalog_is_in_stripe(env))
        print("Demo data: " + ", ".join(f"{table} {n} rows" for table, n in counts.items()))
        print(f"Running Dagster job {JOB!r}: dbt build, then the Stripe sync ...")
        started = datetime.now(UTC)
        with open(DATA_DIR / "demo.log", "w") as log:
            result = subprocess.run(
                ["dagster", "job", "execute", "-m", "census_stripe.definitions", "-j", JOB],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
            )
            if result.returncode == 0:
                result = bill_usage(env, log)
        if result.returncode != 0:
            _print_failure(env, started)
            return result.returncode
        _print_summary(env["DAGSTER_HOME"])
    return 0


def bill_usage(env: Mapping[str, str], log) -> subprocess.CompletedProcess:
    """The usage syncs, over the demo's days of usage: one run per sync, a single-run backfill of
    its daily partitions. A rerun sends only what the Stripe double does not have yet."""
    from census_stripe.spec import load_sync_spec

    today = datetime.now(UTC).date()
    days = f"{today - timedelta(days=USAGE_DAYS)}...{today - timedelta(days=1)}"
    result: subprocess.CompletedProcess = subprocess.CompletedProcess([], 0)
    for path in sorted(DEFS_DIR.glob("*/defs.yaml")):
        spec = load_sync_spec(path)
        if spec.object != "meter_event":
            continue
        print(f"Billing the usage of days {days.replace('...', ' to ')} with sync {spec.name!r} ...")
        result = subprocess.run(
            [
                *("dagster", "asset", "materialize", "-m", "census_stripe.definitions"),
                *("--select", f"stripe/{spec.name}", "--partition-range", days),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=PROJECT_ROOT,
        )
        if result.returncode != 0:
            break
    return result


class Stopped(SystemExit):
    """Ctrl-C or a TERM reached the demo: the code is 128 + the signal's number, as a shell reports it."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)


def dev() -> int:
    with demo_environment() as env:
        command = ["dagster", "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"), *sys.argv[2:]]
        # Its own process group, so that stopping reaches the webserver, daemon and code server
        # it starts, and the local Stripe server is stopped (and its data saved) only after them.
        process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, start_new_session=True)
        try:
            return process.wait()
        except Stopped:
            # Ctrl-C (or a TERM) is how `make dev` ends: a clean stop, not an error for `make` to report.
            return 0
        finally:
            print("Stopping the Dagster webserver, daemon and code servers ...", flush=True)
            stop_process_group(process, signal.SIGINT, grace_seconds=DEV_STOP_SECONDS)


def _stop(signum: int, _frame) -> None:
    """Ctrl-C or a TERM: unwind, stopping what was started. `make` passes its own TERM on to this
    process too, and nothing may cut the stopping short, so later signals are ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stopped(signum)


def definitions_load() -> bool:
    """Whether the project's definitions load, checked before anything starts: a sync file with a
    mistake is named, with its line and field, rather than a job that does not start."""
    from census_stripe.demo.report import load_definitions

    problems = load_definitions(os.environ.get("STRIPE_API_KEY", ""))
    if problems:
        print("The definitions did not load, so nothing was started:", file=sys.stderr)
        print("\n".join(f"  {problem}" for problem in problems), file=sys.stderr)
    return not problems


def main() -> int:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parser = argparse.ArgumentParser(prog="python -m census_stripe.demo", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "dev"])
    args, _ = parser.parse_known_args()
    try:
        warehouse_kind()
        if not definitions_load():
            return 2
        return run() if args.command == "run" else dev()
    except (UnknownWarehouseError, DemoSetupError) as error:
        print(error, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
