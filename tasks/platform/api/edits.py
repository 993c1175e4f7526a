"""Edit and replay in the API: a failed or dead job runs again with an edited payload, and the
edits that wait for a second person are approved or rejected.

Who may: staff with the permission to change jobs (``tasks.change_job``), on any job they may see.
A job's owner without it may retry their job but not edit it (403 ``permission_required``): an
edit rewrites the record of what was asked, and the shop's own jobs (an order's steps) carry ids
its services wrote, which a customer must not repoint. A job the caller may not see answers 404,
as a missing one does. The payload is checked against the task's schema exactly as an enqueue's
(422 ``invalid_payload`` naming each field); a job not failed or dead, or whose payload changed
since ``expected_payload``, answers 409 and nothing runs. With ``JOB_EDIT_REQUIRES_APPROVAL`` on,
the answer is 202 with the pending ``edit``, and the job runs once another such user approves it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from django.urls import reverse
from ninja import Field, Path, Schema, Status
from pydantic import BaseModel, ConfigDict, WithJsonSchema

from tasks.platform.api.base import Error, Forbidden, Unprocessable, api, request_allowance
from tasks.platform.json_types import NO_NUL
from tasks.platform.models import Job, JobEdit
from tasks.platform.permissions import has_staff_scope
from tasks.platform.selectors import jobs as job_selectors
from tasks.platform.services.allowances import enqueue_admit
from tasks.platform.services.edits import job_edit_approve, job_edit_reject, job_retry_edited

VIA = "api"


def _json_value_schema(depth: int) -> dict[str, Any]:
    """The JSON Schema of a JSON value nested at most ``depth`` deep, no string (nor key) holding a
    NUL, which the API's parser refuses (400) before any schema. The server takes deeper values too;
    the schema states only what it always accepts."""
    text = {"type": "string", "pattern": NO_NUL}
    scalars = [{"type": "null"}, {"type": "boolean"}, {"type": "number"}, text]
    if depth == 0:
        return {"anyOf": scalars}
    inner = _json_value_schema(depth - 1)
    return {
        "anyOf": [
            *scalars,
            {"type": "array", "items": inner},
            {"type": "object", "propertyNames": text, "additionalProperties": inner},
        ]
    }


#: a payload as a JSON object: its task's schema is the job's, checked by the service (422)
PAYLOAD_SCHEMA = {
    "type": "object",
    "propertyNames": {"type": "string", "pattern": NO_NUL},
    "additionalProperties": _json_value_schema(3),
}
AnyPayload = Annotated[dict[str, Any], WithJsonSchema(PAYLOAD_SCHEMA)]


class EditIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: AnyPayload = Field(
        description="The new payload, whole: checked against the job's task's schema as an enqueue's is."
    )
    expected_payload: AnyPayload | None = Field(
        None,
        description="The payload you edited (as GET /api/jobs/<id> gave it): when the job's payload is no "
        "longer this one, 409 and nothing runs. Left out: the job's current payload.",
    )


class EditOut(Schema):
    id: int
    job_id: UUID
    status: Literal["pending", "approved", "rejected"]
    before: dict[str, Any]
    after: dict[str, Any]
    requested_by: str | None = Field(description="Who asked for it (a username); null from Flower or a deleted user.")
    requested_via: str
    requested_at: datetime
    decided_by: str | None
    decided_at: datetime | None


class EditAccepted(Schema):
    id: UUID = Field(description="The job's id.")
    state: str = Field(description="The job's state: queued (or waiting) when it runs again.")
    url: str
    edit: EditOut | None = Field(description="The pending edit, when a second person must approve it; else null.")


def _edit_out(edit: JobEdit) -> dict[str, Any]:
    return {
        "id": edit.pk,
        "job_id": edit.job_id,
        "status": edit.status,
        "before": edit.before,
        "after": edit.after,
        "requested_by": edit.requested_by.get_username() if edit.requested_by else None,
        "requested_via": edit.requested_via,
        "requested_at": edit.requested_at,
        "decided_by": edit.decided_by.get_username() if edit.decided_by else None,
        "decided_at": edit.decided_at,
    }


def _accepted(job: Job, edit: JobEdit | None = None) -> dict[str, Any]:
    url = reverse("api:job_get", kwargs={"job_id": job.pk})
    return {"id": job.pk, "state": job.state, "url": url, "edit": None if edit is None else _edit_out(edit)}


def _require_editor(request: HttpRequest) -> None:
    if not has_staff_scope(request.user, "job", to_change=True):
        raise Forbidden("editing a job's payload needs the permission to change jobs", code="permission_required")


_ERRORS = {401: Error, 403: Error, 404: Error, 409: Error}
#: a job edit's id in a path (a bigint's range: out of it, 422 instead of a database error)
EditId = Path(..., ge=1, le=2**63 - 1, description="A job edit's id.")


@api.post(
    "/jobs/{job_id}/edit",
    response={202: EditAccepted, 400: Error, 413: Error, 422: Unprocessable, 429: Error, **_ERRORS},
    url_name="job_edit",
)
def job_edit(request: HttpRequest, job_id: UUID, body: EditIn):
    """Run a failed or dead job again with an edited payload (staff with the permission to change
    jobs): 202 with the job queued again, or with the pending ``edit`` when a second person must
    approve it. 422 for a payload the task's schema refuses, 409 for a job not failed or dead or
    whose payload is no longer ``expected_payload``; nothing runs either way. Counts as an enqueue
    towards your rate and active-job cap (429)."""
    job = job_selectors.job_get_visible(user=request.user, job_id=job_id)
    _require_editor(request)
    enqueue_admit(user=request.user, allowance=request_allowance(request), jobs=1)
    outcome = job_retry_edited(
        job_id=job.pk, payload=body.payload, expected=body.expected_payload, by=request.user, via=VIA
    )
    return Status(202, _accepted(outcome.job, outcome.pending))


def _visible_edit(request: HttpRequest, edit_id: int) -> JobEdit:
    """A job edit of a job the caller may see (404 otherwise), for a caller who may decide it (403)."""
    edit = get_object_or_404(JobEdit.objects.select_related("requested_by", "decided_by"), pk=edit_id)
    job_selectors.job_get_visible(user=request.user, job_id=edit.job_id)
    _require_editor(request)
    return edit


@api.post(
    "/jobs/edits/{edit_id}/approve",
    response={202: EditAccepted, 422: Unprocessable, 429: Error, **_ERRORS},
    url_name="job_edit_approve",
)
def job_edit_approve_view(request: HttpRequest, edit_id: int = EditId):
    """Approve another user's pending edit: the job runs with its payload (202). 409 for your own
    edit, one already decided, or a job that changed since; 422 if the schema refuses it now."""
    edit = _visible_edit(request, edit_id)
    enqueue_admit(user=request.user, allowance=request_allowance(request), jobs=1)
    outcome = job_edit_approve(edit_id=edit.pk, by=request.user, via=VIA)
    edit.refresh_from_db()
    return Status(202, _accepted(outcome.job, edit))


@api.post(
    "/jobs/edits/{edit_id}/reject",
    response={200: EditOut, **_ERRORS},
    url_name="job_edit_reject",
)
def job_edit_reject_view(request: HttpRequest, edit_id: int = EditId):
    """Reject a pending edit (yours too, to withdraw it): the job stays as it is. 409 once decided."""
    edit = _visible_edit(request, edit_id)
    return Status(200, _edit_out(job_edit_reject(edit_id=edit.pk, by=request.user, via=VIA)))
