"""Job endpoints: enqueue (one or a batch), list, get, retry, cancel, and the queue overview.

The body of an enqueue is one of the public tasks, told apart by ``task``, each with its own
payload schema: the OpenAPI schema states every task's arguments, and a request that fits it is
accepted unless the caller may not use that task, queue or priority (403, tasks.platform.services.allowances).
"""

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any, Literal, Union
from uuid import UUID

from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from ninja import Body, Field, Query, Schema, Status
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictStr, create_model

from tasks.platform.api.base import Error, Forbidden, Unprocessable, api, request_allowance
from tasks.platform.api.pagination import paginated
from tasks.platform.json_types import PRINTABLE, json_int
from tasks.platform.models import Job
from tasks.platform.permissions import has_staff_scope
from tasks.platform.queues import PRIORITY_DEFAULT, PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName
from tasks.platform.registry import PAYLOAD_SCHEMAS, PUBLIC_TASKS, TASK_AUDIENCES
from tasks.platform.selectors import jobs as job_selectors
from tasks.platform.selectors.flow import job_blocked
from tasks.platform.selectors.queues import queue_overview
from tasks.platform.selectors.search import JobSearch, jobs_search_visible
from tasks.platform.services.allowances import enqueue_admit, job_requests_authorize
from tasks.platform.services.bulk import BulkAction, bulk_action_enqueue
from tasks.platform.services.jobs import MAX_ATTEMPTS_LIMIT, MAX_DELAY, job_enqueue, job_enqueue_many
from tasks.platform.services.jobs import JobRequest as EnqueueRequest
from tasks.platform.services.recovery import job_cancel, job_retry

#: most jobs one batch request may enqueue
BATCH_MAX_JOBS = 1000


