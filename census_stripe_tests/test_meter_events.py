"""Meter events are sent once: past Stripe's 24-hour deduplication, through a killed run, on both
APIs. Against the Stripe double as a real server, on real DuckDB files."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import duckdb
import pytest

from census_stripe.meter_sync import MeterRunOptions
from census_stripe.settings import PROJECT_ROOT
from census_stripe.warehouse.state import utc_now
from census_stripe_tests.meters import create_meter
from census_stripe_tests.usage import (
    ledger_counts,
    make_usage,
    meter_spec,
    run_usage_sync,
)

DAY = timedelta(hours=24)


@pytest.fixture
def customers(double) -> list[str]:
    create_meter(double.url)
    return double.load([{"email": f"user{i}@example.com"} for i in range(20)])


@pytest.fixture
def usage(tmp_path, customers):
    path = tmp_path / "usage.duckdb"
    make_usage(path, customers, days=5)
    return path


@pytest.mark.parametrize("api", ["stream", "v1"])
def test_a_rerun_sends_nothing_even_after_stripe_forgot_the_identifiers(double, usage, api):
    spec = meter_spec(api, partitioned=False)
    first = run_usage_sync(usage, double.url, spec, "run-1").counts()
    assert (first["accepted"], first["rejected"], first["in_doubt"]) == (100, 0, 0)
    assert double.meter_events()["counted"] == 100

    double.advance_clock(DAY.total_seconds() + 3600)  # Stripe would take every identifier again
    again = run_usage_sync(usage, double.url, spec, "run-2").counts()
    assert (again["already_sent"], again["planned_events"], again["stripe_api_calls"]) == (100, 0, 0)
    summary = double.meter_events()
    assert (summary["counted"], summary["counted_more_than_once"]) == (100, 0)


def test_a_partition_sends_its_day_only_and_late_rows_are_picked_up_by_rerunning_it(double, usage, customers):
    from census_stripe_tests.usage import day_slice

    spec = meter_spec()
    yesterday = (utc_now() - DAY).date()
    first = run_usage_sync(usage, double.url, spec, "run-1", day_slice(yesterday)).counts()
    assert (first["rows_read"], first["accepted"]) == (20, 20)
    late = double.load([{"email": "late@example.com"}])[0]
    with duckdb.connect(str(usage)) as connection:
        connection.execute("insert into main.usage values (?, ?, 7)", [late, yesterday])
    rerun = run_usage_sync(usage, double.url, spec, "run-2", day_slice(yesterday)).counts()
    assert (rerun["already_sent"], rerun["accepted"]) == (20, 1)
    assert double.meter_events()["counted"] == 21


def test_bad_rows_are_rejected_with_a_reason_before_any_call_and_the_good_ones_sent(double, usage, customers):
    now = utc_now()
    with duckdb.connect(str(usage)) as connection:
        connection.executemany(
            "insert into main.usage values (?, ?, ?)",
            [
                ["not-a-customer", now.date(), 1],
                [customers[0], (now - timedelta(days=40)).date(), 1],
                [customers[0], (now + timedelta(days=2)).date(), 1],
                [customers[1], now.date(), None],
                [customers[2], now.date(), 1],
                [customers[2], now.date(), 2],  # the same identity twice
            ],
        )
    report = run_usage_sync(usage, double.url, meter_spec(partitioned=False), "run-1")
    reasons = {row["verdict"] for row in report.rejected_sample}
    assert reasons == {"not_a_customer_id", "too_old", "in_future", "no_value", "duplicate"}
    assert (report.counts()["rejected"], report.counts()["accepted"]) == (6, 100)
    with duckdb.connect(str(usage)) as connection:
        recorded = connection.execute("select count(*) from census_stripe.sync_rejections").fetchone()[0]
    assert recorded == 6


def start_sending(usage, double, api: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "census_stripe_tests.usage", str(usage), double.url, api, "killed"]
    return subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, start_new_session=True)


def kill_while_sending(usage, double, api: str, stat: str) -> None:
    double.configure(latency=0.2)
    process = start_sending(usage, double, api)
    deadline = time.monotonic() + 60
    while double.stats().get(stat, 0) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    double.configure(latency=0)


@pytest.mark.parametrize(
    ("api", "stat"), [("stream", "requests_meter_event_stream"), ("v1", "done_meter_event_create")]
)
def test_a_run_killed_mid_partition_then_rerun_sends_each_event_once(double, tmp_path, customers, api, stat):
    usage = tmp_path / "usage.duckdb"
    make_usage(usage, customers, days=30)  # 600 events: 6 stream requests, 4 in flight, 0.2 s each
    kill_while_sending(usage, double, api, stat)
    left = ledger_counts(usage)
    assert left["attempted"] > left["accepted"], "nothing was in doubt when the run died"

    rerun = run_usage_sync(usage, double.url, meter_spec(api, partitioned=False), "rerun").counts()
    assert rerun["resent_in_doubt"] > 0 and rerun["in_doubt"] == 0
    summary = double.meter_events()
    assert (summary["counted"], summary["counted_more_than_once"]) == (600, 0)
    assert ledger_counts(usage) == {"rows": 600, "attempted": 600, "accepted": 600}


def test_events_in_doubt_past_stripes_24_hours_are_reported_never_resent(double, tmp_path, customers):
    usage = tmp_path / "usage.duckdb"
    make_usage(usage, customers, days=30)
    kill_while_sending(usage, double, "stream", "requests_meter_event_stream")
    in_doubt = ledger_counts(usage)["attempted"] - ledger_counts(usage)["accepted"]
    before = double.meter_events()["counted"]

    double.advance_clock(DAY.total_seconds() + 3600)
    later = utc_now() + DAY + timedelta(hours=1)
    report = run_usage_sync(usage, double.url, meter_spec(partitioned=False), "a-day-later", now=lambda: later)
    counts = report.counts()
    assert counts["unconfirmed"] == in_doubt and counts["resent_in_doubt"] == 0
    assert {row["verdict"] for row in report.attention_sample} == {"unconfirmed"}
    summary = double.meter_events()
    # What was never attempted is sent; what may be in Stripe is not sent twice.
    assert summary["counted_more_than_once"] == 0
    assert summary["counted"] == before + counts["accepted"] <= 600


def test_a_changed_value_is_reported_and_corrected_when_the_sync_opts_in(double, usage, customers):
    run_usage_sync(usage, double.url, meter_spec(partitioned=False), "run-1")
    with duckdb.connect(str(usage)) as connection:
        connection.execute("update main.usage set calls = 5000 where customer_id = ?", [customers[0]])
    reported = run_usage_sync(usage, double.url, meter_spec(partitioned=False), "run-2").counts()
    assert (reported["changed_after_sent"], reported["corrected"], reported["accepted"]) == (5, 0, 0)

    corrected = run_usage_sync(usage, double.url, meter_spec(correct_changed=True, partitioned=False), "run-3")
    assert (corrected.counts()["corrected"], corrected.counts()["accepted"]) == (5, 5)
    summary = double.meter_events()
    assert summary["cancelled"] == 5
    assert summary["sums"]["api_calls"][customers[0]] == 5 * 5000
    quiet = run_usage_sync(usage, double.url, meter_spec(correct_changed=True, partitioned=False), "run-4").counts()
    assert (quiet["already_sent"], quiet["stripe_api_calls"]) == (100, 0)


def test_the_stream_takes_a_new_session_when_stripe_says_the_old_one_expired(double, customers):
    from census_stripe.stripe_client.meter_events import MeterEventStream
    from census_stripe.stripe_client.meter_types import Delivery, MeterEvent
    from census_stripe_tests.usage import API_KEY, UNLIMITED

    now = utc_now()
    events = [MeterEvent(f"evt-{i}", "api_calls", customers[i], "1", now) for i in range(2)]

    async def send_across_an_expiry() -> tuple[list[Delivery], int]:
        stream = MeterEventStream(API_KEY, double.url, UNLIMITED, ("stripe_customer_id", "value"))
        try:
            first = await stream.send(events[:1])
            double.advance_clock(20 * 60)  # Stripe's sessions last 15 minutes; ours still looks fresh
            second = await stream.send(events[1:])
            return [first.delivery, second.delivery], stream.sessions
        finally:
            await stream.close()

    deliveries, sessions = asyncio.run(send_across_an_expiry())
    assert deliveries == [Delivery.ACCEPTED, Delivery.ACCEPTED] and sessions == 2
    assert double.meter_events()["counted"] == 2


@pytest.mark.parametrize(
    ("api", "days", "faults"),
    [
        # 6 stream requests: a higher share of faults, so that each kind happens.
        ("stream", 30, {"meter_event_stream_rate": 4, "fail_before_rate": 0.3, "fail_after_rate": 0.3}),
        # A test-mode key's v1 meter events take the account's limit.
        ("v1", 5, {"account_rate": 50, "fail_before_rate": 0.15, "fail_after_rate": 0.15}),
    ],
)
def test_with_faults_and_rate_limits_every_event_is_counted_once(double, tmp_path, customers, api, days, faults):
    usage = tmp_path / "usage.duckdb"
    events = make_usage(usage, customers, days=days)
    # Writes fail before or after Stripe applied them (a lost answer), and the limits answer 429s;
    # the double's faults follow its fixed seed, so every run sees them.
    double.configure(**faults)
    counts = run_usage_sync(usage, double.url, meter_spec(api, partitioned=False), "faults").counts()
    assert (counts["accepted"], counts["refused"], counts["in_doubt"]) == (events, 0, 0)
    stats = double.stats()
    assert stats["failed_before"] > 0 and stats["lost_responses"] > 0 and stats["rate_limited"] > 0
    summary = double.meter_events()
    assert (summary["counted"], summary["counted_more_than_once"]) == (events, 0)


def test_a_dry_run_judges_every_row_and_sends_nothing(double, usage):
    report = run_usage_sync(usage, double.url, meter_spec(partitioned=False), "dry", MeterRunOptions(dry_run=True))
    # One call: the meters, listed to check them.
    assert (report.counts()["planned_events"], report.counts()["stripe_api_calls"]) == (100, 1)
    assert double.meter_events()["counted"] == 0
    assert ledger_counts(usage)["rows"] == 0


def test_stripe_unreachable_stops_the_run_without_the_key_and_loses_nothing(usage, double, unreachable_url):
    from census_stripe.stripe_client.errors import StripeUnreachableError

    with pytest.raises(StripeUnreachableError) as stopped:
        run_usage_sync(usage, unreachable_url, meter_spec("v1", partitioned=False), "unreachable", api_key=SECRET)
    assert SECRET not in str(stopped.value)
    # Nothing reached Stripe, so nothing is sent twice: the next run, Stripe back, sends every event once.
    again = run_usage_sync(usage, double.url, meter_spec("v1", partitioned=False), "back", api_key=SECRET).counts()
    assert again["accepted"] == 100
    assert double.meter_events()["counted_more_than_once"] == 0


SECRET = "sk_test_UNREACHABLEsecret0123456789"
