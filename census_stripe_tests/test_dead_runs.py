"""A run killed mid-sync never wedges its sync: the next run frees the dead run's pool slot and converges.

Runs are really killed (SIGKILL of a `dagster asset materialize` process group, of the demo runner's),
on a Dagster instance configured as the demo's, writing to the Stripe test double.
"""

import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import dagster as dg
import duckdb
import psutil
import pytest

from census_stripe.demo.__main__ import INSTANCE_CONFIG, write_instance_config
from census_stripe.orchestration.dead_runs import (
    WORKER_TAG,
    RunWorker,
    free_slots_of_dead_runs,
    why_run_cannot_free_its_slots,
)
from census_stripe.settings import PROJECT_ROOT
from census_stripe.warehouse.state import utc_now
from census_stripe_tests.conftest import MATERIALIZE_DEMO_SYNC, Processes, dagster_process_env
from census_stripe_tests.meters import create_meter
from census_stripe_tests.synthetic import make_model
from census_stripe_tests.test_delivery import assert_stripe_equals_model, customers_for

POOL = "stripe_sync_customers"
STEP = "stripe__customers"
BLOCKED = f"Step blocked by limit for pool {POOL}"


def start_sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])


def worker_of(process: subprocess.Popen) -> RunWorker:
    return RunWorker(RunWorker.current().host, process.pid, round(psutil.Process(process.pid).create_time(), 2))


def worker_of_dead_process() -> RunWorker:
    sleeper = start_sleeper()
    worker = worker_of(sleeper)
    sleeper.kill()
    sleeper.wait()
    return worker


# --- which processes are gone --------------------------------------------------------------------


def test_a_live_worker_is_not_gone_and_a_killed_one_is():
    sleeper = start_sleeper()
    worker = worker_of(sleeper)
    assert not RunWorker.current().is_gone()
    assert not worker.is_gone()
    sleeper.kill()
    sleeper.wait()
    assert worker.is_gone()


def test_a_reused_pid_or_an_unreaped_process_counts_as_gone():
    sleeper = start_sleeper()
    worker = worker_of(sleeper)
    # The recorded process started a minute before the one that has its pid now.
    assert RunWorker(worker.host, worker.pid, worker.started_at - 60).is_gone()
    sleeper.kill()
    # Killed, not yet reaped by its parent (this test): a zombie.
    wait_until(lambda: psutil.Process(sleeper.pid).status() == psutil.STATUS_ZOMBIE, 10, "the zombie")
    assert worker.is_gone()
    sleeper.wait()


def test_a_worker_on_another_host_is_never_taken_for_gone():
    sleeper = start_sleeper()
    sleeper.kill()
    sleeper.wait()
    elsewhere = RunWorker("another-host.internal", sleeper.pid, 0.0)
    assert not elsewhere.is_gone()


def test_the_worker_tag_round_trips_and_bad_tags_read_as_unknown():
    worker = RunWorker.current()
    assert RunWorker.from_tag(worker.tag()) == worker
    assert RunWorker.from_tag(None) is None
    assert RunWorker.from_tag("pid 12") is None
    assert RunWorker.from_tag('{"pid": 12}') is None


# --- freeing the slots of dead runs, on a real Dagster instance -----------------------------------


