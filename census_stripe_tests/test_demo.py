"""`make demo`'s runner, as a user runs it: twice, on a fresh data folder, with no accounts."""

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from census_stripe.demo.__main__ import DEMO_API_KEY, raise_a_price_once_the_catalog_is_in_stripe
from census_stripe.demo.local_stripe import LocalStripe
from census_stripe.demo.report import describe_warehouse
from census_stripe.demo.seed_data import catalog as catalog_seed
from census_stripe.demo.seed_data import write_seeds
from census_stripe.demo.stripe_double import key_stat
from census_stripe.orchestration.project import sync_resources
from census_stripe.orchestration.warehouses import PostgresWarehouseResource
from census_stripe.settings import DATA_DIR, PROJECT_ROOT
from census_stripe.stripe_client.client import make_client
from census_stripe_tests.conftest import Processes
from census_stripe_tests.meters import create_meter

YOUR_KEY = "sk_test_CANARYyourown0123456789"


DEMO_RUN = [sys.executable, "-m", "census_stripe.demo", "run"]
# Only the demo's local Stripe servers started and stopped, on the demo's data, without a run.
DEMO_SERVERS = [sys.executable, "-c", "from census_stripe.demo.__main__ import demo_environment as e\nwith e(): pass"]


def demo(
    processes: Processes, data_dir, command: list[str] = DEMO_RUN, cwd: Path = PROJECT_ROOT, **settings
) -> subprocess.CompletedProcess:
    """`python -m census_stripe.demo run` in a shell with only these of the project's variables set; the
    test owns it and what it starts (its local Stripe servers, Dagster), stopped however the test ends."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DAGSTER_", "CENSUS_STRIPE_"))}
    env |= {"CENSUS_STRIPE_DATA_DIR": str(data_dir), **settings}
    run = processes.start(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = run.communicate(timeout=900)
    return subprocess.CompletedProcess(command, run.returncode, stdout, stderr)


def run_demo(processes: Processes, data_dir, **settings) -> str:
    completed = demo(processes, data_dir, **settings)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def counts(output: str, sync: str = "customers") -> dict[str, int]:
    """The counts the summary prints for one sync."""
    section = re.search(rf"^Sync '{sync}' .*?(?=^Sync |^Where to look)", output, re.MULTILINE | re.DOTALL)
    assert section, output
    return {name: int(value) for name, value in re.findall(r"^\s+(\w+): (\d+)$", section.group(), re.MULTILINE)}


@pytest.mark.serial
def test_the_demo_twice_customers_and_catalog_then_its_local_stripe_lost(tmp_path, processes):
    """The first run creates the customers (localstripe) and the catalog (the double); the second
    writes no customer and makes one new price version; after localstripe's data is lost, the
    customers' state resets with it while the catalog's and the usage's, kept apart, stay."""
    first = run_demo(processes, tmp_path)
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
    assert "rejected (a row with no key): " in first and "None" not in first
    # Ports 8420 and 8421, unless another program (another checkout's demo) has one: then another, kept for
    # the next runs, so that their addresses, by which the syncs know these servers, stay the same.
    [port] = re.findall(r"starting a local Stripe server \(localstripe\) at http://127.0.0.1:(\d+) ", first)
    assert port == "8420" or f"Port 8420 is taken; the local Stripe server runs on {port}, from now on." in first
    [catalog_port] = re.findall(
        r"The catalog \(products and prices\) and the usage \(meter events\) are served by the project's Stripe "
        r"test double at http://127.0.0.1:(\d+),",
        first,
    )
    kept = {server: (tmp_path / f"{server}.port").read_text() for server in ("localstripe", "stripe_catalog")}
    assert kept == {"localstripe": port, "stripe_catalog": catalog_port}
    assert f"DuckDB file {tmp_path / 'warehouse.duckdb'} (tables census_stripe.sync_state" in first
    assert (tmp_path / "localstripe.pickle").exists() and (tmp_path / "stripe_catalog.json").exists()
    products, prices = counts(first, "products"), counts(first, "prices")
    assert (products["created"], products["rejected"]) == (4, 0)
    assert (prices["created"], prices["rejected"]) == (14, 1)
    assert "rejected 'sso_monthly_usd'" in first and "prod_demo_sso" in first  # the price of a missing product
    # A week of API usage billed as meter events; the usage of the 6 customers rejected above with them.
    usage = counts(first, "api_usage")
    assert (usage["rows_read"], usage["accepted"], usage["rejected"]) == (700, 693, 7)
    assert len(json.loads((tmp_path / "stripe_catalog.json").read_text())["meter_events"]["by_identifier"]) == 693

    second = run_demo(processes, tmp_path)
    assert counts(second) == {
        "rows_read": 300,
        "created": 0,
        "updated": 0,
        "unchanged": 294,
        "rejected": 6,
        "failed": 0,
        "stripe_api_calls": 0,
    }
    assert "this run raises pro_monthly_usd from 10.00 to 12.00 USD" in second
    assert counts(second, "products")["stripe_api_calls"] == 0
    prices = counts(second, "prices")
    assert (prices["created"], prices["new_versions"], prices["archived"], prices["updated"]) == (0, 1, 1, 0)
    assert "'pro_monthly_usd': new version of price pro_monthly_usd: 10.00 → 12.00 USD/month" in second
    usage = counts(second, "api_usage")  # the same days again: nothing new to bill
    assert (usage["already_sent"], usage["accepted"], usage["stripe_api_calls"]) == (693, 0, 0)
    stored = json.loads((tmp_path / "stripe_catalog.json").read_text())
    monthly_usd = [
        price
        for price in stored["prices"]
        if (price["product"], price["currency"], price["recurring"]["interval"]) == ("prod_demo_pro", "usd", "month")
    ]
    assert sorted((p["unit_amount"], p["active"], p["lookup_key"]) for p in monthly_usd) == [
        (1000, False, None),  # archived, its lookup key moved to the new version
        (1200, True, "pro_monthly_usd"),
    ]

    # Both records are kept, or both reset: never a state that claims customers Stripe lacks. What
    # a third run would start with (a sync with no state creates its every row; one whose state and
    # Stripe agree makes no call, as the second run showed).
    (tmp_path / "localstripe.pickle").unlink()
    servers = demo(processes, tmp_path, DEMO_SERVERS)
    assert servers.returncode == 0, servers.stdout + servers.stderr
    assert "No saved local Stripe data: starting from an empty Stripe account and an empty sync state." in (
        servers.stdout
    )
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as warehouse:
        state = dict(
            warehouse.execute("select sync_name, count(*) from census_stripe.sync_state group by 1").fetchall()
        )
        ledger = warehouse.execute("select count(accepted_at) from census_stripe.meter_event_ledger").fetchone()
    assert state == {"products": 4, "prices": 15}  # as the second run left them
    assert ledger == (693,)


