"""Enqueueing: the only way a view, admin action or service starts a job.

The ledger row is written in the caller's transaction and the message is published after commit,
with the job id as the Celery task id. Jobs enqueued outside any transaction are published while
their rows are written (job_row_insert_while, job_rows_insert_while), and returned once both are done;
a worker that gets a message first waits for its rows (tasks.services.ledger). A row the publish
never reached (Redis down, a crash in between) is published later by the relay
(tasks.services.relay), which also releases delayed jobs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import cache, partial
from typing import Any

import pydantic_core
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Value
from django.db.models.base import ModelState
from django.db.models.functions import Coalesce
from django.utils import timezone
from kombu.exceptions import BatchPublishError, OperationalError
from pydantic import ValidationError
from uuid_utils.compat import uuid7

from tasks.models import Job
from tasks.models.jobs import UNPUBLISHED_STATES
from tasks.queues import PRIORITY_DEFAULT, PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName
from tasks.registry import BATCH_SIZES, LEDGER_TASKS, PAYLOAD_SCHEMAS, PUBLIC_TASKS
from tasks.services.batches import BATCH_TASK, batch_kwargsrepr, batches_split
from tasks.services.job_rows import (
    ROW_IN_FLIGHT_HEADER,
    job_row_insert,
    job_row_insert_overlaps,
    job_row_insert_while,
    job_rows_insert,
    job_rows_insert_while,
    job_rows_update,
    publish_lease_insert,
)
from tasks.services.leases import lease_release, lease_release_logged, lease_releases

logger = logging.getLogger(__name__)

#: longest delay accepted; longer waits belong in a schedule
MAX_DELAY = timedelta(days=30)
#: most attempts a single enqueue may ask for
MAX_ATTEMPTS_LIMIT = 100
#: publishes per Redis pipeline in enqueue_many
PUBLISH_BATCH_SIZE = 1000
#: longest text a message shows of a job's arguments (Celery's own limit)
REPR_MAX = 1024


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


# Not frozen: a frozen dataclass sets each field through object.__setattr__, and a batch request
# makes a thousand of them (a fortieth of its time).
@dataclass(slots=True)
class JobRequest:
    """One job to enqueue, as job_enqueue_many takes them."""

    task_name: str
    payload: dict[str, Any] | None = None
    queue: str | None = None
    priority: int | None = None
    delay: timedelta | float | None = None
    idempotency_key: str | None = None
    max_attempts: int | None = None


def job_enqueue(
    *,
    task_name: str,
    payload: dict[str, Any] | None = None,
    owner=None,
    queue: str | None = None,
    priority: int | None = None,
    delay: timedelta | float | None = None,
    idempotency_key: str | None = None,
    max_attempts: int | None = None,
    origin: str = "",
    public_only: bool = False,
    after: Job | None = None,
    waiting_for: int = 0,
) -> Job:
    """Validate, write the ledger row in the caller's transaction, publish after commit (outside
    a transaction: while it commits, see job_row_insert_while).

    Returns the job at once (``job.created`` is False when an earlier job with the same
    idempotency key is returned instead). ``public_only`` (the API) refuses the tasks only
    services may enqueue, as unknown. ``after`` makes it a workflow step that waits until that
    job succeeds, ``waiting_for`` a group's callback that waits for that many members to succeed
    (see tasks.services.workflows). When the publish fails (Redis down) the row stays
    ``pending`` for the relay and ``job.publish_error`` says why.
    """
    request = JobRequest(task_name, payload, queue, priority, delay, idempotency_key, max_attempts)
    job = _job_build(request, owner=owner, origin=origin, public_only=public_only)
    if after is not None:
        if job.state == Job.State.SCHEDULED:
            raise InvalidOption("a workflow step cannot also be delayed")
        job.after = after
    if waiting_for:
        job.waiting_for = waiting_for
    if after is not None or waiting_for:
        job.state, job.queued_at = Job.State.WAITING, None
    # Written queued, the enqueuing process holding its publish lease (see PublishLease).
    leased = job.state == Job.State.QUEUED
    if leased and idempotency_key is None and job_row_insert_overlaps():
        return _job_insert_publishing(job)  # no transaction to wait for: publish while it commits
    if idempotency_key is None:
        lease = job_row_insert(job, leased=leased)  # in the caller's transaction, or committed at once
    else:
        try:
            # A savepoint inside the caller's transaction: a duplicate must not spoil it.
            with transaction.atomic():
                lease = job_row_insert(job, leased=leased)
        except IntegrityError:
            first = Job.objects.get(task_name=task_name, idempotency_key=idempotency_key, owner=owner)
            first.created, first.publish_error = False, ""
            return first
    if leased:
        # After the caller's commit; at once when there is no transaction around this call.
        transaction.on_commit(partial(job_publish_many, jobs=[job], lease=lease))
    return job


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
    # Without keys, each row goes to PostgreSQL as soon as it is built: the database takes it in
    # (on the other core) while the next one is validated. A job that fails validation raises out
    # of the COPY, and the transaction takes back what it wrote.
    built = _jobs_build(requests, owner=owner, origin=origin, public_only=public_only, then=then)
    keyed = any(request.idempotency_key is not None for request in requests)
    if not keyed and job_row_insert_overlaps():
        return _jobs_insert_publishing(built)  # no transaction to wait for: publish while it writes
    with transaction.atomic():
        built = _jobs_insert_keyed(list(built), owner=owner) if keyed else job_rows_insert(built)
        fresh = list({job.pk: job for job in built if job.created and job.state == Job.State.QUEUED}.values())
        if fresh:
            lease = publish_lease_insert(fresh)
            transaction.on_commit(partial(job_publish_many, jobs=fresh, lease=lease))
    return built


def _jobs_build(
    requests: Sequence[JobRequest], *, owner, origin: str, public_only: bool, then: Job | None
) -> Iterator[Job]:
    """The requests validated into unsaved jobs, one at a time; an invalid one raises EnqueueError
    with its index."""
    now = timezone.now()  # one moment for the call: each job reading the clock was a tenth of its cost
    for index, request in enumerate(requests):
        try:
            job = _job_build(request, owner=owner, origin=origin, public_only=public_only, now=now)
        except EnqueueError as exc:
            exc.details["index"] = index
            raise
        if then is not None:  # the descriptor's set is costly, and a new job's then is None already
            job.then = then
        yield job


def _jobs_insert_keyed(built: list[Job], *, owner) -> list[Job]:
    """Insert jobs of which some have an idempotency key: where ``owner``'s key is taken (by an
    earlier job, or earlier in this list), that job is returned in its place."""
    first_with_key: dict[tuple[str, str], Job] = {}
    for job in built:
        if job.idempotency_key is not None:
            first_with_key.setdefault((job.task_name, job.idempotency_key), job)
    Job.objects.bulk_create(built, ignore_conflicts=True)
    holders = _jobs_holding_keys(first_with_key, owner=owner)
    return [holders[j.task_name, j.idempotency_key] if j.idempotency_key is not None else j for j in built]


def _jobs_holding_keys(first_with_key: dict[tuple[str, str], Job], *, owner) -> dict[tuple[str, str], Job]:
    """After an insert that skipped key conflicts: the job that holds each of ``owner``'s keys, ours
    or an earlier one."""
    inserted = set(Job.objects.filter(pk__in=[job.pk for job in first_with_key.values()]).values_list("pk", flat=True))
    holders = {}
    for (task_name, key), job in first_with_key.items():
        if job.pk not in inserted:
            job = Job.objects.get(task_name=task_name, idempotency_key=key, owner=owner)
            job.created, job.publish_error = False, ""
        holders[task_name, key] = job
    return holders


def job_payload_validate(*, task_name: str, payload: Any, public_only: bool = False) -> dict[str, Any]:
    """The payload as the task's schema makes it (JSON-ready, as stored and sent), or UnknownTask /
    InvalidPayload. One check for every enqueue, so the property tests exercise exactly what the
    API runs; the worker validates the stored payload again with the same schema."""
    return _payload_validated(task_name, payload, public_only)[0]


def _payload_validated(task_name: str, payload: Any, public_only: bool) -> tuple[dict[str, Any], str]:
    """job_payload_validate's payload, and its compact JSON text (which its ledger row takes)."""
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
    # Compact UTF-8, whose length is the size checked below; a seventh of the json module's time.
    encoded = pydantic_core.to_json(data)
    # JSON escapes every NUL as \\u0000: without that text there is none, and no walk is needed.
    if b"\\u0000" in encoded and contains_nul(data):
        # The ledger cannot store it (PostgreSQL's jsonb refuses NUL), so neither may the message.
        message = "strings must not contain NUL (\\u0000)"
        raise InvalidPayload(f"payload does not match {task_name}'s schema", errors=[{"field": "", "message": message}])
    if (size := len(encoded)) > settings.JOB_MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(size, settings.JOB_MAX_PAYLOAD_BYTES)
    return data, encoded.decode()


