"""Delivery under faults, proven on the Stripe test double: 429s, lost responses, 500s, latency,
runs killed at random points, two runs at once, a key that may not write.

Every test ends by comparing what Stripe holds with the model: one customer per row, each with
the model's values, no duplicate emails, and a state table that agrees with Stripe.
"""

import json
import random
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from census_stripe.demo.__main__ import INSTANCE_CONFIG
from census_stripe.orchestration.resources import StripeResource
from census_stripe.settings import PROJECT_ROOT
from census_stripe.spec import load_sync_spec
from census_stripe.stripe_client.client import StripeObjects
from census_stripe.stripe_client.errors import StripeAccessError, StripeRequestError
from census_stripe.stripe_client.rate_limit import RateLimits, shared_budget
from census_stripe.stripe_client.values import STRIPE_API_BASE
from census_stripe.sync import RunOptions, run_sync
from census_stripe.warehouse.base import Relation
from census_stripe.warehouse.duckdb import DuckDBWarehouse
from census_stripe.warehouse.state import SyncStateStore
from census_stripe_tests.conftest import (
    DEMO_SYNC,
    MATERIALIZE_DEMO_SYNC,
    Processes,
    dagster_process_env,
)
from census_stripe_tests.synthetic import make_model

ROWS = 300
SPEC = load_sync_spec(DEMO_SYNC)
MODEL = Relation("main", "stripe_customers")
QUIET = {"latency": 0, "account_rate": 0, "endpoint_rate": 0, "fail_before_rate": 0, "fail_after_rate": 0}


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    make_model(path, ROWS)
    return path


def customers_for(double, key="sk_test_delivery", rate=1000.0, **limits) -> StripeObjects:
    limits = RateLimits(account=rate, endpoints=(("create", rate), ("update", rate)), **limits)
    return StripeObjects(key, double.url, shared_budget(key, double.url, limits))


EVERY_CHANGED_ROW = RunOptions()


def sync(model: Path, customers: StripeObjects, concurrency=8, options: RunOptions = EVERY_CHANGED_ROW):
    with duckdb.connect(str(model)) as connection:
        return run_sync(
            SPEC,
            model=MODEL,
            store=SyncStateStore(DuckDBWarehouse(connection)),
            stripe=customers,
            run_id=f"run-{uuid.uuid4().hex[:8]}",  # each call is a run of its own
            options=options,
            concurrency=concurrency,
        )


def assert_stripe_equals_model(double, model: Path) -> None:
    double.configure(**QUIET)
    in_stripe = [c.values | {"id": c.id} for c in customers_for(double, key="sk_test_reader").iter_all()]
    emails = [c["email"] for c in in_stripe]
    assert len(emails) == len(set(emails)), "duplicate customers in Stripe"
    with duckdb.connect(str(model)) as connection:
        rows = connection.execute("select email, full_name, plan from main.stripe_customers").fetchall()
        state = dict(
            connection.execute(
                "select customer_key, stripe_customer_id from census_stripe.sync_state where status = 'synced'"
            ).fetchall()
        )
    assert {(c["email"], c["name"], c["metadata.plan"]) for c in in_stripe} == set(rows)
    assert state == {c["email"]: c["id"] for c in in_stripe}


