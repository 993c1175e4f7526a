"""Live job updates: a Server-Sent Events stream of a job's state and progress, and the job's page.

``GET /api/jobs/<id>/events`` answers ``text/event-stream``: first the job as the ledger has it,
then each state change and progress report the workers publish on Redis pub/sub
(``tasks.platform.engine.events``), and it ends with the job. Each event is ``event: state`` or
``event: progress`` with one JSON ``data:`` line (``state``, ``progress``, ``progress_message``,
``worker``, ``finished``, and ``result`` and ``error`` once finished).

The ledger stays the record and pub/sub only says "something changed, now":

- The stream joins its job's subscription and waits for Redis to confirm it *before* it reads the
  ledger row, so an event published while the row is read is not missed; events the row already
  includes are then dropped (see ``JobWatch``).
- Every ``QUIET_SECONDS`` the row is read again (one query for all the process's streams) and
  any change reported, so a lost message (or Redis down, which falls back to reading the row)
  only delays an update.
- The final event is built from the row, which the worker writes before it publishes.

Bounded: the streams of a web process share one Redis connection and hold no database connection
(``tasks.platform.streams``); a user may hold ``SSE_MAX_STREAMS_PER_USER`` streams at once and a process
``SSE_MAX_STREAMS_PER_PROCESS`` (over either: 429 ``too_many_streams`` with Retry-After); a stream
ends after ``SSE_MAX_STREAM_SECONDS`` even if its job has not, and the browser's EventSource
reconnects (``retry:``) and is told the job's state again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from tasks.platform.auth import BearerToken
from tasks.platform.models import Job
from tasks.platform.models.jobs import FINISHED_STATES
from tasks.platform.selectors.flow import job_blocked
from tasks.platform.selectors.jobs import job_get_visible, jobs_visible_to
from tasks.platform.streams import (
    QUIET_SECONDS,
    REDIS_RETRY_SECONDS,
    REDIS_TIMEOUT_SECONDS,
    Listener,
    StreamSlot,
    TooManyStreams,
    stream_hub,
    stream_slot_take,
)

__all__ = ["QUIET_SECONDS", "REDIS_RETRY_SECONDS", "REDIS_TIMEOUT_SECONDS", "JobWatch", "job_events", "job_page"]

logger = logging.getLogger(__name__)

#: a comment line after this long without output keeps proxies from closing the stream
KEEPALIVE_SECONDS = 15.0
#: how long an EventSource waits before it reconnects after the stream ended or dropped
RECONNECT_MILLISECONDS = 2000

_bearer = BearerToken()


# --- the SSE endpoint ------------------------------------------------------------------------


@csrf_exempt  # GET only and changes nothing; as with the API, a bearer client has no CSRF token
@require_GET
async def job_events(request: HttpRequest, job_id: UUID) -> HttpResponse:
    """Server-Sent Events of one job: its current state, then each change, ending with the job."""
    opened = await sync_to_async(_stream_open)(request, job_id)
    if isinstance(opened, HttpResponse):
        return opened
    # The slot is given back when Django closes the response, however the stream ends: job
    # finished, lifetime over, client gone (Django cancels the stream), or an error.
    response = StreamingHttpResponse(_EventStream(job_id, opened), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


def _stream_open(request: HttpRequest, job_id: UUID) -> HttpResponse | StreamSlot:
    """The API's rules (a valid bearer token, else a logged-in session), the job's visibility,
    then a slot under the caps. On the async views' thread: the stream itself holds no connection."""
    user = _bearer(request)  # parses the header as the API does; None without one
    if user is None and request.user.is_authenticated:
        user = request.user
    if user is None:
        return JsonResponse(
            {"detail": "authentication required: a bearer token or a session", "code": "unauthenticated"}, status=401
        )
    if not jobs_visible_to(user).filter(pk=job_id).exists():
        return JsonResponse({"detail": "not found", "code": "not_found"}, status=404)
    slot = stream_slot_take(user.pk)
    if isinstance(slot, TooManyStreams):
        refused = JsonResponse({"detail": slot.detail, "code": "too_many_streams"}, status=429)
        refused["Retry-After"] = str(slot.retry_after)
        return refused
    return slot


class _EventStream:
    """A response's content: the job's events. Django calls ``close()`` (from a thread) when it
    closes the response, even one never iterated: the stream's slot is given back then."""

    def __init__(self, job_id: UUID, slot: StreamSlot) -> None:
        self.job_id, self.slot = job_id, slot

    def __aiter__(self) -> AsyncIterator[str]:
        return self._events()

    async def _events(self) -> AsyncIterator[str]:
        yield f"retry: {RECONNECT_MILLISECONDS}\n\n"
        async for event in JobWatch(self.job_id).events(lifetime=settings.SSE_MAX_STREAM_SECONDS):
            yield event

    def close(self) -> None:
        self.slot.release()


def _sse(kind: str, data: dict[str, Any]) -> str:
    # json.dumps escapes newlines inside strings, so the data is always one line.
    return f"event: {kind}\ndata: {json.dumps(data, cls=DjangoJSONEncoder)}\n\n"


