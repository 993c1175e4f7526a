"""Ledger tasks, each with a payload schema; public ones a client may also enqueue by name.

The same pydantic schema validates a payload when it is enqueued (service and API) and again
when a worker starts the task. Every task runs through ``LedgerTask``, which checks the ledger
before a run and records how it ended: succeeded, retrying (with backoff), failed or dead.
"""

from __future__ import annotations

import enum
import functools
import logging
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from celery import Task, shared_task
from celery.exceptions import Ignore, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from pydantic import BaseModel, ValidationError

from tasks.platform import logs, tracing
from tasks.platform.concurrency import CONCURRENCY, RATES, SHARE_BY, Limit, Rate
from tasks.platform.engine import Attempt, backoff_delay, engine
from tasks.platform.errors import PermanentError
from tasks.platform.heartbeats import renew as heartbeat_renew
from tasks.platform.models import Job
from tasks.platform.selectors.schedules import schedule_origins

logger = logging.getLogger(__name__)

#: name -> task, for every task enqueued through the ledger; filled by @ledger_task as the modules load
LEDGER_TASKS: dict[str, LedgerTask] = {}
#: the ledger tasks a client may enqueue by name (the API); the others only services enqueue
PUBLIC_TASKS: dict[str, LedgerTask] = {}
#: the ledger tasks an admin may put on a schedule (public ones, and housekeeping)
SCHEDULABLE_TASKS: dict[str, LedgerTask] = {}
#: name -> payload schema of every ledger task (read at every enqueue: a plain dict, where each
#: task's attribute is read through a Celery proxy)
PAYLOAD_SCHEMAS: dict[str, type[BaseModel]] = {}


class Audience(enum.Enum):
    """Who may enqueue a public task by name (tasks.platform.services.allowances applies it)."""

    #: operators only: staff users with the permission to add jobs (tasks.add_job), or superusers
    OPERATORS = "operators"
    #: every signed-in user, within their own allowance of queues, priorities, rate and active jobs
    USERS = "users"


#: name -> who may enqueue it, for every public task
TASK_AUDIENCES: dict[str, Audience] = {}

#: errors no retry can mend: an explicit PermanentError, and a payload the schema refuses
ALWAYS_PERMANENT = (PermanentError, ValidationError)
#: retries through the broker while the database itself is unreachable (about an hour with backoff)
LEDGER_OUTAGE_MAX_RETRIES = 60


class LedgerTask(Task):
    """Keeps the job ledger in step with each run, and decides what a failure means.

    Class attributes a task may override: ``max_attempts``, ``backoff_base``,
    ``backoff_max`` (seconds), ``permanent_errors`` (exception types that mean "dead at once";
    ``PermanentError`` and an invalid payload always do) and ``batch_size`` (an option of the
    decorator): for short jobs, how many first attempts of one enqueue_many
    may travel in one message (see tasks.platform.engine.publish). ``concurrency`` (an option of
    the decorator, a ``Limit``) caps how many of its jobs run at once (tasks.platform.concurrency).
    """

    payload_schema: type[BaseModel]
    batch_size: int = 1
    max_attempts: int | None = None
    backoff_base: float | None = None
    backoff_max: float | None = None
    permanent_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Celery's request class for these tasks: the ledger, not Celery's revoked ids, decides a run
    Request = "tasks.platform.worker:LedgerRequest"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        queue = (request.delivery_info or {}).get("routing_key", "")
        try:
            attempt = engine().begin_attempt(
                job_id=request.id,
                task_name=self.name,
                queue=queue,
                worker=request.hostname or "",
                payload=kwargs,
                origin=self._origin(),
                max_attempts=self.max_attempts or settings.TASK_MAX_ATTEMPTS,
                max_worker_losses=settings.TASK_MAX_WORKER_LOSSES,
            )
        except DatabaseError as exc:
            raise self._retry_through_broker(exc) from exc
        if attempt is None:
            raise Ignore()  # cancelled, already done, or dead: acknowledged without running
        request.attempt = attempt.number
        logs.bind(request.id, self.name, attempt.number)
        tracing.tag_job(job_id=request.id, task=self.name, attempt=attempt.number, queue=queue)
        try:
            result = super().__call__(*args, **kwargs)
        except (Retry, Ignore):
            raise  # the task steers Celery itself
        except Exception as exc:
            try:
                self._record_failure(exc, attempt)  # raises Retry for a retry
            finally:
                self._free_slot(kwargs)
            raise
        try:
            engine().succeed(job_id=request.id, attempt=attempt, result=result)
        except DatabaseError as exc:
            # The result cannot be recorded: run again once the database is back (tasks are idempotent).
            raise self._retry_through_broker(exc) from exc
        self._free_slot(kwargs)
        return result

    def _free_slot(self, payload: dict[str, Any]) -> None:
        """A run of a task with a concurrency limit ended: the next held job of its key goes at once
        (the relay's sweep would, a pass later)."""
        limit = CONCURRENCY.get(self.name)
        if limit is not None:
            try:
                engine().admit([(self.name, limit.key_of(payload))])
            except DatabaseError as exc:
                logger.warning("%s: the next held job waits for the relay's sweep (%s)", self.name, exc)

    def report_progress(self, percent: int, message: str = "") -> None:
        """Record how far the job is (0-100) and a short message; watchers see it live. A heartbeat
        of its worker too (tasks.platform.heartbeats)."""
        engine().report_progress(job_id=self.request.id, percent=percent, message=message)
        if self.request.hostname:
            heartbeat_renew(self.request.hostname)

    def on_failure(self, exc: BaseException, task_id: str, args: tuple, kwargs: dict, einfo: Any) -> None:
        # Called in the worker's main process for a hard time limit: the child that ran the task
        # was killed, so __call__ could not record it.
        if isinstance(exc, TimeLimitExceeded):
            engine().fail(
                job_id=task_id,
                number=None,
                error=f"time limit exceeded (hard limit {exc.args[0] if exc.args else ''}s): the worker was replaced",
                traceback="",
                state=Job.State.FAILED,
            )

    def _origin(self) -> str:
        # Private API (django-celery-beat): only its undocumented periodic_task_name header names a run's schedule.
        periodic = getattr(self.request, "periodic_task_name", None)
        return schedule_origins(periodic)[0] if periodic else ""

    def _record_failure(self, exc: Exception, attempt: Attempt) -> None:
        state, error, retry_at = self.failure_outcome(exc, attempt)
        try:
            engine().fail(
                job_id=self.request.id,
                number=attempt.number,
                error=error,
                traceback=traceback.format_exc(),
                state=state,
                retry_at=retry_at,
            )
        except DatabaseError as db_exc:
            raise self._retry_through_broker(db_exc) from exc
        if retry_at is not None:
            # Shown as RETRY in Flower; the relay publishes the job again at retry_at.
            raise Retry(exc=exc, when=retry_at) from exc

    def failure_outcome(self, exc: BaseException, attempt: Attempt) -> tuple[str, str, datetime | None]:
        """What a failed run means: the job's state (retrying, failed or dead), its error, and
        when to run again (retrying only)."""
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, SoftTimeLimitExceeded):
            return Job.State.FAILED, "time limit exceeded (soft limit): the task was stopped", None
        if isinstance(exc, (*ALWAYS_PERMANENT, *self.permanent_errors)):
            return Job.State.DEAD, error, None
        if attempt.last:
            return Job.State.DEAD, f"{error} (gave up after {attempt.used} attempts)", None
        retry_at = timezone.now() + backoff_delay(
            attempt.used,
            base=self.backoff_base if self.backoff_base is not None else settings.TASK_BACKOFF_BASE_SECONDS,
            ceiling=self.backoff_max or settings.TASK_BACKOFF_MAX_SECONDS,
        )
        return Job.State.RETRYING, error, retry_at

    def _retry_through_broker(self, exc: DatabaseError) -> Retry:
        """The database is unreachable, so the ledger cannot schedule the retry: the broker does."""
        delay = backoff_delay(self.request.retries + 1, base=max(settings.TASK_BACKOFF_BASE_SECONDS, 1), ceiling=60)
        return self.retry(exc=exc, countdown=delay.total_seconds(), max_retries=LEDGER_OUTAGE_MAX_RETRIES)