def test_your_stripe_key_is_used_as_given_and_no_local_server_starts(tmp_path, double, processes):
    create_meter(double.url, api_key=YOUR_KEY)  # your Stripe's meters are yours to create: the demo makes none there
    output = run_demo(processes, tmp_path, STRIPE_API_KEY=YOUR_KEY, STRIPE_API_BASE=double.url)
    assert f"Using the Stripe API at {double.url} with your key (test mode)" in output
    assert "localstripe" not in output and not (tmp_path / "localstripe.pickle").exists()
    assert "test double" not in output and not (tmp_path / "stripe_catalog.json").exists()
    assert counts(output)["created"] == 294
    stats = double.stats()
    assert stats["customers"] == 294
    # Every request the double saw carried the user's key; the demo's own key never.
    keys_seen = {name: n for name, n in stats.items() if name.startswith("key_sha256_")}
    assert list(keys_seen) == [key_stat(YOUR_KEY)] and key_stat(DEMO_API_KEY) not in stats
    assert keys_seen[key_stat(YOUR_KEY)] >= counts(output)["stripe_api_calls"]
    assert YOUR_KEY not in output + (tmp_path / "demo.log").read_text()


def test_with_your_key_and_no_meter_the_demo_bills_nothing_and_says_how_to_create_it(tmp_path, double, processes):
    completed = demo(processes, tmp_path, STRIPE_API_KEY=YOUR_KEY, STRIPE_API_BASE=double.url)
    assert completed.returncode != 0
    output = completed.stdout
    assert "of 'stripe/api_usage' failed.\nWhy it failed:\n  stripe__api_usage: MeterCheckError: " in output
    assert "MeterCheckError: meter event sync 'api_usage' sent nothing" in output
    assert "- no meter has the event name 'api_calls': create one with that event name" in output
    stats = double.stats()
    assert stats["customers"] == 294  # the job before it ran
    assert not stats.get("requests_meter_event_stream") and not stats.get("meter_event_sessions")
    assert YOUR_KEY not in output


