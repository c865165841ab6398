"""Runs that died holding a sync's pool slot, found and cleared so the next run of the sync can start.

A run killed outright (SIGKILL, a lost machine) cannot release its concurrency slot or record its
end: Dagster keeps it STARTED and its slot claimed, and every later run of that sync waits for the
slot forever. Dagster's daemon frees the slots of runs that *ended* (run monitoring's
`free_slots_after_run_end_seconds`), but nothing notices a run whose process is gone when no code
server watched it, as with `dagster job execute` or `dagster asset materialize` from a shell.

So each run records its process (`WORKER_TAG`), and a run that needs a pool first clears the
holders that can never give their slot back: runs that ended, and runs whose process no longer
exists on this machine (those are marked failed, saying why). A run whose process is alive, or
runs on another machine, is never touched.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass

import dagster as dg
import psutil

WORKER_TAG = "census_stripe/run_worker"
# psutil derives a process's start time from the boot time, which it may re-read with some jitter.
START_TIME_TOLERANCE_SECONDS = 1.0


@dataclass(frozen=True)
class RunWorker:
    """The process executing a run: its host, pid and start time (so that a reused pid is not taken for it)."""

    host: str
    pid: int
    started_at: float

    @classmethod
    def current(cls) -> RunWorker:
        process = psutil.Process()
        return cls(socket.gethostname(), process.pid, round(process.create_time(), 2))

    def tag(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_tag(cls, value: str | None) -> RunWorker | None:
        """The worker a run recorded; None for runs that recorded none (other executors, older runs)."""
        if not value:
            return None
        try:
            fields = json.loads(value)
            return cls(str(fields["host"]), int(fields["pid"]), float(fields["started_at"]))
        except (ValueError, KeyError, TypeError):
            return None

    def is_gone(self) -> bool:
        """True only when certain: on this host, no live process has this pid and start time."""
        if self.host != socket.gethostname():
            return False
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.started_at) > START_TIME_TOLERANCE_SECONDS:
                return True
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
        except psutil.AccessDenied:
            return False


def why_run_cannot_free_its_slots(run: dg.DagsterRun | None) -> str | None:
    """Why a slot holder will never give its slot back, or None while it still may."""
    if run is None:
        return "no longer exists"
    if run.is_finished:
        return f"ended ({run.status.value}) without freeing its slot"
    worker = RunWorker.from_tag(run.tags.get(WORKER_TAG))
    if worker is not None and worker.is_gone():
        return f"process is gone (pid {worker.pid} on {worker.host})"
    return None


def free_slots_of_dead_runs(instance: dg.DagsterInstance, pool: str, waiting_run_id: str) -> list[str]:
    """Frees the slots of `pool` held or queued for by runs that will never free them.

    A holder that is still in progress (its process died) is marked failed first, with the reason in
    its event log. Returns one line per run cleared, for the waiting run's log.
    """
    info = instance.event_log_storage.get_concurrency_info(pool)
    holders = {slot.run_id for slot in info.claimed_slots} | {step.run_id for step in info.pending_steps}
    cleared = []
    for run_id in sorted(holders - {waiting_run_id}):
        run = instance.get_run_by_id(run_id)
        reason = why_run_cannot_free_its_slots(run)
        if reason is None:
            continue
        running = run if run is not None and not run.is_finished else None
        still_running = running is not None
        line = (
            f"Run {run_id}: {reason}; {'marked it failed and ' if still_running else ''}freed its slot "
            f"in pool {pool} so that run {waiting_run_id} can go ahead."
        )
        if running is not None:
            instance.report_run_failed(running, line)
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        cleared.append(line)
    return cleared
