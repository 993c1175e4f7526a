"""Edit and replay: a dead or failed job runs again with an edited payload. One service behind
every door (API, Django admin, Flower).

The new payload is checked exactly as an enqueue checks one (``job_payload_validate``: the same
InvalidPayload, nothing written when it fails); the engine's ``retry_edited`` then writes the
payload, records the ``edited`` action with the payload before and after, and publishes the job
again, in one transaction. Every edit names the payload it was made from (``expected``): when the
job's payload is no longer that one (someone edited it meanwhile) or the job is no longer failed
or dead, the edit is refused with ActionRefused (HTTP 409) and nothing changes.

With ``JOB_EDIT_REQUIRES_APPROVAL`` on, an edit is kept pending (tasks.platform.models.edits)
until a different signed-in staff user approves it (it is applied then, as above, recorded as done
by the approver) or someone rejects it. Who may edit, approve or reject is each door's check
(staff with the permission to change jobs); that the requester cannot approve their own edit is
this service's, so no door can forget it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from tasks.platform.engine import ActionRefused, engine
from tasks.platform.models import Job, JobEdit, JobEditStatus
from tasks.platform.models.jobs import EDITABLE_STATES
from tasks.platform.services.jobs import InvalidPayload, job_payload_validate

__all__ = [
    "ActionRefused",
    "EditOutcome",
    "InvalidPayload",
    "job_edit_approve",
    "job_edit_reject",
    "job_retry_edited",
]


@dataclass(frozen=True)
class EditOutcome:
    """What an edit did: the job (running again, or as it was while the edit waits) and the
    pending edit when it waits for approval (None when it was applied at once)."""

    job: Job
    pending: JobEdit | None = None


def job_retry_edited(*, job_id, payload: Any, expected: dict[str, Any] | None = None, by=None, via: str) -> EditOutcome:
    """Run a failed or dead job again with ``payload`` (as its task's schema makes it), or, when
    JOB_EDIT_REQUIRES_APPROVAL is on, keep the edit pending for a second person.

    ``expected``: the payload the editor saw (the job's current one when None). Raises
    Job.DoesNotExist, InvalidPayload (nothing written), or ActionRefused (not failed or dead, the
    payload changed meanwhile, an edit already pending)."""
    job = Job.objects.get(pk=job_id)
    data = job_payload_validate(task_name=job.task_name, payload=payload)
    expected = job.payload if expected is None else expected
    if not settings.JOB_EDIT_REQUIRES_APPROVAL:
        return EditOutcome(engine().retry_edited(job_id=job.pk, payload=data, expected=expected, by=by, via=via))
    return EditOutcome(job, _edit_request(job_id=job.pk, before=expected, after=data, by=by, via=via))


def _edit_request(*, job_id, before: dict[str, Any], after: dict[str, Any], by, via: str) -> JobEdit:
    """A pending edit; refused when the job cannot be edited now or already has one pending."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        _check_editable(job, before)
        try:
            with transaction.atomic():
                return JobEdit.objects.create(job=job, before=before, after=after, requested_by=by, requested_via=via)
        except IntegrityError:
            raise ActionRefused("an edit of this job already waits for approval: approve or reject it first") from None


def job_edit_approve(*, edit_id, by, via: str) -> EditOutcome:
    """Apply a pending edit: the job runs with its payload, recorded as done by ``by``. ``by`` must
    be a signed-in user other than the requester (ActionRefused otherwise, as for an edit no longer
    pending or a job that changed: the edit is then left pending, to be rejected). The payload is
    checked against the schema again: a deploy may have changed it since the request."""
    with transaction.atomic():
        edit = _pending_locked(edit_id)
        if by is None or by.pk == edit.requested_by_id:
            raise ActionRefused("an edit needs a second person: its requester cannot approve it")
        job = Job.objects.get(pk=edit.job_id)
        data = job_payload_validate(task_name=job.task_name, payload=edit.after)
        job = engine().retry_edited(job_id=job.pk, payload=data, expected=edit.before, by=by, via=via)
        _decide(edit, JobEditStatus.APPROVED, by=by, via=via)
    return EditOutcome(job)


def job_edit_reject(*, edit_id, by, via: str) -> JobEdit:
    """Close a pending edit without applying it (its requester may withdraw it this way too)."""
    with transaction.atomic():
        edit = _pending_locked(edit_id)
        _decide(edit, JobEditStatus.REJECTED, by=by, via=via)
    return edit


def _pending_locked(edit_id) -> JobEdit:
    edit = JobEdit.objects.select_for_update().get(pk=edit_id)
    if edit.status != JobEditStatus.PENDING:
        raise ActionRefused(f"this edit is already {edit.status}")
    return edit


def _decide(edit: JobEdit, status: str, *, by, via: str) -> None:
    edit.status, edit.decided_by, edit.decided_via, edit.decided_at = status, by, via, timezone.now()
    edit.save(update_fields=["status", "decided_by", "decided_via", "decided_at"])


def _check_editable(job: Job, expected: dict[str, Any]) -> None:
    """The engine's precondition of ``retry_edited``, checked early for a pending edit."""
    if job.state not in EDITABLE_STATES:
        raise ActionRefused(f"a {job.state} job cannot be edited and retried; only failed or dead ones")
    if job.payload != expected:
        raise ActionRefused("the job's payload changed since the edit was made from it: edit it again")