def test_a_failed_demo_shows_the_failed_checks_the_first_error_and_the_failing_rows(tmp_path, double, processes):
    double.configure(invalid_emails="^[a-d]")  # Stripe refuses every address that starts with a to d
    completed = demo(processes, tmp_path, STRIPE_API_KEY=YOUR_KEY, STRIPE_API_BASE=double.url)
    assert completed.returncode != 0
    output = completed.stdout
    failed, writes = map(int, re.search(r"(\d+) of (\d+) Stripe writes failed", output).groups())
    assert failed > 0 and writes == 294 and double.stats()["customers"] == writes - failed
    assert (
        f"Failed checks:\n  - stripe/customers failed_writes_below_threshold: {failed} of 294 Stripe writes failed"
        in (output)
    )
    assert "Why it failed:\n  stripe__customers: " in output and "blocking asset check failed" in output
    assert f"Failing rows:\n  stripe/customers: {failed} rows failed. Stripe's reasons:" in output
    shown = re.findall(
        r"^    '([a-d][^']*)': InvalidRequestError \(HTTP 400\): Invalid email address: \1$", output, re.M
    )
    assert len(shown) == min(failed, 5)
    assert YOUR_KEY not in output


def test_the_demo_raises_one_price_once_the_catalog_is_in_its_local_stripe(double, capsys):
    local = {"STRIPE_API_KEY": DEMO_API_KEY, "STRIPE_CATALOG_API_BASE": double.url}
    assert not raise_a_price_once_the_catalog_is_in_stripe(local)  # the first run: no catalog yet
    catalog = make_client(DEMO_API_KEY, double.url).v1
    catalog.products.create(params={"id": "prod_demo_pro", "name": "Pro"})
    price = catalog.prices.create(
        params={"product": "prod_demo_pro", "currency": "usd", "unit_amount": 1000, "lookup_key": "pro_monthly_usd"}
    )
    capsys.readouterr()
    assert raise_a_price_once_the_catalog_is_in_stripe(local)
    assert "this run raises pro_monthly_usd from 10.00 to 12.00 USD" in capsys.readouterr().out
    assert not raise_a_price_once_the_catalog_is_in_stripe({**local, "STRIPE_API_KEY": YOUR_KEY})  # never yours

    catalog.prices.create(
        params={
            "product": "prod_demo_pro",
            "currency": "usd",
            "unit_amount": 1200,
            "lookup_key": "pro_monthly_usd",
            "transfer_lookup_key": True,
        }
    )
    catalog.prices.update(price.id, params={"active": False})
    assert raise_a_price_once_the_catalog_is_in_stripe(local)  # stays raised, without a word
    assert capsys.readouterr().out == ""

    before, after = catalog_seed(pro_price_raised=False), catalog_seed(pro_price_raised=True)
    assert before["raw_catalog_products"] == after["raw_catalog_products"]
    changed = [(b, a) for b, a in zip(before["raw_catalog_prices"], after["raw_catalog_prices"], strict=True) if b != a]
    assert [(b["lookup_key"], b["unit_amount"], a["unit_amount"]) for b, a in changed] == [
        ("pro_monthly_usd", 1000, 1200)
    ]


