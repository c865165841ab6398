"""Usage reaches a meter that bills it, in the account that holds its customers, at the pace that
account allows; otherwise nothing is sent. Against the Stripe double as a real server (which refuses
or drops what Stripe does), on real DuckDB files, and a real Dagster load of a defs folder."""

import time
import uuid
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from dagster_duckdb import DuckDBResource

from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.meter_sync import run_meter_event_sync
from census_stripe.orchestration.dbt_models import DbtModel
from census_stripe.orchestration.meter_event_asset import MeterEventSync, build_meter_event_asset
from census_stripe.orchestration.resources import StripeResource
from census_stripe.orchestration.sync_asset import Sync
from census_stripe.orchestration.warehouses import DuckDBWarehouseResource
from census_stripe.plan.meter_events import CustomerSource
from census_stripe.settings import DBT_PROJECT_DIR, DEFS_DIR
from census_stripe.spec import MeterEventSpec, SyncConfigError, parse_sync_spec
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.stripe_client.errors import StripeAccountMismatchError
from census_stripe.stripe_client.meter_events import MeterEventStream
from census_stripe.stripe_client.meter_types import MeterLimits
from census_stripe.stripe_client.meters import MeterCheckError
from census_stripe.stripe_client.rate_limit import RateLimits
from census_stripe.warehouse.base import Relation
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import StateRecord, StateStatus, SyncStateStore
from census_stripe_tests.meters import create_meter, deactivate_meter
from census_stripe_tests.usage import API_KEY, UNLIMITED, ledger_counts, make_usage, run_usage_sync

USAGE_SYNC = """
model: usage
object: meter_event
meter_event:
  {event_name}
  customer: {{column: customer_id{customer_sync}}}
  value_column: calls
  timestamp_column: day
  identity: [customer_id, day]
  api: {api}
  customer_payload_key: {customer_key}
"""


def usage_spec(
    api: str = "stream",
    event_name: str = "event_name: api_calls",
    customer_sync: str = "",
    customer_key: str = "stripe_customer_id",
) -> MeterEventSpec:
    sync = customer_sync and f", sync: {customer_sync}"
    text = USAGE_SYNC.format(api=api, event_name=event_name, customer_sync=sync, customer_key=customer_key)
    spec = parse_sync_spec(text, "defs/api_usage/defs.yaml")
    assert isinstance(spec, MeterEventSpec)
    return spec


@pytest.fixture
def customers(double) -> list[str]:
    return double.load([{"email": f"user{i}@example.com"} for i in range(20)])


@pytest.fixture
def usage(tmp_path, customers) -> Path:
    path = tmp_path / "usage.duckdb"
    make_usage(path, customers, days=5)
    return path


def nothing_sent(double) -> bool:
    stats = double.stats()
    sent = ("requests_meter_event_create", "requests_meter_event_stream", "meter_event_sessions")
    return not any(stats.get(name) for name in sent) and double.meter_events()["counted"] == 0


# --- the account ---------------------------------------------------------------------------------

DEFS_PROJECT = """\
[project]
name = "{module}"
version = "0.1.0"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "{module}"
registry_modules = ["census_stripe"]
"""


def load_defs_folder(root: Path, syncs: dict[str, str], monkeypatch) -> dg.Definitions:
    """A Dagster project holding these sync instances, loaded as Dagster loads a defs folder. Its syncs
    read the demo's models: their `dbt_project` names this checkout's by its full path."""
    module = f"billing_{uuid.uuid4().hex[:8]}"
    root.mkdir()
    (root / "pyproject.toml").write_text(DEFS_PROJECT.format(module=module))
    syncs = {
        path: text.replace("attributes:\n", f"attributes:\n  dbt_project: {DBT_PROJECT_DIR}\n", 1)
        for path, text in syncs.items()
    }
    for path, text in {"__init__.py": "", "defs/__init__.py": "", **syncs}.items():
        (root / module / path).parent.mkdir(parents=True, exist_ok=True)
        (root / module / path).write_text(text)
    monkeypatch.syspath_prepend(str(root))
    return dg.load_from_defs_folder(path_within_project=root)


