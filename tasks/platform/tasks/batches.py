"""The worker side of multi-job messages (tasks.platform.engine.publish packs them): one message, many jobs.

The worker claims a message's jobs in one transaction, runs them one after another, records a
failure as it happens, and writes successes together (at the end, or every ``FLUSH_SECONDS``).
Nothing is lost when the worker dies: the message is acknowledged only after its successes are
written (late ack), so a killed worker's batch is delivered again; the engine then closes the lost
attempts and publishes every unfinished job again on its own, so a poison job dies alone.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError

from tasks.platform import logs, tracing
from tasks.platform.engine import Attempt, backoff_delay, engine
from tasks.platform.engine.publish import BATCH_TASK
from tasks.platform.models import Job
from tasks.platform.registry import LEDGER_OUTAGE_MAX_RETRIES, LEDGER_TASKS, LedgerTask

logger = logging.getLogger(__name__)

#: successes wait at most this long in a running batch before they are written
FLUSH_SECONDS = 1.0


class BatchTask(Task):
    #: as LedgerTask's: each job's claim asks the ledger; a revoked batch id drops nothing
    Request = "tasks.platform.worker:LedgerRequest"

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        # The hard limit killed the child mid-batch (this runs in the worker's main process): its
        # unwritten successes are unknown, so every job it still had started runs again alone.
        if isinstance(exc, TimeLimitExceeded):
            engine().abandon_batch(
                job_ids=[job_id for job_id, _ in kwargs.get("jobs", [])],
                reason="time limit exceeded (hard limit) while its batch ran: the worker was replaced",
                ran=True,
            )


@shared_task(name=BATCH_TASK, bind=True, base=BatchTask, ignore_result=True)
def run_batch(self: BatchTask, task: str, jobs: list[list]) -> dict[str, int]:
    """Run the jobs of one message one after another."""
    job_task = LEDGER_TASKS[task]
    request = self.request
    try:
        attempts = engine().claim_batch(
            job_ids=[job_id for job_id, _ in jobs],
            task_name=task,
            worker=request.hostname or "",
            queue=(request.delivery_info or {}).get("routing_key", ""),
            max_attempts=job_task.max_attempts or settings.TASK_MAX_ATTEMPTS,
            max_worker_losses=settings.TASK_MAX_WORKER_LOSSES,
        )
        failed = _run_claimed(job_task, jobs, attempts, request)
    except DatabaseError as exc:
        # The broker holds the batch until the database is back; delivered again, its jobs the
        # ledger has started then run again one by one.
        delay = backoff_delay(request.retries + 1, base=1, ceiling=60)
        raise self.retry(exc=exc, countdown=delay.total_seconds(), max_retries=LEDGER_OUTAGE_MAX_RETRIES) from exc
    return {"jobs": len(jobs), "ran": len(attempts), "failed": failed}


def _run_claimed(job_task: LedgerTask, jobs: list[list], attempts: dict[str, Attempt], request: Any) -> int:
    """Run each claimed job as its own task request (``report_progress`` and logs name the job);
    returns how many failed."""
    done: dict[str, Any] = {}
    flushed_at = time.monotonic()
    failed = 0
    for index, (job_id, payload) in enumerate(jobs):
        attempt = attempts.get(job_id)
        if attempt is None:
            continue  # cancelled or finished before the batch reached it
        # Private API (Celery): push_request/pop_request are the only way to run a task's body under a request.
        job_task.push_request(
            id=job_id, hostname=request.hostname, delivery_info=request.delivery_info, attempt=attempt.number
        )
        logs.bind(job_id, job_task.name, attempt.number)
        queue = (request.delivery_info or {}).get("routing_key", "")
        try:
            with tracing.job_span(job_id=job_id, task=job_task.name, attempt=attempt.number, queue=queue):
                done[job_id] = job_task.run(**payload)
        except SoftTimeLimitExceeded as exc:
            _record_failure(job_task, job_id, exc, attempt)
            engine().succeed_many(results=done, attempts=attempts)
            engine().abandon_batch(
                job_ids=[later for later, _ in jobs[index + 1 :] if later in attempts], reason="", ran=False
            )
            raise
        except Exception as exc:  # noqa: BLE001 - any error of a job is its own outcome, not the batch's
            failed += 1
            _record_failure(job_task, job_id, exc, attempt)
        finally:
            job_task.pop_request()
            logs.bind(request.id, BATCH_TASK)
        if time.monotonic() - flushed_at >= FLUSH_SECONDS:
            engine().succeed_many(results=done, attempts=attempts)
            done, flushed_at = {}, time.monotonic()
    engine().succeed_many(results=done, attempts=attempts)
    return failed


def _record_failure(job_task: LedgerTask, job_id: str, exc: BaseException, attempt: Attempt) -> None:
    state, error, retry_at = job_task.failure_outcome(exc, attempt)
    if state != Job.State.RETRYING:
        logger.warning("job %s (%s) ended %s: %s", job_id, job_task.name, state, error)
    engine().fail(
        job_id=job_id,
        number=attempt.number,
        error=error,
        traceback=traceback.format_exc(),
        state=state,
        retry_at=retry_at,
    )
