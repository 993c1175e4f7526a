"""Enqueueing: the only way a view, admin action or service starts a job.

A request is validated against its task's schema and options, then handed to the job engine
(tasks.platform.engine), which writes its ledger row in the caller's transaction and publishes it after
commit, with the job id as the Celery task id. A row the publish never reached (Redis down, a
crash in between) is published by the relay (tasks.platform.services.relay), which also releases delayed
jobs when they fall due.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import pydantic_core
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from pydantic import ValidationError

from tasks.platform.engine import engine
from tasks.platform.models import Job
from tasks.platform.queues import PRIORITY_DEFAULT, PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName
from tasks.platform.registry import LEDGER_TASKS, PAYLOAD_SCHEMAS, PUBLIC_TASKS

#: longest delay accepted; longer waits belong in a schedule
MAX_DELAY = timedelta(days=30)
#: most attempts a single enqueue may ask for
MAX_ATTEMPTS_LIMIT = 100


class EnqueueError(Exception):
    """The request to enqueue is invalid; nothing was written."""

    code = "invalid"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class UnknownTask(EnqueueError):
    code = "unknown_task"


class InvalidPayload(EnqueueError):
    code = "invalid_payload"


class InvalidOption(EnqueueError):
    code = "invalid_option"


class PayloadTooLarge(EnqueueError):
    """A payload over JOB_MAX_PAYLOAD_BYTES as JSON: it would travel in every message and sit in the
    ledger (the API's body limit bounds what a client sends; this bounds every enqueue)."""

    code = "payload_too_large"

    def __init__(self, size: int, limit: int) -> None:
        message = f"payload is {size} bytes as JSON, over the limit of {limit} bytes"
        super().__init__(message, errors=[{"field": "payload", "message": message}])
        self.size, self.limit = size, limit


@dataclass
class JobRequest:
    """One job to enqueue, as job_enqueue_many takes them."""

    task_name: str
    payload: dict[str, Any] | None = None
    queue: str | None = None
    priority: int | None = None
    delay: timedelta | float | datetime | None = None
    idempotency_key: str | None = None
    max_attempts: int | None = None


def job_enqueue(
    *,
    task_name: str,
    payload: dict[str, Any] | None = None,
    owner=None,
    queue: str | None = None,
    priority: int | None = None,
    delay: timedelta | float | datetime | None = None,
    idempotency_key: str | None = None,
    max_attempts: int | None = None,
    origin: str = "",
    public_only: bool = False,
    after: Job | None = None,
    waiting_for: int = 0,
) -> Job:
    """Validate, write the ledger row in the caller's transaction, publish after its commit (at
    once outside one).

    Returns the job at once (``job.created`` is False when an earlier job of the owner with the
    same idempotency key is returned instead). ``public_only`` (the API) refuses the tasks only
    services may enqueue, as unknown. ``after`` makes it a workflow step that waits until that
    job succeeds, ``waiting_for`` a group's callback that waits for that many members to succeed
    (see tasks.platform.engine.workflows). ``delay``: seconds, a timedelta, or an aware datetime to
    run at. When the publish fails (Redis down) the row is ``pending`` for the relay and
    ``job.publish_error`` says why.
    """
    request = JobRequest(
        task_name=task_name,
        payload=payload,
        queue=queue,
        priority=priority,
        delay=delay,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
    )
    job = _job_build(request, owner=owner, origin=origin, public_only=public_only, now=timezone.now())
    if after is not None or waiting_for:
        if job.state == Job.State.SCHEDULED:
            raise InvalidOption("a workflow step cannot also be delayed")
        job.after, job.waiting_for = after, waiting_for
        job.state = Job.State.WAITING
    return engine().insert([job])[0]


def job_enqueue_chain(*, steps: Sequence[JobRequest], owner=None, origin: str = "") -> list[Job]:
    """Enqueue a workflow: the first step as any job, each later one waiting until the one before
    it succeeded. All rows are written now, in the caller's transaction, so every id is known."""
    jobs: list[Job] = []
    with transaction.atomic():
        for step in steps:
            jobs.append(job_enqueue(**asdict(step), owner=owner, origin=origin, after=jobs[-1] if jobs else None))
    return jobs


def job_enqueue_group(
    *, requests: Sequence[JobRequest], callback: JobRequest, owner=None, origin: str = ""
) -> tuple[list[Job], Job]:
    """Enqueue a group with a callback: the members run as any jobs of an enqueue_many (short ones
    many to a message); the callback waits until every member succeeded, and is cancelled when
    one does not (retrying that member puts it back to waiting). All valid or none written."""
    if not requests:
        raise InvalidOption("a group needs at least one member")
    if callback.delay or callback.idempotency_key is not None or any(r.idempotency_key is not None for r in requests):
        raise InvalidOption("a group's callback cannot be delayed, and no job of a group may have an idempotency key")
    with transaction.atomic():
        then = job_enqueue(**asdict(callback), owner=owner, origin=origin, waiting_for=len(requests))
        members = job_enqueue_many(requests=requests, owner=owner, origin=origin, then=then)
    return members, then


def job_enqueue_many(
    *, requests: Sequence[JobRequest], owner=None, origin: str = "", public_only: bool = False, then: Job | None = None
) -> list[Job]:
    """Enqueue many jobs: all valid or none written, one bulk insert, one pipelined publish (short
    jobs many to a message). ``then``: members of the group of that callback.

    Returns the jobs in the order asked, an earlier job where an idempotency key repeats one.
    """
    now = timezone.now()
    built = []
    for index, request in enumerate(requests):
        try:
            job = _job_build(request, owner=owner, origin=origin, public_only=public_only, now=now)
        except EnqueueError as exc:
            exc.details["index"] = index
            raise
        job.then = then
        built.append(job)
    return engine().insert(built)


def job_payload_validate(*, task_name: str, payload: Any, public_only: bool = False) -> dict[str, Any]:
    """The payload as the task's schema makes it (JSON-ready, as stored and sent), or UnknownTask /
    InvalidPayload. One check for every enqueue, so the property tests exercise exactly what the
    API runs; the worker validates the stored payload again with the same schema."""
    if task_name not in (PUBLIC_TASKS if public_only else LEDGER_TASKS):
        raise UnknownTask(f"unknown task {task_name!r}", tasks=sorted(PUBLIC_TASKS))
    schema = PAYLOAD_SCHEMAS[task_name]
    try:
        # A model of the task's schema (the API validated it already) is taken as it is.
        model = payload if type(payload) is schema else schema.model_validate({} if payload is None else payload)
        data = model.model_dump(mode="json")
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
        raise InvalidPayload(f"payload does not match {task_name}'s schema", errors=errors) from None
    # Compact UTF-8: its length is the size checked below.
    encoded = pydantic_core.to_json(data)
    # JSON escapes every NUL as \\u0000: without that text there is none, and no walk is needed.
    if b"\\u0000" in encoded and contains_nul(data):
        # The ledger cannot store it (PostgreSQL's jsonb refuses NUL), so neither may the message.
        message = "strings must not contain NUL (\\u0000)"
        raise InvalidPayload(f"payload does not match {task_name}'s schema", errors=[{"field": "", "message": message}])
    if (size := len(encoded)) > settings.JOB_MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(size, settings.JOB_MAX_PAYLOAD_BYTES)
    return data


def contains_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere: no text column (nor jsonb) can store one."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(key) or contains_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    return False


def _job_build(request: JobRequest, *, owner, origin: str, public_only: bool, now: datetime) -> Job:
    """Validate one request into an unsaved Job created ``now``, or raise EnqueueError naming the
    problem. A job to run now is built ``pending``: the engine writes it queued, its message owed
    (tasks.platform.engine.orm)."""
    data = job_payload_validate(task_name=request.task_name, payload=request.payload, public_only=public_only)
    queue = request.queue
    if queue is None:
        queue = task_queue(request.task_name)
    elif queue not in QueueName.values:
        raise InvalidOption(f"unknown queue {queue!r}", queues=QueueName.values)
    priority = PRIORITY_DEFAULT if request.priority is None else request.priority
    if not PRIORITY_HIGHEST <= priority <= PRIORITY_LOWEST:
        raise InvalidOption(f"priority must be between {PRIORITY_HIGHEST} (most urgent) and {PRIORITY_LOWEST}")
    delay = request.delay
    run_at = None
    if isinstance(delay, datetime):  # a time to run at (Django's run_after): kept exactly
        run_at, delay = delay, max(delay - now, timedelta(0))
    try:
        if delay is not None and not isinstance(delay, timedelta):
            delay = timedelta(seconds=delay)
        if delay is not None and not timedelta(0) <= delay <= MAX_DELAY:
            raise ValueError
    except (ValueError, OverflowError):  # also NaN and absurdly large numbers
        raise InvalidOption(f"delay must be between 0 and {MAX_DELAY.days} days") from None
    if request.max_attempts is not None and not 1 <= request.max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidOption(f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}")
    key = request.idempotency_key
    if key is not None and not 1 <= len(key) <= Job._meta.get_field("idempotency_key").max_length:
        raise InvalidOption("idempotency_key must be 1 to 200 characters")

    delayed = bool(delay)
    job = Job(
        task_name=request.task_name,
        payload=data,
        queue=queue,
        priority=priority,
        owner=owner,
        origin=origin,
        idempotency_key=key,
        max_attempts=request.max_attempts,
        state=Job.State.SCHEDULED if delayed else Job.State.PENDING,
        run_at=(run_at or now + delay) if delayed else None,
        created_at=now,
    )
    job.created, job.publish_error = True, ""
    return job


@cache
def task_queue(task_name: str) -> str:
    """The queue a task declares (``declared_queue``: a Django task's ``queue_name``), else the one
    celeryconfig's routes give it (routes are static configuration)."""
    from project.celery import app

    declared = getattr(app.tasks.get(task_name), "declared_queue", None)
    if declared:
        return declared
    route = app.amqp.router.route({}, task_name)
    return route["queue"].name
