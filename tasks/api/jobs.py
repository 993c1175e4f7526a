"""Job endpoints: enqueue (one or a batch), list, get, retry, cancel, and the queue overview."""

from contextlib import nullcontext
from dataclasses import asdict
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from ninja import Field, Query, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import BaseModel

from tasks.api.base import Error, IdempotencyKeyInUse, Unprocessable, api
from tasks.models import Job
from tasks.models.jobs import JobState
from tasks.queues import PRIORITY_DEFAULT, PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName
from tasks.ratelimit import rate_limited
from tasks.selectors import jobs as job_selectors
from tasks.selectors.queues import queue_overview
from tasks.services.jobs import MAX_ATTEMPTS_LIMIT, MAX_DELAY, job_enqueue, job_enqueue_many
from tasks.services.jobs import JobRequest as EnqueueRequest
from tasks.services.recovery import job_cancel, job_retry

#: most jobs one batch request may enqueue
BATCH_MAX_JOBS = 1000
#: jobs per page of GET /api/jobs, by default and at most
JOBS_PAGE_SIZE = 50
JOBS_MAX_PAGE_SIZE = 200


# A job to enqueue: a plain pydantic model, as the answers below. ninja's Schema wraps each object
# it validates in a getter for ORM attributes, a seventh of a 1,000-job batch request's time.
class BatchJobIn(BaseModel):
    task: str = Field(description="A public task name, e.g. ops.ping.")
    payload: dict[str, Any] | None = Field(None, description="Arguments, checked against the task's schema.")
    queue: str | None = Field(None, description="critical, default or bulk; the task's route when left out.")
    priority: int | None = Field(
        None, description=f"{PRIORITY_HIGHEST} (most urgent) to {PRIORITY_LOWEST}; {PRIORITY_DEFAULT} when left out."
    )
    delay_seconds: float | None = Field(
        None,
        ge=0,
        le=MAX_DELAY.total_seconds(),
        allow_inf_nan=False,
        description=f"Run no sooner than this many seconds from now (0 to {MAX_DELAY.days} days); "
        "the job is 'scheduled' until then.",
    )
    idempotency_key: str | None = Field(
        None,
        description="1 to 200 characters; repeating a task with the same key returns the first job (200).",
    )

    max_attempts: int | None = Field(
        None, ge=1, le=MAX_ATTEMPTS_LIMIT, description="Runs before the job is dead; the task's default when left out."
    )

    def enqueue_request(self) -> EnqueueRequest:
        # Positional, in the dataclass's field order: a batch makes a thousand of them.
        return EnqueueRequest(
            self.task,
            self.payload,
            self.queue,
            self.priority,
            self.delay_seconds,
            self.idempotency_key,
            self.max_attempts,
        )


# The body of POST /api/jobs: a Schema, whose getter names the missing ``task`` of a body that is
# not an object (a list), where pydantic would name the model.
class JobIn(Schema, BatchJobIn):
    pass


class BatchIn(BaseModel):
    jobs: list[BatchJobIn] = Field(
        min_length=1, max_length=BATCH_MAX_JOBS, description=f"1 to {BATCH_MAX_JOBS} jobs, all enqueued or none."
    )


class JobAccepted(BaseModel):
    id: UUID
    state: str
    url: str


class JobNotPublished(JobAccepted):
    detail: str
    code: str


class BatchAccepted(BaseModel):
    jobs: list[JobAccepted]


class BatchNotPublished(BatchAccepted):
    detail: str
    code: str


class JobOut(Schema):
    id: UUID
    task: str = Field(alias="task_name")
    queue: str
    priority: int
    state: str
    payload: dict[str, Any]
    result: Any = None
    error: str
    worker: str
    origin: str
    attempts: int
    progress: int = Field(description="0 to 100, the latest the task reported.")
    progress_message: str
    idempotency_key: str | None
    created_at: datetime
    run_at: datetime | None = Field(description="When a delayed job is due.")
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class JobFilters(Schema):
    state: JobState | None = Field(None, description="Only jobs in this state.")
    task: str | None = Field(None, description="Only jobs of this task.")
    queue: QueueName | None = Field(None, description="Only jobs of this queue.")


class QueueOut(Schema):
    queue: str
    waiting: int = Field(description="Messages in Redis for this queue (all owners).")
    scheduled: int
    active: int = Field(description="Jobs started and not finished.")
    retrying: int
    failed: int
    dead: int
    succeeded_24h: int = Field(description="Jobs that succeeded in the last 24 hours.")


class QueuesOut(Schema):
    ledger_scope: Literal["all", "own"] = Field(
        description="Whose jobs the ledger counts cover: all (staff) or the caller's own. "
        "'waiting' is always global: the broker does not know owners."
    )
    queues: list[QueueOut]


_COMMON_ERRORS = {400: Error, 401: Error, 413: Error}
_ANY_ID = UUID(int=0)
_BROKER_DOWN = "the broker is unavailable; recorded as pending, the relay publishes when Redis is back"


def _accepted(job: Job) -> dict[str, Any]:
    return {"id": job.id, "state": job.state, "url": f"{_job_url_prefix()}{job.id}"}


def _job_url_prefix() -> str:
    """A job's URL without the id: reversed once, not once per job (a tenth of a batch request)."""
    return reverse("api:job_get", kwargs={"job_id": _ANY_ID}).removesuffix(str(_ANY_ID))


def _held_by_someone_else(job: Job, user) -> bool:
    return not job.created and job.owner_id != user.pk