def ledger_task(
    *,
    name: str,
    payload: type[BaseModel],
    public: bool = False,
    schedulable: bool = False,
    concurrency: Limit | None = None,
    rate: Rate | None = None,
    share_by: str | None = None,
    base: type[LedgerTask] | None = None,
    **options: Any,
) -> Callable:
    """Declare a ledger task; the function receives the task and the validated payload model.

    ``public`` tasks may be enqueued by name by any API client; the others (workflow steps,
    deliveries) only by the services that own them. ``schedulable`` ones (and public ones) may be
    put on a beat schedule in admin. ``concurrency``: at most that many of its jobs run at once,
    per key; ``rate``: at most that many start per period, per key; ``share_by``: the payload field
    whose values take turns on a fair-share queue, instead of owners (tasks.platform.concurrency).
    ``base``: a subclass of LedgerTask for the task's class (Django's task API uses one).
    """

    def decorate(function: Callable[[LedgerTask, BaseModel], Any]) -> LedgerTask:
        @functools.wraps(function)
        def run(self: LedgerTask, **kwargs: Any) -> Any:
            return function(self, self.payload_schema.model_validate(kwargs))

        task = shared_task(name=name, base=base or LedgerTask, bind=True, payload_schema=payload, **options)(run)
        LEDGER_TASKS[name] = task
        PAYLOAD_SCHEMAS[name] = payload
        for declared in (concurrency, rate):
            if declared is not None and declared.key is not None and declared.key not in payload.model_fields:
                raise ValueError(f"{name}: the key {declared.key!r} is not a field of its payload")
        if share_by is not None and share_by not in payload.model_fields:
            raise ValueError(f"{name}: share_by {share_by!r} is not a field of its payload")
        if concurrency is not None and rate is not None and concurrency.key != rate.key:
            raise ValueError(f"{name}: its concurrency limit and its rate must count by the same key")
        if rate is not None and options.get("batch_size", 1) > 1:
            raise ValueError(f"{name}: a task with a rate starts its jobs one by one (no batch_size)")
        if concurrency is not None:
            CONCURRENCY[name] = concurrency
        if rate is not None:
            RATES[name] = rate
        if share_by is not None:
            SHARE_BY[name] = share_by
        if public:
            PUBLIC_TASKS[name] = task
        if public or schedulable:
            SCHEDULABLE_TASKS[name] = task
        return task

    return decorate


def public_task(*, name: str, payload: type[BaseModel], audience: Audience, **options: Any) -> Callable:
    """Declare a ledger task that clients may enqueue by name; ``audience`` says which clients."""
    TASK_AUDIENCES[name] = audience
    return ledger_task(name=name, payload=payload, public=True, **options)
