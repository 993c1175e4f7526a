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
    """Cancel a job that has not finished. A waiting job never runs (the worker checks the ledger
    first); a running one is terminated."""
    from project.celery import app

    now = timezone.now()
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state in FINISHED_STATES:
            raise ActionRefused(f"a {job.state} job cannot be cancelled")
        running = job.state == Job.State.STARTED
        JobAction.objects.create(job=job, kind=JobAction.Kind.CANCELLED, by=by, via=via, from_state=job.state)
        job.state, job.finished_at, job.error = Job.State.CANCELLED, now, f"cancelled via {via}"
        job.save(update_fields=["state", "finished_at", "error"])
        JobAttempt.objects.filter(job=job, outcome=JobAttempt.Outcome.RUNNING).update(
            outcome=JobAttempt.Outcome.FAILED, finished_at=now, error="cancelled"
        )
        workflow_step_stopped(job_id=job.pk, state=Job.State.CANCELLED, error=job.error)
    if running:
        app.control.revoke(str(job.pk), terminate=True)
    job_event_publish(job_id=job.pk, kind="state", state=Job.State.CANCELLED, error=job.error)
    return job


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
