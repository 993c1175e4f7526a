"""Retry, cancel and discard: one service behind every door (API, Django admin, command, Flower)."""

from __future__ import annotations

import logging
from functools import partial

from django.db import transaction
from django.utils import timezone

from tasks.models import Job, JobAction, JobAttempt
from tasks.models.jobs import FINISHED_STATES, RETRYABLE_STATES
from tasks.services.events import job_event_publish
from tasks.services.jobs import job_publish
from tasks.services.workflows import workflow_step_stopped, workflow_steps_rearm

logger = logging.getLogger(__name__)

#: the worker's remote control command that terminates a cancelled job's run (tasks.control)
TERMINATE_CANCELLED_JOB = "terminate_cancelled_job"
#: how long a cancel waits for the worker running the job to confirm the terminate (seconds)
TERMINATE_REPLY_TIMEOUT = 1.0


class ActionRefused(Exception):
    """The job is not in a state that allows the action (HTTP 409)."""


def job_retry(*, job_id, by=None, via: str) -> Job:
    """Run a failed, dead or cancelled job again: the same job and arguments as stored at
    enqueue, the same idempotency key, a fresh attempt budget; recorded as who retried and when."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state not in RETRYABLE_STATES:
            raise ActionRefused(f"a {job.state} job cannot be retried; only failed, dead or cancelled ones")
        JobAction.objects.create(job=job, kind=JobAction.Kind.RETRIED, by=by, via=via, from_state=job.state)
        # A workflow step whose earlier step has not succeeded waits for it again instead of running.
        waits = job.after_id is not None and job.after.state != Job.State.SUCCEEDED
        job.state = Job.State.WAITING if waits else Job.State.PENDING
        job.attempts_before_retry = job.attempts
        job.error = job.traceback = job.progress_message = ""
        job.result = job.finished_at = job.run_at = job.discarded_at = None
        job.progress, job.publishing_since = 0, None if waits else timezone.now()
        job.save()
        workflow_steps_rearm(job_id=job.pk)
        job.publish_error = ""
        if not waits:
            transaction.on_commit(partial(job_publish, job=job))
    return job


def job_cancel(*, job_id, by=None, via: str) -> Job:
    """Cancel a job that has not finished. The ledger is the record: a waiting job never runs (the
    worker checks the ledger before each run, whichever worker gets it and however late), and a
    retry undoes the cancel. A running one is terminated once the cancel is committed
    (``job_terminate_cancelled``); nothing goes into Celery's revoked-id memory."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state in FINISHED_STATES:
            raise ActionRefused(f"a {job.state} job cannot be cancelled")
        running = job.state == Job.State.STARTED
        _cancel_in_ledger(job, by=by, via=via, error=f"cancelled via {via}")
        if running:
            # After the commit, also of a caller's transaction (an order's cancel): the worker reads
            # the ledger before it terminates.
            transaction.on_commit(partial(job_terminate_cancelled, job_id=job.pk, worker=job.worker))
    job_event_publish(job_id=job.pk, kind="state", state=Job.State.CANCELLED, error=job.error)
    return job


def job_terminate_cancelled(*, job_id, worker: str = "") -> None:
    """Ask the worker running a cancelled job to terminate that run (tasks.control's command, which
    acts only while the ledger still says cancelled, so it never kills the run of a later retry).

    Sent to the worker the ledger names, and waited for (at most TERMINATE_REPLY_TIMEOUT s), so the
    run is gone when the cancel returns and a retry made right after cannot overlap it."""
    from project.celery import app

    arguments = {"job_id": str(job_id)}
    try:
        if worker:
            replies = app.control.broadcast(
                TERMINATE_CANCELLED_JOB,
                arguments=arguments,
                destination=[worker],
                reply=True,
                timeout=TERMINATE_REPLY_TIMEOUT,
                limit=1,
            )
            if not replies:
                logger.warning("job %s: worker %s did not answer the terminate of its cancelled run", job_id, worker)
        else:
            app.control.broadcast(TERMINATE_CANCELLED_JOB, arguments=arguments)
    except Exception:
        # The cancel stands in the ledger; an unterminated run ends unrecorded (its job stays cancelled).
        logger.exception("job %s: could not send the terminate of its cancelled run", job_id)


def job_cancel_terminated(*, job_id, via: str) -> bool:
    """Record a run terminated from outside the platform (Celery's own revoke with terminate, e.g.
    ``celery control revoke --terminate``) as a cancel, so the job does not stay started forever.
    Only a started job changes; True if it did."""
    with transaction.atomic():
        job = Job.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.state != Job.State.STARTED:
            return False
        _cancel_in_ledger(job, by=None, via=via, error=f"terminated via {via} (not the platform's cancel)")
    job_event_publish(job_id=job.pk, kind="state", state=Job.State.CANCELLED, error=job.error)
    logger.warning("job %s was terminated via %s: recorded as cancelled", job.pk, via)
    return True


def _cancel_in_ledger(job: Job, *, by, via: str, error: str) -> None:
    """In the caller's transaction, with the row locked: the job is cancelled, its running attempt
    closed, the steps after it cancelled, and who did it recorded."""
    now = timezone.now()
    JobAction.objects.create(job=job, kind=JobAction.Kind.CANCELLED, by=by, via=via, from_state=job.state)
    job.state, job.finished_at, job.error = Job.State.CANCELLED, now, error
    job.save(update_fields=["state", "finished_at", "error"])
    JobAttempt.objects.filter(job=job, outcome=JobAttempt.Outcome.RUNNING).update(
        outcome=JobAttempt.Outcome.FAILED, finished_at=now, error="cancelled"
    )
    workflow_step_stopped(job_id=job.pk, state=Job.State.CANCELLED, error=job.error)


def job_discard(*, job_id, by=None, via: str) -> Job:
    """Let a dead job go: it leaves the dead-letter counts, and who did it is recorded."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state != Job.State.DEAD or job.discarded_at is not None:
            raise ActionRefused("only a dead job that is not yet discarded can be discarded")
        JobAction.objects.create(job=job, kind=JobAction.Kind.DISCARDED, by=by, via=via, from_state=job.state)
        job.discarded_at = timezone.now()
        job.save(update_fields=["discarded_at"])
    return job