def _job_view(job: Job) -> dict[str, Any]:
    """What a watcher is told about a job; result and error once it is finished."""
    view: dict[str, Any] = {
        "id": str(job.id),
        "task": job.task_name,
        "state": job.state,
        "progress": job.progress,
        "progress_message": job.progress_message,
        "worker": job.worker,
        "finished": job.state in FINISHED_STATES,
    }
    if view["finished"]:
        view["result"] = job.result
        view["error"] = job.error
    return view


class JobWatch:
    """One client's watch of one job: its place in the process's hub and what the client has been told.

    ``self.view`` is what the client knows. An event is emitted only when it changes it. Right
    after a ledger read (``_sync``), messages already queued for the stream may describe writes
    the read included; until one message is newer than the read (``_caught_up``), a message at or
    behind it (same state, lower or equal progress) is dropped. A worker writes then publishes,
    one report after another, so once one message is newer, all later ones are.
    """

    def __init__(self, job_id: UUID) -> None:
        self.job_id = job_id
        self.view: dict[str, Any] = {}
        self._caught_up = True

    async def events(self, *, lifetime: float) -> AsyncIterator[str]:
        """The job's events until it is finished, or ``lifetime`` seconds have passed."""
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + lifetime
        hub = stream_hub()
        listener = Listener(self.job_id)
        try:
            await hub.join(listener)  # before the first read, so nothing published meanwhile is missed
            try:
                job = await hub.read(self.job_id)
            except DatabaseError as exc:
                logger.warning("job %s: ledger not read (%s); the stream ends, the client reconnects", self.job_id, exc)
                return
            if job is None:
                return
            self.view = _job_view(job)
            self._caught_up = False
            yield _sse("state", self.view)  # a late client learns the current (maybe final) state at once
            last_output = loop.time()
            while not self.view["finished"]:
                now = loop.time()
                if now >= ends_at:
                    return  # the client reconnects (retry:) and is told the state again
                try:
                    item = await asyncio.wait_for(
                        listener.queue.get(), min(ends_at, last_output + KEEPALIVE_SECONDS) - now
                    )
                except TimeoutError:
                    item = None
                if item is None:
                    out = ": keep-alive\n\n" if loop.time() - last_output >= KEEPALIVE_SECONDS else None
                elif item[0] == "event":
                    out = await self._apply_message(item[1])
                else:
                    out = self._apply_row(item[1])
                if out is not None:
                    last_output = loop.time()
                    yield out
        finally:
            hub.leave(listener)

    # --- the ledger ------------------------------------------------------------------------------

    async def _read(self) -> Job | None:
        return await stream_hub().read(self.job_id)

    def _apply_row(self, job: Job | None) -> str | None:
        """The periodic read: report what changed (a lost message, an unpublished transition such as queued)."""
        if job is None:  # deleted (retention): nothing more will happen
            self.view = {**self.view, "finished": True}
            return None
        return self._sync(job)

    def _sync(self, job: Job) -> str | None:
        new = _job_view(job)
        self._caught_up = False
        if new == self.view:
            return None
        kind = "state" if new["state"] != self.view.get("state") or new["finished"] else "progress"
        self.view = new
        return _sse(kind, new)

    async def _apply_message(self, event: dict[str, Any]) -> str | None:
        kind = event.get("type")
        if kind == "state" and event.get("state") in FINISHED_STATES:
            # The worker wrote the row (result, error, progress) before it published.
            try:
                job = await self._read()
            except DatabaseError:
                job = None  # the event has the result or error too
            if job is not None and job.state in FINISHED_STATES:
                return self._sync(job)
            new = {**self.view, "state": event["state"], "finished": True}
            new.update(result=event.get("result"), error=event.get("error", ""))
            return self._emit("state", new)
        if kind == "state" and isinstance(event.get("state"), str):
            if event["state"] == self.view["state"] and not self._caught_up:
                return None  # the read already had it
            return self._emit("state", {**self.view, "state": event["state"], "worker": event.get("worker", "")})
        if kind == "progress":
            try:
                percent = max(0, min(100, int(event.get("progress", 0))))
            except (TypeError, ValueError):
                return None
            message = str(event.get("message", ""))
            behind = percent < self.view["progress"] or (percent, message) == (
                self.view["progress"],
                self.view["progress_message"],
            )
            if behind and not self._caught_up:
                return None  # the read already had this report or a later one
            return self._emit("progress", {**self.view, "progress": percent, "progress_message": message})
        return None

    def _emit(self, kind: str, new: dict[str, Any]) -> str | None:
        self._caught_up = True
        if new == self.view:
            return None
        self.view = new
        return _sse(kind, new)


# --- the page --------------------------------------------------------------------------------


@require_GET
@login_required
def job_page(request: HttpRequest, job_id: UUID) -> HttpResponse:
    """The job with a live progress bar, then its result or error; owner or staff, else 404."""
    job = job_get_visible(user=request.user, job_id=job_id)
    view = _job_view(job)
    context = {
        "job": job,
        "finished": view["finished"],
        "blocked": job_blocked(job),
        "result_json": json.dumps(job.result, indent=2, cls=DjangoJSONEncoder) if job.result is not None else "",
        "live": {
            **view,
            "events_url": reverse("job_events", kwargs={"job_id": job.id}),
            "poll_url": reverse("api:job_get", kwargs={"job_id": job.id}),
        },
    }
    return render(request, "tasks/job_detail.html", context)
