"""Workflows: chains (each step once the one before it succeeded) and groups with a callback
(the callback once every member succeeded).

A workflow's jobs are all written when it is enqueued (so their ids are known at once). A chain's
first step is any job, each later one ``waiting`` with ``after`` set to the step before. A group's
members are any jobs with ``then`` set to the callback, which is ``waiting`` with ``waiting_for``
counting the members yet to succeed. The ledger calls these functions in the transaction that
finishes jobs:

- succeeded: the steps after them become pending, each callback counts them down and becomes
  pending at zero; all are published after commit (and, should that publish be lost, by the relay
  like any pending job);
- failed, dead or cancelled: the steps after it (and its group's callback) are cancelled, each
  recorded as a ``step_cancelled`` action; a retry of the job that stopped the workflow puts them
  back to waiting, so the workflow resumes where it stopped.

``job_finished`` is sent in the same transaction for every job that ends without succeeding,
so a domain (orders) can follow its workflows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from functools import partial

from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.dispatch import Signal
from django.utils import timezone

from tasks.models import Job, JobAction
from tasks.services.events import job_event_publish

#: sent with ``job_id``, ``state`` and ``error`` when a job ends failed, dead or cancelled
job_finished = Signal()


def with_next_steps(jobs: QuerySet) -> QuerySet:
    """Annotate ``has_next``: whether steps wait for the job, so its success need not look otherwise."""
    return jobs.annotate(has_next=Exists(Job.objects.filter(after_id=OuterRef("pk"), state=Job.State.WAITING)))


def workflow_jobs_succeeded(*, job_ids: Collection, callbacks: Counter | None = None) -> None:
    """Release the steps waiting for ``job_ids``, and count those that are group members down on
    their callbacks (``callbacks``: callback id -> members of it among ``job_ids``)."""
    from tasks.services.jobs import job_publish_many  # jobs -> registry -> ledger -> here

    released = []
    if job_ids:
        released += Job.objects.select_for_update().filter(after_id__in=job_ids, state=Job.State.WAITING)
    if callbacks:
        for callback_id, members in callbacks.items():
            Job.objects.filter(pk=callback_id).update(waiting_for=F("waiting_for") - members)
        ready = Job.objects.select_for_update().filter(pk__in=callbacks, state=Job.State.WAITING, waiting_for=0)
        released += list(ready)
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
        following = Q(after_id__in=frontier) | Q(pk__in=_callbacks_of(frontier))
        steps = list(Job.objects.select_for_update().filter(following, state=Job.State.WAITING))
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
        following = Q(after_id__in=frontier) | Q(pk__in=_callbacks_of(frontier))
        steps = Job.objects.select_for_update().filter(following, state=Job.State.CANCELLED)
        # Only those the workflow cancelled (a step someone cancelled by hand stays cancelled), and a
        # callback only once none of its members is stopped any more.
        rearmed = [
            step.pk
            for step in steps
            if _last_action(step) == JobAction.Kind.STEP_CANCELLED and not _has_stopped_members(step)
        ]
        Job.objects.filter(pk__in=rearmed).update(state=Job.State.WAITING, error="", finished_at=None)
        frontier = rearmed


def _callbacks_of(job_ids: list) -> list:
    return list(Job.objects.filter(pk__in=job_ids, then__isnull=False).values_list("then_id", flat=True))


def _has_stopped_members(job: Job) -> bool:
    return Job.objects.filter(then=job, state__in=[Job.State.FAILED, Job.State.DEAD, Job.State.CANCELLED]).exists()


def _last_action(job: Job) -> str | None:
    action = job.actions.order_by("-at", "-pk").first()
    return action.kind if action else None