def test_a_usage_sync_sending_through_another_resource_than_its_customer_sync_is_refused_at_load(tmp_path, monkeypatch):
    customers_sync = (DEFS_DIR / "customers" / "defs.yaml").read_text()
    usage = (DEFS_DIR / "api_usage" / "defs.yaml").read_text()
    elsewhere = usage.replace("  object: meter_event\n", "  object: meter_event\n  stripe_resource: stripe_catalog\n")
    assert elsewhere != usage
    with pytest.raises(Exception) as refused:
        load_defs_folder(
            tmp_path / "elsewhere",
            {"defs/customers/defs.yaml": customers_sync, "defs/api_usage/defs.yaml": elsewhere},
            monkeypatch,
        )
    error = refused.value.__cause__
    assert isinstance(error, SyncConfigError), refused.value
    [(field, problem)] = error.problems
    assert error.path.endswith("defs/api_usage/defs.yaml") and field == "attributes.stripe_resource"
    assert "the customer sync 'customers' writes its customers through 'stripe'" in problem
    assert problem.endswith("Set stripe_resource: stripe")

    same = load_defs_folder(
        tmp_path / "same", {"defs/customers/defs.yaml": customers_sync, "defs/api_usage/defs.yaml": usage}, monkeypatch
    )
    assert dg.AssetKey(["stripe", "api_usage"]) in {key for asset in same.assets or [] for key in asset.keys}


def test_a_run_whose_customers_are_in_another_account_fails_before_any_event(double, tmp_path):
    """Two resources that load can still reach two accounts, once their keys are known: the run
    compares the accounts Stripe names before it sends anything."""
    with StripeDoubleServer(account_id="acct_customers_elsewhere") as elsewhere:
        emails = [f"user{i}@example.com" for i in range(5)]
        ids = elsewhere.load([{"email": email} for email in emails])
        path = tmp_path / "usage.duckdb"
        make_usage(path, emails, days=2)
        create_meter(double.url)
        usage_objects, customer_objects = StripeObjects(API_KEY, double.url), StripeObjects(API_KEY, elsewhere.url)
        customer_account = customer_objects.identify_account()
        with duckdb.connect(str(path)) as connection:
            store = SyncStateStore(DuckDBWarehouse(connection))
            store.ensure_tables()
            written = [
                StateRecord(email, id_, "h", {}, None, StateStatus.SYNCED, None)
                for email, id_ in zip(emails, ids, strict=True)
            ]
            store.save("customers", customer_account.key, "customers-run", written)
            with pytest.raises(StripeAccountMismatchError) as refused:
                run_meter_event_sync(
                    usage_spec(customer_sync="customers"),
                    model=Relation("main", "usage"),
                    store=store,
                    api=lambda: MeterEventStream(API_KEY, double.url, UNLIMITED, ("stripe_customer_id", "value")),
                    account_of=usage_objects.identify_account,
                    customers=CustomerSource("customers", "email", "stripe"),
                    customer_account_of=lambda: customer_account,
                    run_id="usage-run",
                )
    message = str(refused.value)
    assert "acct_double (test mode)" in message and "acct_customers_elsewhere (test mode)" in message
    assert "Nothing was sent" in message and API_KEY not in message
    assert nothing_sent(double)


# --- the meter -----------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["stream", "v1"])
def test_without_a_meter_for_its_event_name_a_run_sends_nothing_and_says_how_to_create_one(double, usage, api):
    with pytest.raises(MeterCheckError) as stopped:
        run_usage_sync(usage, double.url, usage_spec(api), "no-meter")
    [problem] = stopped.value.problems
    assert problem.startswith("no meter has the event name 'api_calls': create one with that event name, customer ")
    assert "'stripe_customer_id'" in problem and "'value'" in problem and "POST /v1/billing/meters" in problem
    assert nothing_sent(double)
    assert ledger_counts(usage) == {"rows": 0, "attempted": 0, "accepted": 0}

    create_meter(double.url)
    sent = run_usage_sync(usage, double.url, usage_spec(api), "with-meter").counts()
    assert sent["accepted"] == double.meter_events()["counted"] == 100


def test_a_deactivated_meter_stops_the_run_naming_the_meter_to_reactivate(double, usage):
    meter = create_meter(double.url)
    deactivate_meter(double.url, meter)
    with pytest.raises(MeterCheckError) as stopped:
        run_usage_sync(usage, double.url, usage_spec(), "inactive")
    [problem] = stopped.value.problems
    assert f"meter {meter} (Api calls) of event name 'api_calls' is deactivated" in problem
    assert f"POST /v1/billing/meters/{meter}/reactivate" in problem
    assert nothing_sent(double)


def test_a_meter_reading_other_payload_keys_stops_the_run_naming_the_setting_even_pages_away(double, usage):
    # Listed newest first, 100 a page: the meter is found on the second page.
    meter = create_meter(double.url, customer_key="customer")
    for index in range(120):
        create_meter(double.url, f"other_{index}")
    with pytest.raises(MeterCheckError) as stopped:
        run_usage_sync(usage, double.url, usage_spec(), "other-keys")
    [problem] = stopped.value.problems
    assert f"meter {meter} (Api calls) of event name 'api_calls' reads the customer from payload key " in problem
    assert "key 'customer', the sync sends it as 'stripe_customer_id'" in problem
    assert "set meter_event.customer_payload_key: customer in the sync's defs.yaml" in problem
    assert nothing_sent(double)

    fixed = run_usage_sync(usage, double.url, usage_spec(customer_key="customer"), "fixed").counts()
    assert fixed["accepted"] == double.meter_events()["counted"] == 100
    assert fixed["stripe_api_calls"] == 2 + 2  # two pages of meters; a session and one stream request


