"""Live job updates: a Server-Sent Events stream of a job's state and progress, and the job's page.

``GET /api/jobs/<id>/events`` answers ``text/event-stream``: first the job as the ledger has it,
then each state change and progress report the workers publish on Redis pub/sub
(``tasks.services.events``), and it ends with the job. Each event is ``event: state`` or
``event: progress`` with one JSON ``data:`` line (``state``, ``progress``, ``progress_message``,
``worker``, ``finished``, and ``result`` and ``error`` once finished).

The ledger stays the record and pub/sub only says "something changed, now":

- The stream subscribes and waits for Redis to confirm the subscription *before* it reads the
  ledger row, so an event published while the row is read is not missed; events the row already
  includes are then dropped (see ``JobWatch``).
- After ``QUIET_SECONDS`` without a message it reads the row again and reports any change, so a
  lost message (or Redis down, which falls back to reading the row) only delays an update.
- The final event is built from the row, which the worker writes before it publishes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET
from redis.exceptions import RedisError

from tasks.auth import BearerToken
from tasks.models import Job
from tasks.models.jobs import FINISHED_STATES
from tasks.selectors.jobs import job_get_visible, jobs_visible_to
from tasks.services.events import job_channel

logger = logging.getLogger(__name__)

#: after this long without a message the ledger row is read again
QUIET_SECONDS = 2.0
#: a comment line after this long without output keeps proxies from closing the stream
KEEPALIVE_SECONDS = 15.0
#: how long to wait for Redis to connect and to confirm the subscription
REDIS_TIMEOUT_SECONDS = 5.0
#: without Redis, how often a stream tries to subscribe again (it reads the ledger meanwhile)
REDIS_RETRY_SECONDS = 10.0
#: how long an EventSource waits before it reconnects after a dropped connection
RECONNECT_MILLISECONDS = 2000

_bearer = BearerToken()


# --- the SSE endpoint ------------------------------------------------------------------------


async def _api_user(request: HttpRequest):
    """The API's rules: a valid bearer token, else a logged-in session; None for neither."""
    user = await sync_to_async(_bearer)(request)  # parses the header as the API does; None without one
    if user is not None:
        return user
    user = await request.auser()
    return user if user.is_authenticated else None