def contains_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character anywhere: no text column (nor jsonb) can store one."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(key) or contains_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(contains_nul(item) for item in value)
    return False


def _job_build(request: JobRequest, *, owner, origin: str, public_only: bool, now: datetime | None = None) -> Job:
    """Validate one request into an unsaved Job created ``now`` (the clock's time when left out),
    or raise EnqueueError naming the problem."""
    data, data_json = _payload_validated(request.task_name, request.payload, public_only)
    queue = request.queue
    if queue is None:
        queue = task_queue(request.task_name)
    elif queue not in QueueName.values:
        raise InvalidOption(f"unknown queue {queue!r}", queues=QueueName.values)
    priority = PRIORITY_DEFAULT if request.priority is None else request.priority
    if not PRIORITY_HIGHEST <= priority <= PRIORITY_LOWEST:
        raise InvalidOption(f"priority must be between {PRIORITY_HIGHEST} (most urgent) and {PRIORITY_LOWEST}")
    delay = request.delay
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

    if now is None:
        now = timezone.now()
    delayed = bool(delay)
    job = _job_new(
        id=uuid7(),  # the model's default, which _job_new does not apply
        task_name=request.task_name,
        payload=data,
        payload_json=data_json,
        queue=queue,
        priority=priority,
        owner_id=None if owner is None else owner.pk,
        origin=origin,
        idempotency_key=key,
        max_attempts=request.max_attempts,
        # Written queued, as it will be once published after commit, so a job never shows an
        # unpublished state it has only for a millisecond (a failed publish sets it back to pending).
        state=Job.State.SCHEDULED if delayed else Job.State.QUEUED,
        run_at=now + delay if delayed else None,
        queued_at=None if delayed else now,
        created_at=now,
    )
    if owner is not None:
        Job.owner.field.set_cached_value(job, owner)
    job.created, job.publish_error = True, ""
    return job


