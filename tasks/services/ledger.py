"""Ledger writes made by workers as a job runs; each also goes out as a live event."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from tasks.models import Job, JobAttempt
from tasks.models.jobs import FINISHED_STATES
from tasks.services import ledger_postgres
from tasks.services.events import job_event_publish
from tasks.services.workflows import with_next_steps, workflow_jobs_succeeded, workflow_step_stopped


@dataclass(frozen=True)
class Attempt:
    """A run the worker may go ahead with: its number, and how much of the budget is used."""

    number: int
    used: int
    allowed: int
    #: the group callback the job's success counts towards, if it is a group member
    then_id: object = None
    #: whether workflow steps wait for this job (else its success need not look for them)
    has_next: bool = False

    @classmethod
    def started(cls, job: Any, *, max_attempts: int) -> Attempt:
        """The attempt a job (a row or a model) was just started for; ``max_attempts``: the task's."""
        return cls(
            number=job.attempts,
            used=job.attempts - job.attempts_before_retry,
            allowed=job.max_attempts or max_attempts,
            then_id=job.then_id,
            has_next=job.has_next,
        )

    @property
    def last(self) -> bool:
        return self.used >= self.allowed


T = TypeVar("T")

#: longest a worker waits for the row of a message sent while it was being written
ROW_IN_FLIGHT_GRACE = 5.0


def backoff_delay(attempt: int, *, base: float, ceiling: float) -> timedelta:
    """Exponential backoff with a ceiling and jitter (half to all of the step), so retries spread out."""
    step = min(ceiling, base * 2 ** max(attempt - 1, 0))
    return timedelta(seconds=random.uniform(step / 2, step))  # noqa: S311 - jitter, not security


def job_begin_attempt(
    *,
    job_id: str,
    task_name: str,
    queue: str,
    worker: str,
    payload: dict,
    origin: str,
    max_attempts: int,
    max_worker_losses: int,
    row_in_flight: bool = False,
) -> Attempt | None:
    """Check the ledger before running: None means do not run (cancelled, already finished, or
    dead now because its workers kept dying); otherwise the job is started and the attempt recorded.
    ``row_in_flight``: the message was sent while its row was being written (see _job_row_awaited)."""
    now = timezone.now()
    if ledger_postgres.applies():
        started = ledger_postgres.begin_attempt(job_id=job_id, queue=queue, worker=worker, now=now)
        if started is not None:
            job_event_publish(job_id=job_id, kind="state", state=Job.State.STARTED, worker=worker)
            return Attempt.started(started, max_attempts=max_attempts)
    with transaction.atomic():
        job = with_next_steps(Job.objects.select_for_update().filter(pk=job_id)).first()
        if job is None:
            job = _job_row_awaited(job_id) if row_in_flight else None
        if job is None:
            job = _job_row_from_message(
                Job(id=job_id, task_name=task_name, queue=queue, payload=payload, origin=origin, queued_at=now),
                row_in_flight=row_in_flight,
            )
        if job.state in FINISHED_STATES:
            return None
        if job.state == Job.State.STARTED and jobs_close_lost_attempts([job], now=now, limit=max_worker_losses):
            return None
        job.attempts += 1
        job.state, job.started_at, job.worker, job.queue = Job.State.STARTED, now, worker, queue or job.queue
        job.save(update_fields=["attempts", "state", "started_at", "worker", "queue"])
        JobAttempt.objects.create(job=job, number=job.attempts, worker=worker, started_at=now)
    job_event_publish(job_id=job_id, kind="state", state=Job.State.STARTED, worker=worker)
    return Attempt.started(job, max_attempts=max_attempts)


def _job_row_awaited(job_id: str) -> Job | None:
    """The row of a job whose message came before its enqueue's commit was seen (the two are
    concurrent, tasks.services.job_rows.job_row_insert_while), once it is there; None after
    ROW_IN_FLIGHT_GRACE without it."""
    return rows_awaited(lambda: with_next_steps(Job.objects.select_for_update().filter(pk=job_id)).first())


def rows_awaited(read: Callable[[], T]) -> T:
    """``read()`` again after 1 ms, then after twice as long each time, until it finds something
    or ROW_IN_FLIGHT_GRACE has passed; its last result. For rows whose message came before their
    enqueue's commit was seen: a few milliseconds late at most, unless that commit failed."""
    waited, pause = 0.0, 0.001
    found = read()
    while not found and waited < ROW_IN_FLIGHT_GRACE:
        time.sleep(pause)
        waited, pause = waited + pause, min(pause * 2, 0.5)
        found = read()
    return found


def _job_row_from_message(job: Job, *, row_in_flight: bool) -> Job:
    """A row for a message that came without one: a message that did not come through enqueue
    (beat, another producer) gets its row here, so the ledger knows every job that ran. That of
    an enqueue whose row never came gets a cancelled one (job_rows_tombstoned). Inserted unless a
    concurrent insert of the same id wins (waited for): the row that is there then is returned."""
    if row_in_flight:
        job_rows_tombstoned([job])
    else:
        Job.objects.bulk_create([job], ignore_conflicts=True)
    return with_next_steps(Job.objects.select_for_update().filter(pk=job.pk)).get()


