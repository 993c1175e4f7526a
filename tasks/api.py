"""The HTTP API (django-ninja): enqueue jobs and follow them. OpenAPI at /api/openapi.json.

Every error answers a JSON body ``{"detail": ..., "code": ...}`` (plus details such as field
errors or a batch item's ``index``), and nothing is enqueued.
"""

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import RequestDataTooBig
from django.db import transaction
from django.http import Http404, HttpRequest
from django.urls import reverse
from ninja import Field, NinjaAPI, Query, Schema, Status
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.pagination import PageNumberPagination, paginate
from ninja.parser import Parser

from tasks.auth import API_AUTH
from tasks.middleware import body_too_large_response
from tasks.models import Job
from tasks.models.jobs import JobState
from tasks.queues import PRIORITY_DEFAULT, PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName
from tasks.selectors import jobs as job_selectors
from tasks.selectors.queues import BrokerUnavailable, queue_overview
from tasks.services.jobs import MAX_ATTEMPTS_LIMIT, MAX_DELAY, EnqueueError, job_enqueue, job_enqueue_many
from tasks.services.jobs import JobRequest as EnqueueRequest
from tasks.services.recovery import ActionRefused, job_cancel, job_retry

#: most jobs one batch request may enqueue
BATCH_MAX_JOBS = 1000
#: jobs per page of GET /api/jobs, by default and at most
JOBS_PAGE_SIZE = 50
JOBS_MAX_PAGE_SIZE = 200


class MalformedJSON(ValueError):
    pass


class StrictJSONParser(Parser):
    """JSON bodies only, without the NaN/Infinity extensions Python's json module accepts."""

    def parse_body(self, request: HttpRequest) -> Any:
        def reject_constant(name: str) -> None:
            raise MalformedJSON(f"{name} is not valid JSON")

        try:
            return json.loads(request.body, parse_constant=reject_constant)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise MalformedJSON(str(exc)) from exc


# The interactive docs and schema are for staff (admin session); API clients use the endpoints.
api = NinjaAPI(
    title="Task platform",
    version="1",
    auth=API_AUTH,
    urls_namespace="api",
    docs_decorator=staff_member_required,
    parser=StrictJSONParser(),
)


# --- schemas ---------------------------------------------------------------------------------


class JobIn(Schema):
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
        return EnqueueRequest(
            task_name=self.task,
            payload=self.payload,
            queue=self.queue,
            priority=self.priority,
            delay=self.delay_seconds,
            idempotency_key=self.idempotency_key,
            max_attempts=self.max_attempts,
        )


class BatchIn(Schema):
    jobs: list[JobIn] = Field(
        min_length=1, max_length=BATCH_MAX_JOBS, description=f"1 to {BATCH_MAX_JOBS} jobs, all enqueued or none."
    )


class JobAccepted(Schema):
    id: UUID
    state: str
    url: str


class JobNotPublished(JobAccepted):
    detail: str
    code: str


class BatchAccepted(Schema):
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


class Error(Schema):
    detail: str
    code: str


class FieldError(Schema):
    field: str
    message: str
    index: int | None = Field(None, description="The batch item, for POST /api/jobs/batch.")


class Unprocessable(Error):
    """A request that fails the schema (code invalid_request) or that the service refuses."""

    errors: list[FieldError] | None = Field(None, description="Field errors, of the request or of the payload.")
    index: int | None = Field(None, description="The (first) bad item of a batch.")
    tasks: list[str] | None = Field(None, description="The public tasks, when the task is unknown.")
    queues: list[str] | None = Field(None, description="The queues, when the queue is unknown.")


# --- errors ----------------------------------------------------------------------------------


class IdempotencyKeyInUse(Exception):
    """The key is held by another owner's job, which must not be revealed."""

    def __init__(self, index: int | None = None) -> None:
        super().__init__("idempotency_key is already in use for this task")
        self.index = index


def _error(request: HttpRequest, status: int, detail: str, code: str, **extra: Any):
    return api.create_response(request, {"detail": detail, "code": code, **extra}, status=status)


@api.exception_handler(EnqueueError)
def _enqueue_error(request: HttpRequest, exc: EnqueueError):
    return _error(request, 422, str(exc), exc.code, **exc.details)


@api.exception_handler(IdempotencyKeyInUse)
def _idempotency_key_in_use(request: HttpRequest, exc: IdempotencyKeyInUse):
    extra = {} if exc.index is None else {"index": exc.index}
    return _error(request, 409, str(exc), "idempotency_key_in_use", **extra)