def _job_new(**values: Any) -> Job:
    """``Job(**values)`` at a seventh of the cost (``Model.__init__`` sets each of 28 fields through
    its descriptor and sends two signals, none of which a new Job has use for: the largest part of
    an enqueue_many once its rows went by COPY). Fields left out take their default; those whose
    default is a callable (the id, the payload, created_at) must be given."""
    job = Job.__new__(Job)
    job.__dict__ = {**_job_defaults(), **values, "_state": ModelState()}  # one dict built, not two
    return job


@cache
def _job_defaults() -> dict[str, Any]:
    """The defaults of the model's fields that are not callables, by attribute name."""
    return {
        f.attname: f.get_default() for f in Job._meta.concrete_fields if not (f.has_default() and callable(f.default))
    }


def _pipelined(producer, messages: int) -> AbstractContextManager:
    """Several messages go out in one Redis pipeline; a single one is sent as it is published."""
    return producer.batch(max_size=PUBLISH_BATCH_SIZE) if messages > 1 else nullcontext()


@cache
def task_queue(task_name: str) -> str:
    """The queue celeryconfig's routes give a task (routes are static configuration)."""
    from project.celery import app

    route = app.amqp.router.route({}, task_name)
    return route["queue"].name


def job_publish(*, job: Job) -> bool:
    """Publish one job whose lease the caller holds; see job_publish_many."""
    return job_publish_many(jobs=[job])


def job_publish_many(*, jobs: Sequence[Job], alone: bool = False, lease: int | None = None) -> bool:
    """Send the jobs' messages in one Redis pipeline, then mark them queued and free their lease.

    First attempts of a task with ``batch_size > 1`` travel many to a message (see
    tasks.services.batches), unless ``alone``. ``lease``: the PublishLease of rows an enqueue
    wrote queued already, released once they are out (tasks.services.leases); without it, the rows'
    own ``publishing_since``. On a broker error nothing is marked: the jobs are pending with their
    leases freed, so the relay retries at once, and each job's ``publish_error`` says why.
    """
    published_at = timezone.now()  # before sending: a fast worker may start a job at once
    return _settle(jobs, lease=lease, failure=_send(jobs, alone=alone), published_at=published_at)


def _job_insert_publishing(job: Job) -> Job:
    """Write a new queued job and publish it at the same time (job_row_insert_while). The message
    says its row may still be on its way, for a worker that receives it first."""
    published_at = timezone.now()
    lease, failure = job_row_insert_while(job, partial(_send, [job], alone=True, row_in_flight=True))
    _settle([job], lease=lease, failure=failure, published_at=published_at)
    return job


def _jobs_insert_publishing(built: Iterator[Job]) -> list[Job]:
    """Write new jobs and publish the queued ones while PostgreSQL takes in their last rows, before
    the COMMIT (job_rows_insert_while); their messages say their rows may still be on their way."""
    jobs, queued, failure = job_rows_insert_while(built, partial(_send, alone=False, row_in_flight=True))
    if failure is not None:
        _note_unpublished(queued, failure, written_queued=True)  # their rows were written pending
    return jobs