@pytest.fixture
def instance():
    with dg.instance_for_test(overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
        yield instance


def add_run(instance, status=dg.DagsterRunStatus.STARTED, worker: RunWorker | None = None) -> dg.DagsterRun:
    tags = {WORKER_TAG: worker.tag()} if worker else {}
    run = dg.DagsterRun(job_name="sync_to_stripe", run_id=str(uuid.uuid4()), status=status, tags=tags)
    instance.add_run(run)
    return run


def claims(instance) -> list[str]:
    return [slot.run_id for slot in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots]


def hold_slot(instance, run: dg.DagsterRun) -> None:
    assert instance.event_log_storage.claim_concurrency_slot(POOL, run.run_id, STEP).is_claimed
    assert claims(instance) == [run.run_id]


def test_a_run_whose_process_is_alive_keeps_its_slot(instance):
    sleeper = start_sleeper()
    try:
        holder = add_run(instance, worker=worker_of(sleeper))
        hold_slot(instance, holder)
        waiting = add_run(instance, worker=RunWorker.current())
        assert free_slots_of_dead_runs(instance, POOL, waiting.run_id) == []
        assert claims(instance) == [holder.run_id]
        assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.STARTED
        assert not instance.event_log_storage.claim_concurrency_slot(POOL, waiting.run_id, STEP).is_claimed
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_whose_process_is_gone_is_failed_and_its_slot_freed(instance):
    sleeper = start_sleeper()
    holder = add_run(instance, worker=worker_of(sleeper))
    hold_slot(instance, holder)
    sleeper.kill()
    sleeper.wait()
    waiting = add_run(instance, worker=RunWorker.current())

    [line] = free_slots_of_dead_runs(instance, POOL, waiting.run_id)
    assert line.startswith(f"Run {holder.run_id}: process is gone (pid {sleeper.pid} on ")
    assert f"marked it failed and freed its slot in pool {POOL} so that run {waiting.run_id} can go ahead" in line
    assert claims(instance) == []
    assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.FAILURE
    [failure] = instance.all_logs(holder.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert failure.dagster_event.message == line
    assert instance.event_log_storage.claim_concurrency_slot(POOL, waiting.run_id, STEP).is_claimed
    # The waiting run's own slot is never taken from it.
    assert free_slots_of_dead_runs(instance, POOL, waiting.run_id) == []
    assert claims(instance) == [waiting.run_id]


def test_a_run_that_ended_holding_its_slot_has_it_freed_and_keeps_its_status(instance):
    holder = add_run(instance, status=dg.DagsterRunStatus.FAILURE)
    hold_slot(instance, holder)
    waiting = add_run(instance, worker=RunWorker.current())
    [line] = free_slots_of_dead_runs(instance, POOL, waiting.run_id)
    assert line.startswith(f"Run {holder.run_id}: ended (FAILURE) without freeing its slot; freed its slot")
    assert claims(instance) == []
    assert instance.all_logs(holder.run_id, of_type=dg.DagsterEventType.RUN_FAILURE) == []


def test_a_dead_run_queued_for_the_slot_leaves_the_queue(instance):
    sleeper = start_sleeper()
    try:
        holder = add_run(instance, worker=worker_of(sleeper))
        hold_slot(instance, holder)
        queued = add_run(instance, worker=worker_of_dead_process())
        assert not instance.event_log_storage.claim_concurrency_slot(POOL, queued.run_id, STEP).is_claimed
        waiting = add_run(instance, worker=RunWorker.current())
        assert len(free_slots_of_dead_runs(instance, POOL, waiting.run_id)) == 1
        pending = instance.event_log_storage.get_concurrency_info(POOL).pending_steps
        assert queued.run_id not in {step.run_id for step in pending}
        assert claims(instance) == [holder.run_id]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_without_a_recorded_worker_is_left_alone(instance):
    holder = add_run(instance)
    assert why_run_cannot_free_its_slots(holder) is None
    hold_slot(instance, holder)
    assert free_slots_of_dead_runs(instance, POOL, add_run(instance).run_id) == []
    assert claims(instance) == [holder.run_id]


# --- the demo's dagster.yaml -------------------------------------------------------------------------


def test_an_older_demo_instance_config_gets_run_monitoring_and_keeps_its_settings(tmp_path):
    path = tmp_path / "dagster.yaml"
    path.write_text("concurrency:\n  pools:\n    default_limit: 3\n")
    write_instance_config(path)
    write_instance_config(path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0
        assert instance.event_log_storage.get_pool_config().default_pool_limit == 3

    fresh = tmp_path / "fresh.yaml"
    write_instance_config(fresh)
    assert fresh.read_text() == INSTANCE_CONFIG


# --- real runs, really killed -----------------------------------------------------------------------


@pytest.fixture
def dagster_home(tmp_path) -> Path:
    """A Dagster instance configured as the demo's (pools limited to 1, run monitoring)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_CONFIG)
    return home


def start_materialize(
    processes: Processes, home: Path, warehouse: Path, double, log: Path, command: list[str] = MATERIALIZE_DEMO_SYNC
) -> subprocess.Popen:
    """A `dagster asset materialize` in a process group of its own, so that killing the group kills
    the run as a whole; the test owns it, so no run outlives its test."""
    with open(log, "w") as output:
        return processes.start(
            command,
            env=dagster_process_env(home, warehouse, double.url, api_key="sk_test_deadruns"),
            cwd=PROJECT_ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def wait_until(condition, timeout: float, what: str) -> None:
    """Polls `condition`; `timeout` is a deadline for a broken test, far beyond a busy machine's pace."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def finish(process: subprocess.Popen, log: Path, timeout: float = 900) -> None:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not finish within {timeout} s:\n{log.read_text()[-3000:]}")
    assert process.returncode == 0, log.read_text()[-3000:]


def runs_oldest_first(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(reversed(instance.get_runs()))


def engine_messages(home: Path, run_id: str) -> list[str]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        return [entry.dagster_event.message for entry in events]


def assert_killed_run_was_cleared(home: Path) -> None:
    """The first run was killed and the next run of its job cleared it (the demo's usage billing
    runs after, as another job)."""
    runs = runs_oldest_first(home)
    killed, rerun = [run for run in runs if run.job_name == runs[0].job_name]
    assert killed.status == dg.DagsterRunStatus.FAILURE
    assert rerun.status == dg.DagsterRunStatus.SUCCESS
    cleared = f"Run {killed.run_id}: process is gone (pid {RunWorker.from_tag(killed.tags[WORKER_TAG]).pid} on "
    assert any(message.startswith(cleared) for message in engine_messages(home, rerun.run_id))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [failure] = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        assert failure.dagster_event.message.startswith(cleared)
        assert instance.event_log_storage.get_concurrency_info(POOL).claimed_slots == []


def kill_while_paused(processes: Processes, run: subprocess.Popen, double) -> int:
    """SIGKILL of the run's process group once the double holds its next request (a kill point set
    by `double.pause_after`); then the requests it held are served, as Stripe serves a request whose
    client died after sending it. Returns how many were held."""
    double.wait_until_paused(client=run)
    processes.kill(run)
    held = double.pause_state()["waiting"]
    double.resume()
    return held


def test_a_run_killed_mid_sync_does_not_wedge_the_next_one(double, dagster_home, tmp_path, processes):
    warehouse = tmp_path / "warehouse.duckdb"
    make_model(warehouse, 300)
    double.pause_after(20, "create")
    killed = start_materialize(processes, dagster_home, warehouse, double, tmp_path / "killed.log")
    held = kill_while_paused(processes, killed, double)
    assert double.stats()["customers"] == 20 + held < 300

    rerun = start_materialize(processes, dagster_home, warehouse, double, tmp_path / "rerun.log")
    finish(rerun, tmp_path / "rerun.log")
    assert_killed_run_was_cleared(dagster_home)
    assert_stripe_equals_model(double, warehouse)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def test_a_run_waiting_for_the_pool_sleeps_and_goes_ahead_once_the_holder_is_killed(
    double, dagster_home, tmp_path, processes
):
    warehouse = tmp_path / "warehouse.duckdb"
    make_model(warehouse, 300)
    # The holder's first Stripe call (which account is this?) is held: the holder keeps the pool's slot
    # while the second run starts and waits, however long a busy machine takes (each held request
    # times out after the SDK's 80 s and is retried, so minutes pass before the holder gives up).
    double.pause_after(0, "account")
    holder = start_materialize(processes, dagster_home, warehouse, double, tmp_path / "holder.log")
    double.wait_until_paused(client=holder)
    waiting = start_materialize(processes, dagster_home, warehouse, double, tmp_path / "waiting.log")

    def waiting_is_blocked() -> bool:
        runs = runs_oldest_first(dagster_home)
        return len(runs) == 2 and BLOCKED in engine_messages(dagster_home, runs[1].run_id)

    wait_until(waiting_is_blocked, 600, "the second run to wait for the pool's slot")
    before, started = cpu_seconds(waiting.pid), time.monotonic()
    time.sleep(4)  # the window CPU use is measured over, not a wait for anything
    busy = (cpu_seconds(waiting.pid) - before) / (time.monotonic() - started)
    assert busy < 0.1, f"the waiting run used {busy:.0%} of a CPU"
    # The holder is alive, still held at its first call: the waiting run left it alone.
    assert holder.poll() is None and double.pause_state()["waiting"] >= 1
    assert [run.status for run in runs_oldest_first(dagster_home)] == [dg.DagsterRunStatus.STARTED] * 2

    processes.kill(holder)
    double.resume(drop_waiting=True)
    finish(waiting, tmp_path / "waiting.log")
    assert_killed_run_was_cleared(dagster_home)
    assert_stripe_equals_model(double, warehouse)


def test_the_demo_killed_mid_sync_runs_again(double, tmp_path, processes):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRIPE_", "DAGSTER_", "CENSUS_STRIPE_"))}
    env |= {"CENSUS_STRIPE_DATA_DIR": str(tmp_path), "STRIPE_API_BASE": double.url, "STRIPE_API_KEY": "sk_test_demo"}
    command = [sys.executable, "-m", "census_stripe.demo", "run"]
    create_meter(double.url, api_key="sk_test_demo")  # with your own key, your Stripe's meters are yours to create
    double.pause_after(10, "create")
    with open(tmp_path / "first.log", "w") as output:
        killed = processes.start(command, env=env, cwd=PROJECT_ROOT, stdout=output, stderr=subprocess.STDOUT)
    held = kill_while_paused(processes, killed, double)
    assert double.stats()["customers"] == 10 + held < 294

    rerun = processes.start(
        command, env=env, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output, _ = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, output + (tmp_path / "demo.log").read_text()[-3000:]
    assert_killed_run_was_cleared(tmp_path / "dagster_home")
    emails = [customer.values["email"] for customer in customers_for(double, key="sk_test_reader").iter_all()]
    assert len(emails) == len(set(emails)) == 294


# --- usage billing, really killed -------------------------------------------------------------------

USAGE_DAYS = 20


def bill_usage(processes: Processes, home: Path, warehouse: Path, double, log: Path) -> subprocess.Popen:
    """`dagster asset materialize` of the demo's api_usage sync over the last USAGE_DAYS days (UTC)."""
    today = utc_now().date()
    days = f"{today - timedelta(days=USAGE_DAYS)}...{today - timedelta(days=1)}"
    command = [*MATERIALIZE_DEMO_SYNC[:-1], "stripe/api_usage", "--partition-range", days]
    return start_materialize(processes, home, warehouse, double, log, command)


def test_usage_billing_killed_mid_partition_then_rerun_bills_each_event_once(double, dagster_home, tmp_path, processes):
    warehouse = tmp_path / "warehouse.duckdb"
    make_model(warehouse, 300)
    customers = start_materialize(processes, dagster_home, warehouse, double, tmp_path / "customers.log")
    finish(customers, tmp_path / "customers.log")
    # The days before today as the partitions name them: UTC days, whatever this machine's time zone.
    today = utc_now().date()
    with duckdb.connect(str(warehouse)) as connection:
        connection.execute(
            f"""create table main.stripe_api_usage as
                select email, cast(date '{today}' - cast(d as integer) as date) as usage_date, d * 10 as api_calls
                from main.stripe_customers, range(1, {USAGE_DAYS + 1}) as t(d)"""
        )
    events = 300 * USAGE_DAYS
    create_meter(double.url)
    # Killed with 10 stream requests of 100 events answered and the next ones sent, held by the double.
    double.pause_after(10, "meter_event_stream")
    killed = bill_usage(processes, dagster_home, warehouse, double, tmp_path / "killed.log")
    held = kill_while_paused(processes, killed, double)
    assert held >= 1 and 1000 < double.meter_events()["counted"] < events

    rerun = bill_usage(processes, dagster_home, warehouse, double, tmp_path / "rerun.log")
    finish(rerun, tmp_path / "rerun.log")
    summary = double.meter_events()
    assert (summary["counted"], summary["counted_more_than_once"]) == (events, 0)
    with duckdb.connect(str(warehouse)) as connection:
        assert connection.execute(
            "select count(*), count(accepted_at) from census_stripe.meter_event_ledger"
        ).fetchone() == (events, events)