@csrf_exempt  # GET only and changes nothing; as with the API, a bearer client has no CSRF token
@require_GET
async def job_events(request: HttpRequest, job_id: UUID) -> HttpResponse:
    """Server-Sent Events of one job: its current state, then each change, ending with the job."""
    user = await _api_user(request)
    if user is None:
        return JsonResponse(
            {"detail": "authentication required: a bearer token or a session", "code": "unauthenticated"}, status=401
        )
    if not await jobs_visible_to(user).filter(pk=job_id).aexists():
        return JsonResponse({"detail": "not found", "code": "not_found"}, status=404)
    # Nothing is opened until the server starts iterating, and the generator's ``finally`` closes
    # the subscription however the stream ends: job finished, client gone (Django cancels the
    # task), or an error.
    response = StreamingHttpResponse(_job_stream(job_id), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event on at once
    return response


async def _job_stream(job_id: UUID) -> AsyncIterator[str]:
    watch = JobWatch(job_id)
    try:
        yield f"retry: {RECONNECT_MILLISECONDS}\n\n"
        async for event in watch.events():
            yield event
    finally:
        await watch.close()


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
    """One client's watch of one job: its Redis subscription and what the client has been told.

    ``self.view`` is what the client knows. An event is emitted only when it changes it. Right
    after a ledger read (``_sync``), messages already queued on the subscription may describe
    writes the read included; until one message is newer than the read (``_caught_up``), a
    message at or behind it (same state, lower or equal progress) is dropped. A worker writes
    then publishes, one report after another, so once one message is newer, all later ones are.
    """

    def __init__(self, job_id: UUID) -> None:
        self.job_id = job_id
        self.channel = job_channel(job_id)
        self.client: aioredis.Redis | None = None
        self.pubsub: aioredis.client.PubSub | None = None
        self.view: dict[str, Any] = {}
        self._caught_up = True
        self._subscribe_again_at = 0.0
        self._redis_warned = False

    async def events(self) -> AsyncIterator[str]:
        await self._subscribe()  # before the first read, so nothing published meanwhile is missed
        job = await self._read()
        if job is None:
            return
        self.view = _job_view(job)
        self._caught_up = False
        yield _sse("state", self.view)  # a late client learns the current (maybe final) state at once
        last_output = last_message = time.monotonic()
        while not self.view["finished"]:
            wait = last_message + QUIET_SECONDS - time.monotonic()
            message = await self._next_message(timeout=wait) if wait > 0 else None
            now = time.monotonic()
            if message is not None:
                last_message = now
                out = await self._apply_message(message)
            elif now >= last_message + QUIET_SECONDS:
                last_message = now
                out = await self._resync()
            else:
                out = None
            if out is None and now - last_output >= KEEPALIVE_SECONDS:
                out = ": keep-alive\n\n"
            if out is not None:
                last_output = now
                yield out

    async def close(self) -> None:
        """Drop the subscription and the connection (closing it is Redis's unsubscribe)."""
        pubsub, client, self.pubsub, self.client = self.pubsub, self.client, None, None
        try:
            if pubsub is not None:
                await pubsub.aclose()
            if client is not None:
                await client.aclose()
        except (RedisError, OSError) as exc:
            logger.debug("job %s: closing the event subscription: %s", self.job_id, exc)

    # --- Redis ---------------------------------------------------------------------------------

    async def _subscribe(self) -> bool:
        """Subscribe and wait for Redis to confirm it; on failure the watch reads the ledger only."""
        self._subscribe_again_at = time.monotonic() + REDIS_RETRY_SECONDS
        self.client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        self.pubsub = self.client.pubsub()
        try:
            await self.pubsub.subscribe(self.channel)
            # SUBSCRIBE is only sent; the confirmation says Redis now routes the channel to us.
            deadline = time.monotonic() + REDIS_TIMEOUT_SECONDS
            while (remaining := deadline - time.monotonic()) > 0:
                message = await self.pubsub.get_message(timeout=remaining)
                if message is not None and message["type"] == "subscribe":
                    return True
            raise TimeoutError("no subscription confirmation")
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            self._redis_lost(exc)
            await self.close()
            return False

    def _redis_lost(self, exc: Exception) -> None:
        level = logging.DEBUG if self._redis_warned else logging.WARNING
        self._redis_warned = True
        logger.log(level, "job %s: no live events (%s); reading the ledger every %ss", self.job_id, exc, QUIET_SECONDS)

    async def _next_message(self, *, timeout: float) -> dict[str, Any] | None:
        """The next event published for the job, or None after ``timeout`` (or without Redis)."""
        if self.pubsub is None:
            await asyncio.sleep(timeout)
            return None
        try:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        except (RedisError, OSError) as exc:
            self._redis_lost(exc)
            await self.close()
            return None
        if message is None or message["type"] != "message":
            return None
        try:
            event = json.loads(message["data"])
        except ValueError:
            logger.warning("job %s: ignored a malformed event %r", self.job_id, message["data"][:200])
            return None
        return event if isinstance(event, dict) else None

    # --- the ledger ------------------------------------------------------------------------------

    async def _read(self) -> Job | None:
        return await sync_to_async(_job_read)(self.job_id)

    async def _resync(self) -> str | None:
        """A quiet spell: read the row again; report what changed (a lost message, an unpublished
        transition such as queued); try Redis again when it was down."""
        if self.pubsub is None and time.monotonic() >= self._subscribe_again_at:
            await self._subscribe()  # and read after it, as at the start
        try:
            job = await self._read()
        except DatabaseError as exc:
            logger.warning("job %s: ledger not read (%s); trying again in %ss", self.job_id, exc, QUIET_SECONDS)
            return None
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


def _job_read(job_id: UUID) -> Job | None:
    """The ledger row, and the connection let go: a stream lasts as long as its job, and many
    open streams must not hold as many idle database connections."""
    try:
        return Job.objects.filter(pk=job_id).first()
    finally:
        connection.close()


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
        "result_json": json.dumps(job.result, indent=2, cls=DjangoJSONEncoder) if job.result is not None else "",
        "live": {
            **view,
            "events_url": reverse("job_events", kwargs={"job_id": job.id}),
            "poll_url": reverse("api:job_get", kwargs={"job_id": job.id}),
        },
    }
    return render(request, "tasks/job_detail.html", context)
