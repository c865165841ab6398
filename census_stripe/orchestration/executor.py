"""Dagster's in-process executor, made safe for the syncs' one-run-at-a-time pools.

Two things differ from `dg.in_process_executor`, both about a step waiting for its pool's slot:
- Before it claims a slot, and every `DEAD_RUN_CHECK_SECONDS` while it waits, it frees the slots
  of runs that can never free them themselves (see dead_runs.py). Each run records its process
  for this when it starts.
- It sleeps while it waits. Dagster 1.13's executor loop asks its concurrency context how long to
  wait before the next claim attempt, and that answer is never above zero, so a blocked step kept
  a CPU busy for as long as it waited.

This builds on Dagster internals (the executor and the concurrency context), so the Dagster
version is pinned to 1.13.x in pyproject.toml; test_dead_runs.py covers both behaviours.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import dagster as dg
from dagster._core.execution.api import ExecuteRunWithPlanIterable
from dagster._core.execution.context.system import PlanExecutionContext, PlanOrchestrationContext
from dagster._core.execution.context_creation_job import PlanExecutionContextManager
from dagster._core.execution.plan.execute_plan import inner_plan_execution_iterator
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.executor.in_process import InProcessExecutor

from census_stripe.orchestration.dead_runs import WORKER_TAG, RunWorker, free_slots_of_dead_runs

DEAD_RUN_CHECK_SECONDS = 5.0
# The longest nap between claim attempts: Dagster acts on a termination request only between them.
MAX_WAIT_SECONDS = 1.0


class PoolSlotWaiter(InstanceConcurrencyContext):
    """Claims pool slots for one run: clears dead holders first, and sleeps between attempts."""

    def __init__(self, instance: dg.DagsterInstance, dagster_run: dg.DagsterRun):
        super().__init__(instance, dagster_run)
        self._run = dagster_run
        self._next_dead_run_check: dict[str, float] = {}

    def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
        storage = self._instance.event_log_storage
        now = time.monotonic()
        if storage.supports_global_concurrency_limits and now >= self._next_dead_run_check.get(concurrency_key, 0.0):
            self._next_dead_run_check[concurrency_key] = now + DEAD_RUN_CHECK_SECONDS
            cleared = free_slots_of_dead_runs(self._instance, concurrency_key, self._run.run_id)
            for line in cleared:
                self._instance.report_engine_event(line, self._run, step_key=step_key)
            if cleared:
                # Try for the freed slot now rather than at Dagster's next scheduled attempt.
                self._pending_timeouts.pop(step_key, None)
        return super().claim(concurrency_key, step_key, step_priority)

    def interval_to_next_pending_claim_check(self) -> float:
        # Dagster's own returns min(0, ...), which is never positive: its loop never sleeps.
        if not self.has_pending_claims() or not self._pending_timeouts:
            return 0.0
        next_check = min(self._pending_timeouts.values()) - time.time()
        return min(max(next_check, 0.0), MAX_WAIT_SECONDS)


def _execution_iterator(job_context: PlanExecutionContext, execution_plan: ExecutionPlan) -> Iterator[dg.DagsterEvent]:
    with PoolSlotWaiter(job_context.instance, job_context.dagster_run) as waiter:
        yield from inner_plan_execution_iterator(job_context, execution_plan, waiter)


class SyncRunExecutor(InProcessExecutor):
    """Runs every step in the run's process, as InProcessExecutor does, with PoolSlotWaiter claiming slots."""

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[dg.DagsterEvent]:
        # Before any slot is claimed, so that a run killed while holding one can be told dead.
        plan_context.instance.add_run_tags(plan_context.run_id, {WORKER_TAG: RunWorker.current().tag()})
        yield from ExecuteRunWithPlanIterable(
            execution_plan=plan_context.execution_plan,
            iterator=_execution_iterator,
            execution_context_manager=PlanExecutionContextManager(
                job=plan_context.job,
                retry_mode=plan_context.retry_mode,
                execution_plan=plan_context.execution_plan,
                run_config=plan_context.run_config,
                dagster_run=plan_context.dagster_run,
                instance=plan_context.instance,
                raise_on_error=plan_context.raise_on_error,
                output_capture=plan_context.output_capture,
                step_dependency_config=self.step_dependency_config,
            ),
        )


@dg.executor(name="in_process", config_schema=dg.in_process_executor.config_schema.as_field())
def sync_executor(init_context: dg.InitExecutorContext) -> SyncRunExecutor:
    """Executes all steps in the run's process; clears dead runs' pool slots and sleeps while waiting for one."""
    # Dagster's in-process executor reads the configuration (retries, step dependencies).
    read_configuration = dg.in_process_executor.executor_creation_fn
    assert read_configuration is not None, "Dagster's own executor is defined by its function"
    configured = read_configuration(init_context)
    return SyncRunExecutor(retries=configured.retries, step_dependency_config=configured.step_dependency_config)