def test_with_every_fault_on_the_run_succeeds_and_stripe_equals_the_model(double, model):
    # Limits below what the engine is told, so 429s happen; writes fail before or after applying.
    double.configure(latency=0.005, account_rate=80, endpoint_rate=40, fail_before_rate=0.05, fail_after_rate=0.05)
    report = sync(model, customers_for(double, rate=120))
    counts = report.counts()
    assert (counts["created"], counts["failed"]) == (ROWS, 0)
    stats = double.stats()
    assert stats.get("rate_limited", 0) > 0 and stats["failed_before"] > 0 and stats["lost_responses"] > 0
    assert counts["stripe_rate_limited"] == stats.get("rate_limited", 0)
    assert_stripe_equals_model(double, model)

    with duckdb.connect(str(model)) as connection:
        connection.execute("update main.stripe_customers set plan = 'enterprise' where external_id like '%0'")
    double.configure(latency=0.005, account_rate=80, endpoint_rate=40, fail_before_rate=0.05, fail_after_rate=0.05)
    counts = sync(model, customers_for(double, rate=120)).counts()
    assert (counts["updated"], counts["created"], counts["failed"]) == (ROWS // 10, 0, 0)
    assert_stripe_equals_model(double, model)


def run_in_process(processes: Processes, model: Path, double, **options) -> subprocess.Popen:
    command = [sys.executable, "-m", "census_stripe_tests.sync_process", "--db", str(model), "--url", double.url]
    for name, value in options.items():
        command += [f"--{name}", str(value)]
    return processes.start(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after_creates(processes: Processes, model: Path, double, creates: int, **options) -> None:
    """A run in its own process, SIGKILLed once Stripe has answered `creates` of its creates and it
    has sent the next one, which the double holds (a kill point)."""
    double.pause_after(creates, "create")
    run = run_in_process(processes, model, double, **options)
    double.wait_until_paused(client=run)
    processes.kill(run)


def finish_run(processes: Processes, model: Path, double) -> dict[str, int]:
    """A last run of the demo sync, left to finish; its counts."""
    final = run_in_process(processes, model, double, concurrency=4)
    output, errors = final.communicate(timeout=600)
    assert final.returncode == 0, errors[-3000:]
    return json.loads(output)


def test_runs_killed_at_random_points_converge_without_duplicates(double, model, processes):
    double.configure(fail_after_rate=0.02)
    generator = random.Random(7)
    for _ in range(5):
        # Anywhere from before the first create to before the last one this run would make; the
        # creates in flight at the kill are then applied by Stripe, or never arrive.
        left = ROWS - double.stats()["customers"]
        kill_after_creates(processes, model, double, generator.randrange(left), concurrency=4)
        double.resume(drop_waiting=generator.random() < 0.5)
    assert 0 < double.stats()["customers"] < ROWS

    assert finish_run(processes, model, double)["failed"] == 0
    assert_stripe_equals_model(double, model)


def test_a_run_killed_mid_sync_has_saved_only_whole_batches_of_writes_stripe_accepted(double, model, processes):
    """State is saved after each batch of 100 writes Stripe accepted, never before. Killed with 250
    creates answered and the 251st sent, the run had taken in the results of at least 235 (it keeps
    at most 2 x 8 writes in flight, and takes in at most 16 at once, so a batch holds 100 to 115):
    its first two batches were saved, 200 to 230 rows, every one a customer in Stripe."""
    kill_after_creates(processes, model, double, 250, concurrency=8)
    double.resume(drop_waiting=True)
    in_stripe = {c.values["email"]: c.id for c in customers_for(double, key="sk_test_reader").iter_all()}
    assert len(in_stripe) == 250
    with duckdb.connect(str(model)) as connection:
        saved = dict(
            connection.execute(
                "select customer_key, stripe_customer_id from census_stripe.sync_state where status = 'synced'"
            ).fetchall()
        )
    assert 200 <= len(saved) <= 230
    assert saved.items() <= in_stripe.items()


def test_two_runs_at_once_make_no_duplicates(double, model, tmp_path, processes):
    # DuckDB takes one writer per file, so each run has its own copy of the same warehouse; both
    # race to create the same customers in the same Stripe account.
    twin = tmp_path / "twin.duckdb"
    shutil.copyfile(model, twin)
    double.configure(latency=0.02)
    runs = [run_in_process(processes, path, double, concurrency=8) for path in (model, twin)]
    results = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [errors[-2000:] for _, errors in results]
    assert double.stats()["customers"] == ROWS
    assert_stripe_equals_model(double, model)
    assert_stripe_equals_model(double, twin)


def test_a_well_behaved_run_stays_within_the_rate_limits(double, model):
    double.configure(latency=0.02, account_rate=100, endpoint_rate=25)
    started = time.monotonic()
    report = sync(model, customers_for(double, rate=25, headroom=0.1), concurrency=16)
    elapsed = time.monotonic() - started
    stats = double.stats()
    assert report.counts()["created"] == ROWS
    # A 429 or two at start-up, when client and server buckets are both full, at most.
    assert stats.get("rate_limited", 0) <= 2
    assert ROWS / elapsed <= 25  # never faster than the endpoint's limit


def test_throttling_halves_the_rate_and_recovers(double, model):
    # The engine believes in 100/s; the account allows 20/s (its own application uses the rest).
    double.configure(latency=0.005, endpoint_rate=20)
    customers = customers_for(double, rate=100)
    report = sync(model, customers, concurrency=16)
    assert report.counts()["failed"] == 0
    rate_limited = double.stats().get("rate_limited", 0)
    assert rate_limited > 0
    # Every 429 throttled the engine's budget.
    assert customers.budget.throttled == report.rate_limited == rate_limited
    # Halving at each 429 keeps the 429s to a small share of the requests, not one per row.
    assert rate_limited < ROWS / 2
    # At the last 429, the create endpoint's rate was halved (from at most its ceiling, 90/s); it climbs
    # back to the ceiling over `recovery_seconds` (read on the bucket's own clock, not waited for).
    creates = customers.budget.endpoint("create")
    assert creates.throttled_at is not None
    assert creates.rate(creates.throttled_at) <= creates.ceiling / 2
    climbing = creates.rate(creates.throttled_at + creates.recovery_seconds / 4)
    assert creates.rate(creates.throttled_at) < climbing < creates.ceiling
    assert creates.rate(creates.throttled_at + creates.recovery_seconds) == creates.ceiling == 90


def test_a_key_that_cannot_write_fails_before_any_row(double, model):
    double.configure(read_only_keys=["rk_test_readonly"])
    customers = customers_for(double, key="rk_test_readonly")
    with pytest.raises(StripeAccessError, match="does not have the required permissions"):
        sync(model, customers)
    # The account, the plan's one listing (reads are allowed), then the write check; no row was written.
    assert customers.calls.counts == {"account": 1, "list": 1, "update": 1}
    with duckdb.connect(str(model)) as connection:
        assert connection.execute("select count(*) from census_stripe.sync_state").fetchone() == (0,)
    assert double.stats()["customers"] == 0


def test_live_keys_need_an_explicit_opt_in():
    with pytest.raises(StripeAccessError, match="allow_live_mode"):
        StripeResource(api_key="rk_live_0123456789").objects()
    live = StripeResource(api_key="rk_live_0123456789", allow_live_mode=True).objects()
    # Stripe itself, within live mode's account budget: 100 requests/s less the 10 % headroom.
    assert (live.api_base, live.budget.account.ceiling) == (STRIPE_API_BASE, 90)


@pytest.fixture
def postgres_dagster_home(tmp_path, postgres_database):
    """A Dagster instance on PostgreSQL storage, as deployments run it, with the demo's pool limit.

    Dagster's default SQLite storage cannot lock a pool's slot row, so two runs that claim it in the
    same instant can both get it (seen in CI); PostgreSQL storage claims with `FOR UPDATE SKIP LOCKED`.
    """
    database = postgres_database
    home = tmp_path / "dagster_home"
    home.mkdir()
    storage = f"storage:\n  postgres:\n    postgres_url: postgresql+psycopg2://postgres@127.0.0.1:5432/{database}\n"
    (home / "dagster.yaml").write_text(storage + INSTANCE_CONFIG)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        # Dagster gives a pool its default limit at the pool's first use, and two runs that first use it in
        # the same instant race on that (a unique-key error on PostgreSQL). A deployment has the pool
        # already; create it here as `dagster instance concurrency set` would, but with the default limit.
        instance.event_log_storage.initialize_concurrency_limit_to_default("stripe_sync_customers")
        assert instance.event_log_storage.get_concurrency_info("stripe_sync_customers").slot_count == 1
    return home


def test_runs_of_one_sync_never_overlap_in_dagster(double, tmp_path, postgres_dagster_home, processes):
    """Each sync asset has its own concurrency pool; with the instance's pool limit at 1 (as the
    demo's dagster.yaml sets it), a second run of the sync waits for the first to finish."""
    home = postgres_dagster_home
    double.configure(latency=0.02)
    runs = []
    for name in ("first", "second"):
        warehouse = tmp_path / f"{name}.duckdb"
        make_model(warehouse, 60)
        runs.append(
            processes.start(
                MATERIALIZE_DEMO_SYNC,
                env=dagster_process_env(home, warehouse, double.url, api_key="sk_test_pools"),
                cwd=PROJECT_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        spans = []
        for record in instance.get_run_records():
            times = {
                entry.dagster_event.event_type_value: entry.timestamp
                for entry in instance.all_logs(record.dagster_run.run_id)
                if entry.dagster_event and entry.dagster_event.step_key == "stripe__customers"
            }
            spans.append((times["STEP_START"], times["STEP_SUCCESS"]))
    assert len(spans) == 2
    first, second = sorted(spans)
    assert first[1] <= second[0], f"the two runs of one sync overlapped: {spans}"


@pytest.mark.parametrize(
    ("status", "should_retry", "attempts"),
    [
        (500, "", 3),  # Stripe failing: retried
        (500, "false", 1),  # ...unless Stripe says a retry would only replay the failure
        (409, "", 3),  # a request with the same idempotency key in flight: retried
        (409, "false", 1),
        (400, "", 1),  # a refusal: not retried
        (400, "true", 3),  # ...unless Stripe says a retry can succeed
    ],
)
def test_retries_follow_stripes_should_retry_header(double, status, should_retry, attempts):
    double.configure(refuse_writes_with=status, should_retry=should_retry)
    customers = StripeObjects("sk_test_advice", double.url, max_attempts=3)
    with pytest.raises(StripeRequestError) as refused:
        customers.create({"email": "ada@example.com"}, idempotency_key=f"advice-{uuid.uuid4()}")
    assert refused.value.http_status == status
    assert double.stats()["requests_create"] == attempts
    assert customers.calls.counts["create"] == attempts