def _send(jobs: Sequence[Job], *, alone: bool, row_in_flight: bool = False) -> Exception | None:
    """Publish the jobs' messages in one Redis pipeline; the broker's error, if it failed."""
    from project.celery import app

    singles, batches = (list(jobs), []) if alone else batches_split(jobs, BATCH_SIZES)
    options = {
        # Time limits are the worker's to apply (its settings, the task's own): without None here,
        # Celery would stamp the publishing process's limits on each message.
        "time_limit": None,
        "soft_time_limit": None,
        # No queue declaration at each publish: a message to a queue's name is pushed onto its
        # Redis list whether or not it was declared (workers declare theirs), and kombu's check
        # of its declaration cache copied the queue and its exchange on every publish.
        "declare": [],
        "argsrepr": "()",
    }
    headers = {ROW_IN_FLIGHT_HEADER: True} if row_in_flight else None
    try:
        with app.producer_or_acquire() as producer, _pipelined(producer, len(singles) + len(batches)):
            for job in singles:
                # The app's own task: LEDGER_TASKS holds Celery proxies, which look it up at each access.
                app.tasks[job.task_name].apply_async(
                    kwargs=job.payload,
                    task_id=job.id_text,
                    queue=job.queue,
                    priority=job.priority,
                    producer=producer,
                    headers=headers,
                    kwargsrepr=payload_repr(job.payload),
                    **options,
                )
            for batch in batches:
                first = batch[0]
                app.send_task(
                    BATCH_TASK,
                    kwargs={"task": first.task_name, "jobs": [[job.id_text, job.payload] for job in batch]},
                    queue=first.queue,
                    priority=first.priority,
                    producer=producer,
                    headers=headers,
                    kwargsrepr=batch_kwargsrepr(batch),
                    **options,
                )
    except (OperationalError, BatchPublishError) as exc:
        return exc
    return None


def payload_repr(payload: dict[str, Any]) -> str:
    """What Flower and the logs show of a job's arguments: its payload's repr, cut at REPR_MAX
    characters. Celery's own (``saferepr``) walks the value in Python, a twentieth of a publish."""
    text = repr(payload)
    return text if len(text) <= REPR_MAX else f"{text[: REPR_MAX - 3]}..."


def _settle(jobs: Sequence[Job], *, lease: int | None, failure: Exception | None, published_at) -> bool:
    """After a publish: on success mark the jobs published and free their lease; on failure
    (rows committed) set them back to pending for the relay. Whether the publish succeeded."""
    ids = [job.pk for job in jobs]
    if failure is not None:
        if lease is not None:
            with transaction.atomic():
                job_rows_update(ids, Q(state=Job.State.QUEUED), state=Job.State.PENDING, queued_at=None)
                lease_release([lease])
        else:
            job_rows_update(ids, Q(), publishing_since=None)
        _note_unpublished(jobs, failure, written_queued=lease is not None)
        return False
    if lease is None:
        _mark_published(ids, published_at)
    elif len(jobs) > 1:
        lease_release_logged([lease])  # one row for all of them: nothing to gain by waiting
    else:
        lease_releases.add([lease])
    for job in jobs:
        job.publish_error = ""
        if job.state in UNPUBLISHED_STATES:
            job.state, job.queued_at = Job.State.QUEUED, published_at
    return True


def _note_unpublished(jobs: Sequence[Job], failure: Exception, *, written_queued: bool) -> None:
    """Log a failed publish and note it on the jobs; ``written_queued``: rows written queued by
    their enqueue, set back to pending."""
    # A batch cut off mid-flush may have delivered part of it: publishing again is at-least-once,
    # and the worker's ledger check drops a copy of a job that already finished.
    logger.warning("%d job(s) stay unpublished, the relay will retry: broker unavailable (%s)", len(jobs), failure)
    for job in jobs:
        job.publish_error = str(failure)
        if written_queued and job.state == Job.State.QUEUED:
            job.state, job.queued_at = Job.State.PENDING, None


def _mark_published(ids: list, published_at) -> None:
    """Mark published jobs queued and free their lease. Several rows are locked first, in id order
    as a worker claiming a batch of them locks them, so the two never deadlock (one row needs
    neither the lock nor a transaction)."""
    with transaction.atomic() if len(ids) > 1 else nullcontext():
        # Still unpublished and still leased: a fast worker may have run the job and failed it
        # back to retrying (lease freed) before this mark; that retry is not published yet.
        unpublished = ids
        if len(ids) > 1:
            locked = Job.objects.select_for_update().filter(pk__in=ids).order_by("pk")
            rows = locked.values_list("pk", "state", "publishing_since")
            unpublished = [pk for pk, state, lease in rows if state in UNPUBLISHED_STATES and lease is not None]
        queued = Job.objects.filter(pk__in=unpublished, state__in=UNPUBLISHED_STATES, publishing_since__isnull=False)
        if queued.update(state=Job.State.QUEUED, queued_at=published_at, publishing_since=None) < len(ids):
            # Some were already started by a fast worker: keep their state, record when they were sent.
            Job.objects.filter(pk__in=ids, publishing_since__isnull=False).update(
                publishing_since=None, queued_at=Coalesce(F("queued_at"), Value(published_at))
            )
