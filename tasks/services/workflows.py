"""Workflows: jobs that run one after another, each step only once the one before it succeeded.

A workflow's jobs are all written when it is enqueued (so their ids are known at once): the
first as any job, each later one ``waiting`` with ``after`` set to the step before. The ledger
calls these functions in the transaction that finishes a job:

- succeeded: its next steps become pending and are published after commit (and, should that
  publish be lost, by the relay like any pending job);
- failed, dead or cancelled: the steps after it are cancelled, each recorded as a
  ``step_cancelled`` action; a retry of the job that stopped the workflow puts them back to
  waiting, so the workflow resumes where it stopped.

``job_finished`` is sent in the same transaction for every job that ends without succeeding,
so a domain (orders) can follow its workflows.
"""

from __future__ import annotations

from functools import partial

from django.db import transaction
from django.dispatch import Signal
from django.utils import timezone

from tasks.models import Job, JobAction
from tasks.services.events import job_event_publish

#: sent with ``job_id``, ``state`` and ``error`` when a job ends failed, dead or cancelled
job_finished = Signal()


def workflow_step_succeeded(*, job_id) -> None:
    """Release the steps waiting for ``job_id``; they are published after commit."""
    from tasks.services.jobs import job_publish_many  # jobs -> registry -> ledger -> here

    waiting = Job.objects.select_for_update().filter(after_id=job_id, state=Job.State.WAITING)
    released = list(waiting)
    if not released:
        return
    now = timezone.now()
    Job.objects.filter(pk__in=[job.pk for job in released]).update(state=Job.State.PENDING, publishing_since=now)
    for job in released:
        job.state, job.publishing_since, job.publish_error = Job.State.PENDING, now, ""
    transaction.on_commit(partial(job_publish_many, jobs=released))


def workflow_step_stopped(*, job_id, state: str, error: str) -> None:
    """A job ended without succeeding: cancel every step after it, and tell the domains."""
    now = timezone.now()
    reason = f"not run: an earlier step ({job_id}) ended {state}"
    cancelled: list = []
    frontier = [job_id]
    while frontier:
        steps = list(Job.objects.select_for_update().filter(after_id__in=frontier, state=Job.State.WAITING))
        JobAction.objects.bulk_create(
            JobAction(job=step, kind=JobAction.Kind.STEP_CANCELLED, via="workflow", from_state=step.state)
            for step in steps
        )
        frontier = [step.pk for step in steps]
        Job.objects.filter(pk__in=frontier).update(state=Job.State.CANCELLED, error=reason, finished_at=now)
        cancelled += frontier
    job_finished.send(sender=Job, job_id=job_id, state=state, error=error)
    for step_id in cancelled:
        job_finished.send(sender=Job, job_id=step_id, state=Job.State.CANCELLED, error=reason)
        transaction.on_commit(
            partial(job_event_publish, job_id=step_id, kind="state", state=Job.State.CANCELLED, error=reason)
        )


def workflow_steps_rearm(*, job_id) -> None:
    """A retried job: the steps its failure cancelled wait for it again."""
    frontier = [job_id]
    while frontier:
        steps = Job.objects.select_for_update().filter(after_id__in=frontier, state=Job.State.CANCELLED)
        # Only those the workflow cancelled: a step someone cancelled by hand stays cancelled.
        rearmed = [step.pk for step in steps if _last_action(step) == JobAction.Kind.STEP_CANCELLED]
        Job.objects.filter(pk__in=rearmed).update(state=Job.State.WAITING, error="", finished_at=None)
        frontier = rearmed


def _last_action(job: Job) -> str | None:
    action = job.actions.order_by("-at", "-pk").first()
    return action.kind if action else None
