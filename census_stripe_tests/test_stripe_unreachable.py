"""Stripe unreachable: a dead server, or one answering 500 to every write, stops the run with one
clear error after a handful of attempts, instead of retrying every row to exhaustion. What Stripe
accepted stays recorded; rows not attempted are left for the next run, which converges without
duplicates. How fast that is on an idle machine is the README's figure; here, the attempts are
counted.
"""

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from census_stripe.demo.stripe_double import StripeDoubleServer
from census_stripe.orchestration.sync_asset import build_sync_asset, load_sync
from census_stripe.stripe_client.client import CircuitBreaker, StripeObjects
from census_stripe.stripe_client.errors import StripeUnreachableError
from census_stripe.stripe_client.rate_limit import RateLimits, shared_budget
from census_stripe_tests.conftest import DEMO_SYNC, resources
from census_stripe_tests.synthetic import make_model
from census_stripe_tests.test_delivery import assert_stripe_equals_model, customers_for, sync

ROWS = 200
CONCURRENCY = 8
STOPPED_MID_RUN = re.compile(r": (\d+) writes done, (\d+) left for the next run$")


@pytest.fixture
def model(tmp_path) -> Path:
    path = tmp_path / "warehouse.duckdb"
    make_model(path, ROWS)
    return path


def customers_at(url: str | None, rate: float = 1000, **options) -> StripeObjects:
    key = "sk_test_unreachable"
    limits = RateLimits(account=rate, endpoints=(("create", rate), ("update", rate)))
    return StripeObjects(key, url, shared_budget(key, url, limits), **options)


def statuses(model: Path) -> dict[str, int]:
    with duckdb.connect(str(model)) as connection:
        rows = connection.execute("select status, count(*) from census_stripe.sync_state group by status").fetchall()
    return dict(rows)


def sync_stopping(model: Path, customers: StripeObjects) -> str:
    """The message of the StripeUnreachableError a sync raises. The tests count the attempts that
    found Stripe unreachable: the breaker's threshold, not a retry of every row (ROWS x 6 attempts)."""
    with pytest.raises(StripeUnreachableError) as raised:
        sync(model, customers, concurrency=CONCURRENCY)
    return str(raised.value)


def test_a_dead_server_stops_the_plan_after_the_breakers_attempts(model, unreachable_url):
    customers = customers_at(unreachable_url)
    message = sync_stopping(model, customers)
    assert message.startswith(f"Stripe unreachable at {unreachable_url} (APIConnectionError: ")
    assert "Connection refused" in message
    assert message.endswith(": stopped while planning, before any write")
    # The run's first call, asking which account the key belongs to, tried as often as the breaker allows.
    assert customers.calls.counts == {"account": customers.breaker.threshold}
    assert statuses(model) == {}


def test_the_default_address_is_stripes_own():
    assert customers_at(None).breaker.address == "https://api.stripe.com"


def test_a_server_dying_before_a_run_of_updates_leaves_every_row_for_the_next_run(model):
    with StripeDoubleServer() as server:
        assert sync(model, customers_for(server)).counts()["created"] == ROWS
        with duckdb.connect(str(model)) as connection:
            connection.execute("update main.stripe_customers set plan = 'enterprise'")
    # The same address, now dead. The state knows the account and every key, so the plan needs no
    # Stripe call; the first write meets the dead server.
    customers = customers_for(server)
    message = sync_stopping(model, customers)
    assert message.startswith(f"Stripe unreachable at {server.url} (APIConnectionError: ")
    assert message.endswith(f": 0 writes done, {ROWS} left for the next run")
    # The write-access check, made before any row, met the dead server on each of the breaker's attempts.
    assert customers.calls.counts == {"update": customers.breaker.threshold}
    assert statuses(model) == {"synced": ROWS}  # still what Stripe last accepted; nothing marked failed


def test_a_server_answering_500_to_every_write_stops_the_run_after_the_breakers_attempts(double, model):
    double.configure(fail_before_rate=1.0)
    customers = customers_for(double)
    message = sync_stopping(model, customers)
    assert message == (
        f"Stripe unreachable at {double.url} (APIError (HTTP 500): An unknown error occurred): "
        f"0 writes done, {ROWS} left for the next run"
    )
    # The write-access check's attempts up to the breaker's threshold, and nothing after them.
    assert double.stats()["failed_before"] == customers.breaker.threshold
    assert statuses(model) == {}


@contextmanager
def every_write_failing_after(double, writes: int) -> Iterator[None]:
    """The double turns into a server answering 500 to every write once `writes` creates are done: it
    holds the next creates (a kill point) until it is configured so, then lets them through. The
    thread that switches it never outlives the block, so no later test's double is switched."""
    double.pause_after(writes, "create")
    over = threading.Event()

    def outage() -> None:
        while not over.is_set():
            if double.pause_state()["paused"]:
                double.configure(fail_before_rate=1.0)
                double.resume()
                return
            over.wait(0.02)

    switch = threading.Thread(target=outage, daemon=True)
    switch.start()
    try:
        yield
    finally:
        over.set()
        switch.join()