def job_rows_tombstoned(jobs: list[Job]) -> None:
    """Cancelled rows for jobs (built from their messages) whose enqueue's rows never came: such a
    job must not run, for its caller was told the enqueue failed. An insert still under way is
    waited for and wins; one that is only late then fails, so its caller is told it failed too."""
    now = timezone.now()
    for job in jobs:
        job.state, job.queued_at, job.finished_at = Job.State.CANCELLED, None, now
        job.error = "its enqueue did not complete: the message came, its ledger row never did"
    Job.objects.bulk_create(jobs, ignore_conflicts=True)


def jobs_close_lost_attempts(jobs: list[Job], *, now: datetime, limit: int) -> list[Job]:
    """Jobs delivered again while the ledger has them started lost their worker (killed, OOM,
    crash): close their running attempts as lost. Those lost ``limit`` times are now dead (a
    poison job); they are returned."""
    ids = [job.pk for job in jobs]
    JobAttempt.objects.filter(job_id__in=ids, outcome=JobAttempt.Outcome.RUNNING).update(
        outcome=JobAttempt.Outcome.LOST, finished_at=now, error="the worker was lost during the run"
    )
    losses = Counter(
        JobAttempt.objects.filter(
            job_id__in=ids, outcome=JobAttempt.Outcome.LOST, number__gt=F("job__attempts_before_retry")
        ).values_list("job_id", flat=True)
    )
    dead = [job for job in jobs if losses[job.pk] >= limit]
    for job in dead:
        reason = f"dead: its worker was lost {losses[job.pk]} times while running it (a poison job?)"
        _finish(job, Job.State.DEAD, error=reason, at=now)
    return dead


def job_report_progress(*, job_id: str, percent: int, message: str = "") -> None:
    percent = max(0, min(100, int(percent)))
    message = message[:200]
    Job.objects.filter(pk=job_id).update(progress=percent, progress_message=message)
    job_event_publish(job_id=job_id, kind="progress", progress=percent, message=message)


def job_attempt_succeeded(*, job_id: str, attempt: Attempt, result: Any) -> None:
    now = timezone.now()
    if not (attempt.has_next or attempt.then_id) and ledger_postgres.applies():
        ledger_postgres.attempt_succeeded(job_id=job_id, number=attempt.number, result=result, now=now)
        job_event_publish(job_id=job_id, kind="state", state=Job.State.SUCCEEDED, result=result)
        return
    with transaction.atomic():
        _close_attempt(job_id, attempt.number, JobAttempt.Outcome.SUCCEEDED, at=now)
        # Only a started job: a job cancelled while it ran stays cancelled.
        updated = Job.objects.filter(pk=job_id, state=Job.State.STARTED).update(
            state=Job.State.SUCCEEDED, result=result, progress=100, error="", traceback="", finished_at=now
        )
        if updated and (attempt.has_next or attempt.then_id):
            workflow_jobs_succeeded(
                job_ids=[job_id] if attempt.has_next else [],
                callbacks=Counter([attempt.then_id]) if attempt.then_id else None,
            )
    job_event_publish(job_id=job_id, kind="state", state=Job.State.SUCCEEDED, result=result)


def job_attempt_failed(
    *, job_id: str, number: int | None, error: str, traceback: str, state: str, retry_at: datetime | None = None
) -> None:
    """Record a failed run: ``state`` is retrying (again at ``retry_at``), failed or dead."""
    now = timezone.now()
    with transaction.atomic():
        _close_attempt(job_id, number, JobAttempt.Outcome.FAILED, at=now, error=error)
        fields = {"state": state, "error": error, "traceback": traceback}
        if state == Job.State.RETRYING:
            fields.update(run_at=retry_at, publishing_since=None)
        else:
            fields["finished_at"] = now
        if Job.objects.filter(pk=job_id, state=Job.State.STARTED).update(**fields) and state != Job.State.RETRYING:
            workflow_step_stopped(job_id=job_id, state=state, error=error)
    job_event_publish(job_id=job_id, kind="state", state=state, error=error)


def _close_attempt(job_id: str, number: int | None, outcome: str, *, at: datetime, error: str = "") -> None:
    """Close attempt ``number``, or (None: its process is gone) whichever attempt is running."""
    attempts = JobAttempt.objects.filter(job_id=job_id)
    attempts = attempts.filter(number=number) if number is not None else attempts.filter(outcome="running")
    attempts.update(outcome=outcome, finished_at=at, error=error)


def _finish(job: Job, state: str, *, error: str, at: datetime) -> None:
    job.state, job.error, job.finished_at = state, error, at
    job.save(update_fields=["state", "error", "finished_at"])
    workflow_step_stopped(job_id=job.pk, state=state, error=error)
    job_event_publish(job_id=job.pk, kind="state", state=state, error=error)


def job_mark_undeliverable(*, job_id: str, reason: str) -> bool:
    """A worker refused the job's message (unknown task, content it may not accept): the job is
    dead with ``reason``, unless it already finished. True when the ledger row changed."""
    now = timezone.now()
    try:
        with transaction.atomic():
            changed = (
                Job.objects.filter(pk=job_id)
                .exclude(state__in=FINISHED_STATES)
                .update(state=Job.State.DEAD, error=reason, finished_at=now, publishing_since=None)
            )
            if changed:
                workflow_step_stopped(job_id=job_id, state=Job.State.DEAD, error=reason)
    except (ValueError, ValidationError):
        return False  # not a job id of ours (a message from another producer)
    if changed:
        job_event_publish(job_id=job_id, kind="state", state=Job.State.DEAD, error=reason)
    return bool(changed)