@api.post(
    "/jobs",
    response={
        200: JobAccepted,
        202: JobAccepted,
        409: Error,
        422: Unprocessable,
        429: Error,
        503: JobNotPublished,
        **_COMMON_ERRORS,
    },
    url_name="job_create",
)
@rate_limited()
def job_create(request: HttpRequest, body: JobIn):
    """Enqueue a job and answer at once with its id (202); a repeated idempotency key answers 200
    with the first job, or 409 when another owner holds the key. 503 when Redis is down: the job is
    kept pending and published by the relay."""
    # No transaction around it: the insert commits on its own and the publish follows at once,
    # two round trips (BEGIN, COMMIT) fewer than wrapping one statement in a transaction.
    job = job_enqueue(**asdict(body.enqueue_request()), owner=request.user, origin="api", public_only=True)
    if _held_by_someone_else(job, request.user):
        raise IdempotencyKeyInUse()
    if not job.created:
        return Status(200, _accepted(job))
    if job.publish_error:
        return Status(503, {**_accepted(job), "code": "broker_unavailable", "detail": _BROKER_DOWN})
    return Status(202, _accepted(job))


@api.post(
    "/jobs/batch",
    response={
        202: BatchAccepted,
        409: Error,
        422: Unprocessable,
        429: Error,
        503: BatchNotPublished,
        **_COMMON_ERRORS,
    },
    url_name="job_create_batch",
)
@rate_limited(cost=lambda body, **_: len(body.jobs))  # each job of the batch counts
def job_create_batch(request: HttpRequest, body: BatchIn):
    """Enqueue up to 1000 jobs, all or none; answers them in request order. A bad item answers 422
    with its ``index``. 503 when Redis is down: the jobs are kept pending for the relay."""
    # A job of the batch can be someone else's only through a key. Without keys, no transaction
    # around it: enqueue_many then publishes while its rows commit.
    keyed = any(item.idempotency_key is not None for item in body.jobs)
    with transaction.atomic() if keyed else nullcontext():
        jobs = job_enqueue_many(
            requests=[item.enqueue_request() for item in body.jobs], owner=request.user, origin="api", public_only=True
        )
        for index, job in enumerate(jobs if keyed else ()):
            if _held_by_someone_else(job, request.user):
                raise IdempotencyKeyInUse(index)  # rolls the whole batch back: nothing is published
    if any(job.publish_error for job in jobs):
        return _batch_answer(request, 503, jobs, code="broker_unavailable", detail=_BROKER_DOWN)
    return _batch_answer(request, 202, jobs)


def _batch_answer(request: HttpRequest, status: int, jobs: list[Job], **extra: str) -> HttpResponse:
    """A batch's answer (BatchAccepted or BatchNotPublished) rendered as it is: ninja would check the
    1,000 items just built here against the schema first, a third of a batch request's time."""
    url_prefix = _job_url_prefix()
    answer = {"jobs": [{"id": (id_ := job.id_text), "state": job.state, "url": url_prefix + id_} for job in jobs]}
    return api.create_response(request, {**answer, **extra}, status=status)


@api.get("/jobs", response={200: list[JobOut], 401: Error, 422: Unprocessable}, url_name="job_list")
@paginate(PageNumberPagination, page_size=JOBS_PAGE_SIZE, max_page_size=JOBS_MAX_PAGE_SIZE)
def job_list(request: HttpRequest, filters: Query[JobFilters]):
    """The caller's jobs (every job for staff), newest first. Paginated: ``page`` (from 1) and
    ``page_size`` (50 by default, at most 200); ``count`` is the number of matching jobs."""
    return job_selectors.job_list(user=request.user, state=filters.state, task=filters.task, queue=filters.queue)


@api.get("/jobs/{job_id}", response={200: JobOut, 401: Error, 404: Error}, url_name="job_get")
def job_get(request: HttpRequest, job_id: UUID):
    """The job; another user's job answers 404, as a missing one does."""
    return job_selectors.job_get_visible(user=request.user, job_id=job_id)


@api.post(
    "/jobs/{job_id}/retry",
    response={202: JobAccepted, 401: Error, 404: Error, 409: Error, 429: Error},
    url_name="job_retry",
)
@rate_limited()
def job_retry_view(request: HttpRequest, job_id: UUID):
    """Run a failed, dead or cancelled job again with the arguments stored at enqueue; 409 otherwise."""
    job = job_selectors.job_get_visible(user=request.user, job_id=job_id)
    return Status(202, _accepted(job_retry(job_id=job.pk, by=request.user, via="api")))


@api.post(
    "/jobs/{job_id}/cancel", response={200: JobAccepted, 401: Error, 404: Error, 409: Error}, url_name="job_cancel"
)
def job_cancel_view(request: HttpRequest, job_id: UUID):
    """Cancel a job: a waiting one never runs, a running one is terminated; 409 once it finished."""
    job = job_selectors.job_get_visible(user=request.user, job_id=job_id)
    return Status(200, _accepted(job_cancel(job_id=job.pk, by=request.user, via="api")))


@api.get("/queues", response={200: QueuesOut, 401: Error, 503: Error}, url_name="queue_list")
def queue_list(request: HttpRequest):
    """Per queue: messages waiting in Redis (global), and the ledger's scheduled, active, retrying,
    failed, dead and recently succeeded jobs (the caller's own; all for staff). 503 when Redis is down."""
    staff = request.user.is_staff
    queues = queue_overview(owner=None if staff else request.user)
    return {"ledger_scope": "all" if staff else "own", "queues": [counts.as_dict() for counts in queues]}
