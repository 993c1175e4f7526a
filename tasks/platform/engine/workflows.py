"""Workflow links, followed by the engine inside the transaction of the transition that ends a job.

A chain's later steps are ``waiting`` with ``after`` set to the step before; a group's members have
``then`` set to their callback, which is ``waiting`` with ``waiting_for`` counting the members yet
to succeed. When jobs succeed, the steps after them and the callbacks that reach zero are released
(the engine publishes them). When a job ends failed, dead or cancelled, every step after it (and its
group's callback) is cancelled and recorded as a ``step_cancelled`` action; a retry of that job
puts them back to waiting, so the workflow resumes where it stopped.

``job_finished`` is sent in that transaction for every job that ends without succeeding, so a
domain (orders) can follow its workflows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

from django.db.models import Exists, F, OuterRef, Q, QuerySet
from django.dispatch import Signal
from django.utils import timezone

from tasks.platform.models import Job, JobAction

#: sent with ``job_id``, ``state`` and ``error`` when a job ends failed, dead or cancelled
job_finished = Signal()

_STOPPED = (Job.State.FAILED, Job.State.DEAD, Job.State.CANCELLED)


def with_next_steps(jobs: QuerySet) -> QuerySet:
    """Annotate ``has_next``: whether steps wait for the job, so its success need not look otherwise."""
    return jobs.annotate(has_next=Exists(Job.objects.filter(after_id=OuterRef("pk"), state=Job.State.WAITING)))


def steps_released(*, job_ids: Collection, callbacks: Counter | None = None) -> list[Job]:
    """The waiting steps ``job_ids``' success releases, and the callbacks whose count of
    ``callbacks`` (callback id -> members of it that succeeded) reaches zero; locked, not yet
    changed."""
    released: list[Job] = []
    if job_ids:
        released += Job.objects.select_for_update().filter(after_id__in=job_ids, state=Job.State.WAITING)
    if callbacks:
        for callback_id, members in callbacks.items():
            Job.objects.filter(pk=callback_id).update(waiting_for=F("waiting_for") - members)
        released += Job.objects.select_for_update().filter(pk__in=callbacks, state=Job.State.WAITING, waiting_for=0)
    return released


def steps_stopped(*, job_id, state: str, error: str) -> tuple[list, str]:
    """``job_id`` ended ``state`` without succeeding: cancel every step after it; their ids, and
    the error they now show."""
    now = timezone.now()
    reason = f"not run: an earlier step ({job_id}) ended {state}"
    cancelled: list = []
    frontier = [job_id]
    while frontier:
        steps = list(Job.objects.select_for_update().filter(_following(frontier), state=Job.State.WAITING))
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
    return cancelled, reason


def steps_rearmed(*, job_id) -> None:
    """A retried job: the steps its failure cancelled wait for it again. Only those the workflow
    cancelled (a step someone cancelled by hand stays cancelled), and a callback only once none of
    its members is stopped any more."""
    frontier = [job_id]
    while frontier:
        steps = Job.objects.select_for_update().filter(_following(frontier), state=Job.State.CANCELLED)
        rearmed = [step.pk for step in steps if _cancelled_by_workflow(step) and not _has_stopped_members(step)]
        Job.objects.filter(pk__in=rearmed).update(state=Job.State.WAITING, error="", finished_at=None)
        frontier = rearmed


def _following(job_ids: list) -> Q:
    callbacks = Job.objects.filter(pk__in=job_ids, then__isnull=False).values_list("then_id", flat=True)
    return Q(after_id__in=job_ids) | Q(pk__in=list(callbacks))


def _has_stopped_members(job: Job) -> bool:
    return Job.objects.filter(then=job, state__in=_STOPPED).exists()


def _cancelled_by_workflow(job: Job) -> bool:
    action = job.actions.order_by("-at", "-pk").first()
    return action is not None and action.kind == JobAction.Kind.STEP_CANCELLED