@api.exception_handler(ValidationError)
def _invalid_request(request: HttpRequest, exc: ValidationError):
    errors = [_field_error(error) for error in exc.errors]
    indexes = [error["index"] for error in errors if "index" in error]
    extra = {"index": min(indexes)} if indexes else {}
    fields = ", ".join(dict.fromkeys(error["field"] for error in errors))
    return _error(request, 422, f"invalid request: {fields}", "invalid_request", errors=errors, **extra)


def _field_error(error: dict[str, Any]) -> dict[str, Any]:
    """A ninja/pydantic error as {"field", "message"} (and "index" for a batch item)."""
    loc = list(error.get("loc", ()))
    source = loc.pop(0) if loc else ""
    if source == "body" and loc and loc[0] == "body":
        loc.pop(0)  # the view's parameter name
    field = ".".join(map(str, loc)) or source
    out: dict[str, Any] = {"field": field, "message": error.get("msg", "invalid")}
    if len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int):
        out["index"] = loc[1]
    return out


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError):
    if isinstance(exc, AuthenticationError):
        return _error(request, 401, "authentication required: a bearer token or a session", "unauthenticated")
    if isinstance(exc.__cause__, MalformedJSON):
        return _error(request, 400, f"malformed JSON body: {exc.__cause__}", "malformed_json")
    if isinstance(exc.__cause__, RequestDataTooBig):
        return body_too_large_response()
    codes = {403: "forbidden", 404: "not_found", 429: "throttled"}
    return _error(request, exc.status_code, str(exc), codes.get(exc.status_code, f"http_{exc.status_code}"))


@api.exception_handler(RequestDataTooBig)
def _body_too_large(request: HttpRequest, exc: RequestDataTooBig):
    # Normally answered by ApiBodyLimitMiddleware before the view; this covers a direct read.
    return body_too_large_response()


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404):
    return _error(request, 404, "not found", "not_found")


@api.exception_handler(BrokerUnavailable)
def _broker_unavailable(request: HttpRequest, exc: BrokerUnavailable):
    return _error(request, 503, str(exc), "redis_unavailable")


# --- endpoints -------------------------------------------------------------------------------

_COMMON_ERRORS = {400: Error, 401: Error, 413: Error}
_BROKER_DOWN = "the broker is unavailable; recorded as pending, the relay publishes when Redis is back"


def _accepted(job: Job) -> dict[str, Any]:
    return {"id": job.id, "state": job.state, "url": reverse("api:job_get", kwargs={"job_id": job.id})}


def _held_by_someone_else(job: Job, user) -> bool:
    return not job.created and job.owner_id != user.pk


@api.post(
    "/jobs",
    response={
        200: JobAccepted,
        202: JobAccepted,
        409: Error,
        422: Unprocessable,
        503: JobNotPublished,
        **_COMMON_ERRORS,
    },
    url_name="job_create",
)
def job_create(request: HttpRequest, body: JobIn):
    """Enqueue a job and answer at once with its id (202); a repeated idempotency key answers 200
    with the first job, or 409 when another owner holds the key. 503 when Redis is down: the job is
    kept pending and published by the relay."""
    with transaction.atomic():
        job = job_enqueue(**asdict(body.enqueue_request()), owner=request.user, origin="api")
    if _held_by_someone_else(job, request.user):
        raise IdempotencyKeyInUse()
    if not job.created:
        return Status(200, _accepted(job))
    if job.publish_error:
        return Status(503, {**_accepted(job), "code": "broker_unavailable", "detail": _BROKER_DOWN})
    return Status(202, _accepted(job))


@api.post(
    "/jobs/batch",
    response={202: BatchAccepted, 409: Error, 422: Unprocessable, 503: BatchNotPublished, **_COMMON_ERRORS},
    url_name="job_create_batch",
)
def job_create_batch(request: HttpRequest, body: BatchIn):
    """Enqueue up to 1000 jobs, all or none; answers them in request order. A bad item answers 422
    with its ``index``. 503 when Redis is down: the jobs are kept pending for the relay."""
    with transaction.atomic():
        jobs = job_enqueue_many(
            requests=[item.enqueue_request() for item in body.jobs], owner=request.user, origin="api"
        )
        for index, job in enumerate(jobs):
            if _held_by_someone_else(job, request.user):
                raise IdempotencyKeyInUse(index)  # rolls the whole batch back: nothing is published
    accepted = {"jobs": [_accepted(job) for job in jobs]}
    if any(job.publish_error for job in jobs):
        return Status(503, {**accepted, "code": "broker_unavailable", "detail": _BROKER_DOWN})
    return Status(202, accepted)


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


@api.exception_handler(ActionRefused)
def _action_refused(request: HttpRequest, exc: ActionRefused):
    return _error(request, 409, str(exc), "conflict")


@api.post("/jobs/{job_id}/retry", response={202: JobAccepted, 401: Error, 404: Error, 409: Error}, url_name="job_retry")
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
