"""Reading the job ledger on a caller's behalf: users see their own jobs, staff in scope see all."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from django.db.models import Min, QuerySet
from django.shortcuts import get_object_or_404

from tasks.platform.models import Job
from tasks.platform.models.jobs import ACTIVE_STATES
from tasks.platform.permissions import has_staff_scope


def jobs_visible_to(user) -> QuerySet[Job]:
    """Every job ``user`` may see: all in their staff scope (tasks.platform.permissions), their own otherwise."""
    if has_staff_scope(user, "job"):
        return Job.objects.all()
    return Job.objects.filter(owner=user)


def jobs_active_count(*, owner, up_to: int) -> int:
    """How many of ``owner``'s jobs are not finished, counted up to ``up_to`` (the job_owner_active
    index holds just those rows; its condition is repeated here so the database can use it)."""
    active = Job.objects.filter(owner=owner, owner__isnull=False, state__in=ACTIVE_STATES).order_by()
    return active[:up_to].count()


def jobs_next_due() -> datetime | None:
    """When the earliest delayed job or retry falls due (a rate's turn is one), None without any."""
    due = Job.objects.filter(state__in=(Job.State.SCHEDULED, Job.State.RETRYING)).order_by()
    return due.aggregate(first=Min("run_at"))["first"]


def job_get_visible(*, user, job_id: UUID) -> Job:
    """The job, or Http404 when it does not exist or ``user`` may not see it (the same answer)."""
    return get_object_or_404(jobs_visible_to(user), pk=job_id)


def jobs_queued_and_sent(*, among: Iterable[str] | None = None) -> set[str]:
    """Ids of the jobs the ledger holds as queued whose message was sent (none is owed in the
    outbox), of ``among`` or all: each should be in the broker. Read through the state index."""
    queued = Job.objects.filter(state=Job.State.QUEUED, outbox__isnull=True)
    if among is not None:
        queued = queued.filter(pk__in=list(among))
    return {str(pk) for pk in queued.values_list("pk", flat=True)}