def test_an_outage_mid_run_keeps_what_stripe_accepted_and_the_rerun_converges(double, model):
    customers = customers_for(double)
    with every_write_failing_after(double, 50):
        message = sync_stopping(model, customers)
    assert message.startswith(f"Stripe unreachable at {double.url} (APIError (HTTP 500): ")
    assert message.endswith(f": 50 writes done, {ROWS - 50} left for the next run")
    # Every write Stripe accepted is recorded as synced; the rest are neither recorded nor failed.
    assert statuses(model) == {"synced": 50}
    stats = double.stats()
    assert stats["customers"] == 50
    # The breaker's threshold of failed writes; each other thread writing when it opened may add one.
    assert customers.breaker.threshold <= stats["failed_before"] <= customers.breaker.threshold + CONCURRENCY - 1

    double.configure(fail_before_rate=0)
    counts = sync(model, customers_for(double)).counts()
    assert (counts["created"], counts["failed"]) == (ROWS - 50, 0)
    assert_stripe_equals_model(double, model)


def test_429s_never_open_the_breaker(double, model):
    # The engine believes in 200/s; the double allows 50/s per endpoint and answers the rest 429.
    double.configure(endpoint_rate=50)
    customers = customers_at(double.url, rate=200, unreachable_after=1)
    report = sync(model, customers)
    assert report.counts()["created"] == ROWS
    assert report.rate_limited > 0


def test_the_breaker_opens_after_failures_in_a_row_and_an_answer_resets_the_count():
    breaker = CircuitBreaker("http://stripe.example", threshold=3)
    for _ in range(2):
        breaker.failed("APIError (HTTP 500): first")
        breaker.failed("APIError (HTTP 500): second")
        breaker.answered()
        breaker.raise_if_open()
    breaker.failed("APIConnectionError: one")
    breaker.failed("APIConnectionError: two")
    breaker.failed("APIConnectionError: three")
    breaker.failed("APIConnectionError: four")
    with pytest.raises(StripeUnreachableError) as raised:
        breaker.raise_if_open()
    # The failure that opened it is the one named.
    assert str(raised.value) == "Stripe unreachable at http://stripe.example (APIConnectionError: three)"


def test_a_backoff_ends_the_moment_the_breaker_opens():
    breaker = CircuitBreaker("http://stripe.example", threshold=1)
    opening = threading.Timer(0.2, breaker.failed, ["APIConnectionError: gone"])
    opening.start()
    started = time.monotonic()
    breaker.sleep(BACKOFF := 600)
    opening.join()
    assert time.monotonic() - started < BACKOFF / 2  # woken by the opening, long before the backoff's end


@pytest.mark.parametrize(
    ("statuses", "opened"),
    [
        # 409s between two 500s: the count of failures in a row is not reset, and the breaker opens.
        ([500, 409, 409, 500], True),
        # Three 409s, then a 500: one failure in a row, not four; the next attempt succeeds.
        ([409, 409, 409, 500], False),
    ],
)
def test_409s_are_retried_and_neither_count_toward_nor_reset_the_breaker(double, statuses, opened):
    double.configure(next_write_statuses=statuses)
    customers = customers_at(double.url, unreachable_after=2)
    if opened:
        with pytest.raises(StripeUnreachableError, match=r"\(APIError \(HTTP 500\): Answered as scripted\)$"):
            customers.create({"email": "ada@example.com"}, "census-stripe-409")
    else:
        customers.create({"email": "ada@example.com"}, "census-stripe-409")
    stats = double.stats()
    assert stats["requests_create"] == len(statuses) + (not opened)
    assert stats["customers"] == (not opened)


def test_through_dagster_the_run_fails_with_one_clear_message(warehouse_path, tmp_path, unreachable_url):
    url = unreachable_url
    asset = build_sync_asset(load_sync(DEMO_SYNC), "duckdb")
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize(
            [asset], resources=resources(warehouse_path, url), instance=instance, raise_on_error=False
        )
        failures = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    assert not result.success
    assert len(failures) == 1
    error = failures[0].dagster_event.step_failure_data.error.cause
    assert error.cls_name == "StripeUnreachableError"
    assert error.message.startswith(
        f"census_stripe.stripe_client.errors.StripeUnreachableError: Stripe unreachable at {url} (APIConnectionError: "
    )
    assert error.message.rstrip().endswith(": stopped while planning, before any write")
    # One error, not one per row, and no SDK exception chained to it.
    assert error.cause is None and error.context is None