class JobOptions(BaseModel):
    """What every job to enqueue may say besides its task and payload. Strict: JSON types only, as
    the schema states them (a "5" is not a priority)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    queue: Literal[tuple(QueueName.values)] | None = Field(  # a Literal: strict mode takes no str for an enum
        None, description="critical, default or bulk; the task's own queue when left out (operators may choose)."
    )
    priority: json_int(ge=PRIORITY_HIGHEST, le=PRIORITY_LOWEST) | None = Field(
        None,
        description=f"{PRIORITY_HIGHEST} (most urgent) to {PRIORITY_LOWEST}; {PRIORITY_DEFAULT} when left out. "
        "Users may not ask for more urgent than their allowance (5 by default).",
    )
    delay_seconds: StrictFloat | None = Field(
        None,
        ge=0,
        le=MAX_DELAY.total_seconds(),
        allow_inf_nan=False,
        description=f"Run no sooner than this many seconds from now (0 to {MAX_DELAY.days} days); "
        "the job is 'scheduled' until then.",
    )
    idempotency_key: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=200,
        pattern=PRINTABLE,
        description="Your key for this job: repeating the task with the same key returns the first job (200).",
    )
    max_attempts: json_int(ge=1, le=MAX_ATTEMPTS_LIMIT) | None = Field(
        None, description="Runs before the job is dead; the task's default when left out."
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


def _job_model(task_name: str) -> type[JobOptions]:
    """The body of a job of one public task: its name as ``task``, its schema as ``payload``
    (which may be left out when every field of it has a default)."""
    schema = PAYLOAD_SCHEMAS[task_name]
    required = any(field.is_required() for field in schema.model_fields.values())
    audience = TASK_AUDIENCES[task_name].value
    payload = (
        (schema, Field(description=f"{task_name}'s arguments."))
        if required
        else (schema | None, Field(None, description=f"{task_name}'s arguments; all optional."))
    )
    return create_model(
        "Job_" + task_name.replace(".", "_"),
        __base__=JobOptions,
        __doc__=f"A job of {task_name} (for {audience}).",
        task=(Literal[task_name], Field(description="The public task to run.")),
        payload=payload,
    )


#: one job to enqueue: any public task (registered as the app loaded, before the URLconf)
JobIn = Annotated[Union[tuple(_job_model(name) for name in sorted(PUBLIC_TASKS))], Field(discriminator="task")]  # noqa: UP007 - a Union of a runtime tuple


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[JobIn] = Field(
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


class BlockedOut(Schema):
    code: str = Field(
        description="paused, concurrency, rate, fair_share, scheduled, workflow, unpublished or no_worker.",
    )
    message: str = Field(description="One sentence: what holds the job, and until when or by whom.")


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
    blocked: BlockedOut | None = Field(
        None,
        description="Why the job does not run now (its queue or task paused, its concurrency limit, "
        "a delay, ...); null when it runs, ran, or nothing holds it. Only GET /api/jobs/<id> fills it "
        "(it costs queries); always null in GET /api/jobs.",
    )


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
    """A job's URL without the id: reversed once, not once per job of a batch's answer."""
    return reverse("api:job_get", kwargs={"job_id": _ANY_ID}).removesuffix(str(_ANY_ID))


@api.post(
    "/jobs",
    response={
        200: JobAccepted,
        202: JobAccepted,
        403: Error,
        422: Unprocessable,
        429: Error,
        503: JobNotPublished,
        **_COMMON_ERRORS,
    },
    url_name="job_create",
)
def job_create(request: HttpRequest, body: Body[JobIn]):
    """Enqueue a job and answer at once with its id (202); your repeated idempotency key answers
    200 with the first job. 403 for a task, queue or priority outside your allowance, 429 over
    your rate or active-job cap. 503 when Redis is down: the job is kept pending and published by
    the relay."""
    job_request = body.enqueue_request()
    allowance = request_allowance(request)
    job_requests_authorize(allowance=allowance, requests=[job_request])
    enqueue_admit(user=request.user, allowance=allowance, jobs=1)
    # No transaction around it: the insert commits on its own and the publish follows at once.
    job = job_enqueue(**asdict(job_request), owner=request.user, origin="api", public_only=True)
    if not job.created:
        return Status(200, _accepted(job))
    if job.publish_error:
        return Status(503, {**_accepted(job), "code": "broker_unavailable", "detail": _BROKER_DOWN})
    return Status(202, _accepted(job))


@api.post(
    "/jobs/batch",
    response={
        202: BatchAccepted,
        403: Error,
        422: Unprocessable,
        429: Error,
        503: BatchNotPublished,
        **_COMMON_ERRORS,
    },
    url_name="job_create_batch",
)
def job_create_batch(request: HttpRequest, body: BatchIn):
    """Enqueue up to 1000 jobs, all or none; answers them in request order. A bad item answers 422,
    one outside your allowance 403, each with its ``index``; each job counts towards your rate and
    active-job cap (429). 503 when Redis is down: the jobs are kept pending for the relay."""
    job_requests = [item.enqueue_request() for item in body.jobs]
    allowance = request_allowance(request)
    job_requests_authorize(allowance=allowance, requests=job_requests, batch=True)
    enqueue_admit(user=request.user, allowance=allowance, jobs=len(job_requests))
    # Without keys, no transaction around it: enqueue_many then publishes while its rows commit.
    jobs = job_enqueue_many(requests=job_requests, owner=request.user, origin="api", public_only=True)
    if any(job.publish_error for job in jobs):
        return _batch_answer(request, 503, jobs, code="broker_unavailable", detail=_BROKER_DOWN)
    return _batch_answer(request, 202, jobs)


def _batch_answer(request: HttpRequest, status: int, jobs: list[Job], **extra: str) -> HttpResponse:
    """A batch's answer (BatchAccepted or BatchNotPublished) rendered as it is: the items were just
    built here, and ninja would validate each against the schema again."""
    url_prefix = _job_url_prefix()
    answer = {"jobs": [{"id": (id_ := str(job.pk)), "state": job.state, "url": url_prefix + id_} for job in jobs]}
    return api.create_response(request, {**answer, **extra}, status=status)


@api.get("/jobs", response={200: list[JobOut], 401: Error, 422: Unprocessable}, url_name="job_list")
@paginated
def job_list(request: HttpRequest, filters: Query[JobSearch]):
    """The caller's jobs (every job for staff with the permission to view jobs), newest first,
    narrowed by the filters (tasks.platform.selectors.search): task, state, queue, owner (a username),
    created/finished time ranges, ``payload`` (a JSON object the payload contains, e.g.
    ``payload={"order_id": 42}``) and ``error`` (text in the error, ignoring case). A bad filter answers
    422 naming it. Paginated: ``page`` (from 1) and ``page_size`` (50 by default, at most 200);
    ``count`` is the number of matching jobs."""
    return jobs_search_visible(user=request.user, search=filters)


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: BulkAction = Field(description="retry, cancel or discard.")
    filter: JobSearch = Field(
        description="Every job it matches, not only a page: the filters of GET /api/jobs, with ``payload`` "
        "as a JSON object. Leave it empty ({}) to act on every job."
    )


@api.post(
    "/jobs/bulk",
    response={202: JobAccepted, 401: Error, 403: Error, 409: Error, 422: Unprocessable, 429: Error, **_COMMON_ERRORS},
    url_name="job_bulk",
)
def job_bulk(request: HttpRequest, body: BulkIn):
    """Retry, cancel or discard every job the filter matches, as a job (on the bulk queue): answers
    202 with its id, whose progress reads as any job's. Staff with the permission to change jobs
    only (403). 422 for a bad filter, naming it; 409 for one that matches no job (``no_match``) or
    more than JOB_BULK_MAX_JOBS jobs (``too_many_jobs``). Jobs not in a state for the action are
    skipped; each changed job records the action as yours, via bulk. The bulk job counts as an
    enqueue towards your rate and active-job cap (429)."""
    enqueue_admit(user=request.user, allowance=request_allowance(request), jobs=1)
    job = bulk_action_enqueue(user=request.user, action=body.action, search=body.filter, via="api")
    return Status(202, _accepted(job))


@api.get("/jobs/{job_id}", response={200: JobOut, 401: Error, 404: Error}, url_name="job_get")
def job_get(request: HttpRequest, job_id: UUID):
    """The job, with why it does not run now (``blocked``); another user's job answers 404, as a
    missing one does."""
    job = job_selectors.job_get_visible(user=request.user, job_id=job_id)
    blocked = job_blocked(job)
    job.blocked = None if blocked is None else blocked.as_dict()  # read by JobOut; the list leaves it unset
    return job


def _job_to_act_on(request: HttpRequest, job_id: UUID) -> Job:
    """The caller's job, or one they may act on in their staff scope; 404 when they may not see
    it, 403 when they may see it but not change it (tasks.change_job)."""
    job = job_selectors.job_get_visible(user=request.user, job_id=job_id)
    if job.owner_id != request.user.pk and not has_staff_scope(request.user, "job", to_change=True):
        raise Forbidden("acting on another user's job needs the permission to change jobs", code="permission_required")
    return job


@api.post(
    "/jobs/{job_id}/retry",
    response={202: JobAccepted, 401: Error, 403: Error, 404: Error, 409: Error, 429: Error},
    url_name="job_retry",
)
def job_retry_view(request: HttpRequest, job_id: UUID):
    """Run a failed, dead or cancelled job again with the arguments stored at enqueue; 409 otherwise.
    It counts as an enqueue towards your rate and active-job cap (429)."""
    job = _job_to_act_on(request, job_id)
    enqueue_admit(user=request.user, allowance=request_allowance(request), jobs=1)
    return Status(202, _accepted(job_retry(job_id=job.pk, by=request.user, via="api")))


@api.post(
    "/jobs/{job_id}/cancel",
    response={200: JobAccepted, 401: Error, 403: Error, 404: Error, 409: Error},
    url_name="job_cancel",
)
def job_cancel_view(request: HttpRequest, job_id: UUID):
    """Cancel a job: a waiting one never runs, a running one is terminated; 409 once it finished."""
    job = _job_to_act_on(request, job_id)
    return Status(200, _accepted(job_cancel(job_id=job.pk, by=request.user, via="api")))


@api.get("/queues", response={200: QueuesOut, 401: Error, 503: Error}, url_name="queue_list")
def queue_list(request: HttpRequest):
    """Per queue: messages waiting in Redis (global), and the ledger's scheduled, active, retrying,
    failed, dead and recently succeeded jobs (the caller's own; all for staff with the permission to
    view jobs). 503 when Redis is down."""
    every_job = has_staff_scope(request.user, "job")
    queues = queue_overview(owner=None if every_job else request.user)
    return {"ledger_scope": "all" if every_job else "own", "queues": [counts.as_dict() for counts in queues]}
