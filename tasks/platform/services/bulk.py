"""Bulk actions: retry, cancel or discard every job a search matches, not only the rows a page shows.

A bulk action is itself a job (``jobs.bulk_action`` on the bulk queue, owned by whoever asked, so
its progress reads like any of their jobs). ``bulk_action_enqueue`` refuses what would fail anyway
before anything is enqueued: a caller without the permission to change jobs, a search that matches
nothing, or more than ``JOB_BULK_MAX_JOBS`` jobs. ``bulk_action_run`` (the job's body) walks the
matching ids in keyset chunks and applies the same retry, cancel or discard as every other door
(tasks.platform.services.recovery, hence the engine), one job at a time, recorded as a ``JobAction``
by the asker via ``bulk``.

Safe to run again (a redelivered message, a manual retry of the bulk job): a job the walk reaches
that the engine refuses (already retried, cancelled, discarded) is skipped, and so is one that a
bulk action of the same kind by the same user changed since this bulk job was asked for.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from tasks.platform.errors import PermanentError
from tasks.platform.models import Job, JobAction
from tasks.platform.permissions import has_staff_scope
from tasks.platform.queues import QueueName
from tasks.platform.selectors.search import JobSearch, jobs_search, jobs_search_count
from tasks.platform.services.jobs import job_enqueue
from tasks.platform.services.recovery import ActionRefused, job_cancel, job_discard, job_retry

#: the ledger task of a bulk action (tasks.platform.tasks.bulk)
BULK_ACTION_TASK = "jobs.bulk_action"
#: the ``via`` of every JobAction a bulk action records
VIA_BULK = "bulk"
#: jobs read and acted on per step of the walk; progress is reported after each
CHUNK_SIZE = 200


class BulkAction(enum.StrEnum):
    RETRY = "retry"
    CANCEL = "cancel"
    DISCARD = "discard"


@dataclass(frozen=True)
class _Apply:
    service: Callable[..., object]
    kind: str


_ACTIONS = {
    BulkAction.RETRY: _Apply(job_retry, JobAction.Kind.RETRIED),
    BulkAction.CANCEL: _Apply(job_cancel, JobAction.Kind.CANCELLED),
    BulkAction.DISCARD: _Apply(job_discard, JobAction.Kind.DISCARDED),
}


class BulkRefused(Exception):
    """A bulk action refused before anything was enqueued: 403 without the permission, 409 for a
    filter the ledger refuses as it is now (it matches nothing, or too much); ``code`` names why."""

    def __init__(self, detail: str, *, code: str, status: int = 409) -> None:
        super().__init__(detail)
        self.code = code
        self.status = status


def may_act_in_bulk(user) -> bool:
    """Bulk actions reach everyone's jobs: staff with the permission to change jobs only."""
    return has_staff_scope(user, "job", to_change=True)


def bulk_action_count(search: JobSearch) -> int:
    """How many jobs ``search`` matches, counted up to one past the cap (more means refused)."""
    return jobs_search_count(search, up_to=settings.JOB_BULK_MAX_JOBS + 1)


def bulk_action_enqueue(*, user, action: BulkAction, search: JobSearch, via: str) -> Job:
    """Enqueue the bulk job that applies ``action`` to every job ``search`` matches, owned by ``user``
    (who is recorded on each job's action); refused (BulkRefused) without the permission, when it
    matches nothing, or past the cap."""
    if not may_act_in_bulk(user):
        raise BulkRefused("bulk actions need the permission to change jobs", code="permission_required", status=403)
    matched = bulk_action_count(search)
    if matched == 0:
        raise BulkRefused("the filter matches no job", code="no_match")
    cap = settings.JOB_BULK_MAX_JOBS
    if matched > cap:
        raise BulkRefused(
            f"the filter matches more than {cap} jobs, the most one bulk action may change "
            "(JOB_BULK_MAX_JOBS): narrow it",
            code="too_many_jobs",
        )
    return job_enqueue(
        task_name=BULK_ACTION_TASK,
        payload={"action": action.value, "filter": search.as_payload()},
        owner=user,
        queue=QueueName.BULK.value,
        origin=via,
    )


@dataclass
class BulkOutcome:
    action: str
    matched: int = 0
    applied: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"action": self.action, "matched": self.matched, "applied": self.applied, "skipped": self.skipped}


def bulk_action_run(
    *, job_id, action: BulkAction, search: JobSearch, progress: Callable[[int, str], None]
) -> BulkOutcome:
    """Apply ``action`` to the jobs ``search`` matches, at most JOB_BULK_MAX_JOBS of them, in id order,
    ``CHUNK_SIZE`` at a time; ``progress(percent, message)`` after each chunk. The bulk job
    ``job_id`` itself is never one of them, and its owner must still be allowed to act in bulk."""
    bulk_job = Job.objects.select_related("owner").get(pk=job_id)
    asker = bulk_job.owner
    if asker is None or not may_act_in_bulk(asker):
        raise PermanentError("whoever asked for this bulk action may no longer change jobs")
    apply = _ACTIONS[action]
    cap = settings.JOB_BULK_MAX_JOBS
    # Ids only, by the primary key: a keyset walk, so a job the action moves out of the filter (a
    # retried job is no longer failed) neither shifts the next chunk nor is visited twice.
    matching = jobs_search(search).exclude(pk=bulk_job.pk).order_by("pk").values_list("pk", flat=True)
    expected = max(1, min(bulk_action_count(search), cap))
    outcome = BulkOutcome(action=action.value)
    last_id = None
    while outcome.matched < cap:
        chunk = matching if last_id is None else matching.filter(pk__gt=last_id)
        ids = list(chunk[: min(CHUNK_SIZE, cap - outcome.matched)])
        if not ids:
            break
        last_id = ids[-1]
        done_before = set(
            JobAction.objects.filter(
                job_id__in=ids, kind=apply.kind, via=VIA_BULK, by=asker, at__gte=bulk_job.created_at
            ).values_list("job_id", flat=True)
        )
        for id_ in ids:
            outcome.matched += 1
            if id_ in done_before:
                outcome.skipped += 1
                continue
            try:
                apply.service(job_id=id_, by=asker, via=VIA_BULK)
            except (ActionRefused, Job.DoesNotExist):  # not in a state for it, or pruned meanwhile
                outcome.skipped += 1
            else:
                outcome.applied += 1
        percent = min(99, 100 * outcome.matched // expected)
        progress(percent, f"{action.value}: {outcome.applied} changed, {outcome.skipped} skipped")
    progress(100, f"{action.value}: {outcome.applied} changed, {outcome.skipped} skipped of {outcome.matched}")
    return outcome