def test_the_summary_names_a_postgres_warehouse_not_a_duckdb_file():
    warehouse = PostgresWarehouseResource(host="db.internal", port=6432, user="sync", database="analytics")
    assert describe_warehouse(warehouse) == "PostgreSQL database 'analytics' at db.internal:6432 as sync"


def test_an_unknown_warehouse_gets_the_projects_message_on_every_path(tmp_path, processes):
    message = "CENSUS_STRIPE_WAREHOUSE='nonsense' is not a warehouse; use one of duckdb, postgres"
    completed = demo(processes, tmp_path, CENSUS_STRIPE_WAREHOUSE="nonsense")
    assert completed.returncode == 2 and message in completed.stderr
    venv = Path(sys.executable).parent.parent
    for target in ("demo", "dev"):
        # The manifest step of `make`, with the test's virtualenv taken as installed.
        made = subprocess.run(
            ["make", "--no-print-directory", target, f"VENV={venv}", "-o", f"{venv}/.installed"],
            env={**os.environ, "CENSUS_STRIPE_WAREHOUSE": "nonsense", "CENSUS_STRIPE_DATA_DIR": str(tmp_path)},
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode != 0 and message in made.stderr, made.stdout + made.stderr
        assert not (PROJECT_ROOT / "dbt_project" / "target" / "nonsense").exists()
    loaded = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "census_stripe.definitions"],
        env={**os.environ, "CENSUS_STRIPE_WAREHOUSE": "nonsense", "DAGSTER_HOME": str(tmp_path)},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode != 0 and message in loaded.stdout + loaded.stderr


@pytest.mark.parametrize(
    "catalog_server, catalog_api_base",
    [("http://127.0.0.1:4242", "http://127.0.0.1:4242"), (None, "http://127.0.0.1:8420")],
)
def test_the_catalog_is_synced_through_its_own_server_only_when_one_is_named(
    monkeypatch, catalog_server, catalog_api_base
):
    monkeypatch.setenv("STRIPE_API_KEY", YOUR_KEY)
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:8420")
    if catalog_server:
        monkeypatch.setenv("STRIPE_CATALOG_API_BASE", catalog_server)
    else:
        monkeypatch.delenv("STRIPE_CATALOG_API_BASE", raising=False)
    resources = sync_resources()
    with dg.build_resources({name: resources[name] for name in ("stripe", "stripe_catalog")}) as built:
        assert built.stripe.api_base == "http://127.0.0.1:8420"
        assert (built.stripe_catalog.api_base, built.stripe_catalog.api_key) == (catalog_api_base, YOUR_KEY)


def test_seeds_rewritten_while_read_are_always_read_whole(tmp_path):
    """Every demo run, and the tests' dbt builds, write the seeds that other processes' dbt may be
    reading at that moment: a reader sees the old file or the new one, never a part."""
    versions = set()
    for users in (300, 301):
        write_seeds(users, tmp_path)
        versions.add((tmp_path / "raw_users.csv").read_bytes())
    rewritten = threading.Event()

    def rewrite() -> None:
        for turn in range(20):
            write_seeds(300 + turn % 2, tmp_path)
        rewritten.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads = []
    while not rewritten.is_set():
        reads.append((tmp_path / "raw_users.csv").read_bytes())
    writer.join()
    assert reads and all(read in versions for read in reads)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        f"{table}.csv" for table in write_seeds(300, tmp_path)
    )


def test_a_local_stripe_without_saved_data_keeps_its_store_under_the_data_folder_until_it_stops():
    """Never in the system's temp folder, where localstripe's own fixed file lives for every server."""
    with LocalStripe() as server:
        assert server._process is not None
        store = Path(server._process.args[3])
        assert store.parent.parent == DATA_DIR and store.name == "localstripe.pickle" and store.exists()
    assert not store.parent.exists()
