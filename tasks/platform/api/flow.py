"""Flow control endpoints: pause and resume a queue or a task, and the current pauses.

Pausing and resuming act on everyone's jobs, so they need a permission of their own (a staff user
with ``tasks.add_pause`` to pause, ``tasks.delete_pause`` to resume; a superuser has both): 403
``permission_required`` otherwise. An unknown queue or task answers 404 naming what exists, never
a pause of nothing. Every pause and resume is recorded (FlowEvent) with the caller and ``via="api"``.
"""

from datetime import datetime
from typing import Literal

from django.http import HttpRequest
from ninja import Field, Path, Schema, Status

from tasks.platform.api.base import Error, Forbidden, api
from tasks.platform.models import Pause, PauseScope
from tasks.platform.services.flow import UnknownTarget, flow_pause, flow_resume

#: the permission to pause a queue or a task (Django's "add pause")
PAUSE_PERMISSION = "tasks.add_pause"
#: the permission to resume one (Django's "delete pause": a resume deletes the pause)
RESUME_PERMISSION = "tasks.delete_pause"


class PauseOut(Schema):
    scope: Literal["queue", "task"]
    name: str = Field(description="The queue's or the task's name.")
    by: str | None = Field(description="Who paused it (a username); null for the system or a deleted user.")
    via: str = Field(description="Where it was paused: api, admin, command or flower.")
    since: datetime


class PausedOut(PauseOut):
    paused: Literal[True]


class ResumedOut(Schema):
    scope: Literal["queue", "task"]
    name: str
    paused: Literal[False]
    released: int = Field(description="Held jobs sent on to their queue (0 when it was not paused).")


class PausesOut(Schema):
    pauses: list[PauseOut] = Field(description="Every current pause, queues first, then by name.")


_ERRORS = {401: Error, 403: Error, 404: Error}

#: what a queue's or a task's name is made of (dotted words, not starting with a dot): a name the
#: schema admits is always one path segment, never "." or ".." that a client would fold away
TARGET_NAME = r"^[A-Za-z0-9_:-][A-Za-z0-9_.:-]*$"
#: a queue or a task of the path (a name outside TARGET_NAME answers 404, as an unknown one does)
Target = Path(..., min_length=1, max_length=200, pattern=TARGET_NAME, description="A queue's or a task's name.")


def _require(request: HttpRequest, permission: str, action: str) -> None:
    user = request.user
    if not (user.is_active and user.is_staff and user.has_perm(permission)):
        raise Forbidden(f"{action} a queue or a task needs the permission {permission}", code="permission_required")


def _pause_dict(pause: Pause) -> dict:
    return {
        "scope": pause.scope,
        "name": pause.name,
        "by": pause.by.get_username() if pause.by_id else None,
        "via": pause.via,
        "since": pause.at,
    }


def _not_found(exc: UnknownTarget) -> Status:
    return Status(404, {"detail": str(exc), "code": "not_found"})


def _pause(request: HttpRequest, scope: str, name: str):
    _require(request, PAUSE_PERMISSION, "pausing")
    try:
        pause = flow_pause(scope=scope, name=name, by=request.user, via="api")
    except UnknownTarget as exc:
        return _not_found(exc)
    return Status(200, {**_pause_dict(pause), "paused": True})


def _resume(request: HttpRequest, scope: str, name: str):
    _require(request, RESUME_PERMISSION, "resuming")
    try:
        released = flow_resume(scope=scope, name=name, by=request.user, via="api")
    except UnknownTarget as exc:
        return _not_found(exc)
    return Status(200, {"scope": scope, "name": name, "paused": False, "released": released})


@api.post("/queues/{name}/pause", response={200: PausedOut, **_ERRORS}, url_name="queue_pause")
def queue_pause(request: HttpRequest, name: str = Target):
    """Pause a queue: none of its jobs starts until it is resumed; jobs enqueued meanwhile are
    accepted and wait, held; running ones finish. Pausing a paused queue keeps the first pause.
    Needs ``tasks.add_pause``."""
    return _pause(request, PauseScope.QUEUE, name)


@api.post("/queues/{name}/resume", response={200: ResumedOut, **_ERRORS}, url_name="queue_resume")
def queue_resume(request: HttpRequest, name: str = Target):
    """Resume a queue: its held jobs go to it again, in their order (one still paused by its task
    stays held). Needs ``tasks.delete_pause``."""
    return _resume(request, PauseScope.QUEUE, name)


@api.post("/tasks/{name}/pause", response={200: PausedOut, **_ERRORS}, url_name="task_pause")
def task_pause(request: HttpRequest, name: str = Target):
    """Pause a task on every queue, as a queue is paused. Needs ``tasks.add_pause``."""
    return _pause(request, PauseScope.TASK, name)


@api.post("/tasks/{name}/resume", response={200: ResumedOut, **_ERRORS}, url_name="task_resume")
def task_resume(request: HttpRequest, name: str = Target):
    """Resume a task: its held jobs go to their queues again (one still paused by its queue stays
    held). Needs ``tasks.delete_pause``."""
    return _resume(request, PauseScope.TASK, name)


@api.get("/flow/pauses", response={200: PausesOut, 401: Error}, url_name="pause_list")
def pause_list(request: HttpRequest):
    """The queues and tasks paused now: who paused each, from where and since when."""
    return {"pauses": [_pause_dict(pause) for pause in Pause.objects.select_related("by")]}