def test_an_event_name_column_has_every_name_it_sends_checked(double, usage, customers):
    with duckdb.connect(str(usage)) as connection:
        connection.execute("alter table main.usage add column meter varchar")
        connection.execute("update main.usage set meter = if(calls % 2 = 0, 'api_calls', 'storage_gb')")
    spec = usage_spec(event_name="event_name_column: meter")
    create_meter(double.url)
    with pytest.raises(MeterCheckError) as stopped:
        run_usage_sync(usage, double.url, spec, "one-missing")
    assert [problem.split(":")[0] for problem in stopped.value.problems] == ["no meter has the event name 'storage_gb'"]
    assert nothing_sent(double)

    create_meter(double.url, "storage_gb")
    assert run_usage_sync(usage, double.url, spec, "both").counts()["accepted"] == 100
    assert set(double.meter_events()["sums"]) == {"api_calls", "storage_gb"}


def test_a_dry_run_reports_a_missing_meter_in_its_metadata(double, usage, tmp_path):
    spec = usage_spec()
    model = DbtModel("usage", dg.AssetKey("usage"), Relation("main", "usage"), (), "")
    sync = Sync(spec, tmp_path / "defs.yaml", model)
    asset = build_meter_event_asset(MeterEventSync(sync, spec, CustomerSource()), "duckdb")
    resources = {
        "stripe": StripeResource(api_key=API_KEY, api_base=double.url),
        "warehouse": DuckDBWarehouseResource(duckdb=DuckDBResource(database=str(usage))),
    }
    config = {"ops": {asset.op.name: {"config": {"dry_run": True}}}}
    result = dg.materialize([asset], resources=resources, run_config=config)
    [observation] = [event.asset_observation_data.asset_observation for event in result.get_asset_observation_events()]
    metadata = {name: value.value for name, value in observation.metadata.items()}
    assert metadata["meter_check"].startswith("- no meter has the event name 'api_calls'")
    summary = " ".join(metadata["summary"].split())  # wrapped to what the UI shows of a line
    assert "a real run would stop before sending: no meter bills them (meter_check)" in summary
    assert (metadata["planned_events"], metadata["stripe_api_calls"]) == (100, 1)
    assert nothing_sent(double)


def test_a_rerun_with_nothing_to_send_asks_stripe_nothing(double, usage):
    create_meter(double.url)
    run_usage_sync(usage, double.url, usage_spec(), "first")
    again = run_usage_sync(usage, double.url, usage_spec(), "again").counts()
    assert (again["already_sent"], again["stripe_api_calls"]) == (100, 0)


# --- the pace ------------------------------------------------------------------------------------


def test_a_test_mode_key_paces_v1_meter_events_within_the_accounts_budget(double, tmp_path, customers):
    """Stripe counts test-mode v1 meter events against the account's basic limit (the double does
    too): the run keeps within the account's budget, not v1's 1,000/s."""
    path = tmp_path / "usage.duckdb"
    events = make_usage(path, customers[:10], days=3)
    create_meter(double.url)
    double.configure(account_rate=20, meter_event_rate=0)
    account = RateLimits(account=20, headroom=0.1)
    limits = MeterLimits(v1_requests_per_second=1000, concurrency=50, account=account)
    started = time.monotonic()
    counts = run_usage_sync(path, double.url, usage_spec("v1"), "paced", limits=limits).counts()
    elapsed = time.monotonic() - started
    assert (counts["accepted"], counts["stripe_rate_limited"]) == (events, 0)
    assert double.stats().get("rate_limited", 0) == 0
    # 30 events at 18/s after the first: no faster (a loaded machine is only ever slower).
    assert elapsed >= (events - 2) / 18


def test_a_live_mode_key_sends_v1_meter_events_at_their_own_limit(double, tmp_path, customers):
    path = tmp_path / "usage.duckdb"
    events = make_usage(path, customers[:10], days=3)
    create_meter(double.url)
    # The account is all but spent; live-mode v1 meter events do not draw on it.
    double.configure(account_rate=1, meter_event_rate=0)
    limits = MeterLimits(v1_requests_per_second=1000, concurrency=50, account=RateLimits(account=100_000))
    counts = run_usage_sync(path, double.url, usage_spec("v1"), "live", limits=limits, api_key="sk_live_usage").counts()
    assert (counts["accepted"], counts["stripe_rate_limited"]) == (events, 0)
    assert double.meter_events()["counted"] == events
