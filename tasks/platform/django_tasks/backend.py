"""The platform's TASKS backend: Django's ``@task`` functions run as ledger jobs.

Each function decorated with Django's ``@task`` (any function whose task names this backend) is
declared a ledger task when its module is imported: its name is the function's import path
(``myapp.tasks.send_welcome``), its payload schema is made from the function's signature (or is
the pydantic model given as ``@task(payload=...)``), and it may be scheduled in admin. So a worker
knows it as it knows the platform's own tasks: every process imports each installed app's
``tasks`` module and the modules listed in the backend's ``OPTIONS["MODULES"]`` when Django starts
(``discover``), before a worker forks its pool or a relay publishes a job.

``.enqueue()`` goes through the enqueue service (``job_enqueue``): the job's row is written in the
caller's transaction and its message is published after the commit, and the TaskResult returned
at once has the job's id. ``get_result`` reads the ledger.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import datetime
from importlib import import_module
from typing import Any

from django.utils.module_loading import autodiscover_modules, import_string
from pydantic import BaseModel

from tasks.platform.concurrency import Limit, Rate
from tasks.platform.django_tasks import mapping
from tasks.platform.django_tasks.compat import (
    DEFAULT_TASK_QUEUE_NAME,
    BaseTaskBackend,
    InvalidTask,
    InvalidTaskBackend,
    Task,
    TaskContext,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    task_backends,
    task_enqueued,
    task_finished,
    task_started,
)
from tasks.platform.errors import PermanentError
from tasks.platform.models import Job, JobAttempt
from tasks.platform.queues import QueueName
from tasks.platform.registry import LEDGER_TASKS, LedgerTask, ledger_task
from tasks.platform.services.jobs import EnqueueError, InvalidPayload, job_enqueue

#: ledger task name (the function's import path) -> the Django task declared under it
DJANGO_TASKS: dict[str, Task] = {}

#: who owns the jobs enqueued in this context (see ``owned_by``); None: no owner, as beat's runs
_owner: ContextVar[Any] = ContextVar("django_task_owner", default=None)


@contextlib.contextmanager
def owned_by(user: Any) -> Iterator[None]:
    """Jobs ``.enqueue()``\\ d inside are ``user``'s: they see them in the API and on the job page
    as any of their jobs. Django's API names no owner; without this a job has none (staff see it)."""
    token = _owner.set(user)
    try:
        yield
    finally:
        _owner.reset(token)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PlatformTask(Task):
    """Django's Task, with what a platform task may also declare (all optional, so code written
    against Django's API alone runs unchanged): ``payload``, a pydantic model its arguments are
    validated with instead of the signature (the function gets its validated values by name);
    ``max_attempts``; ``concurrency``, ``rate`` and ``share_by`` (flow control, keyed by argument
    names; tasks.platform.concurrency)."""

    payload: type[BaseModel] | None = None
    max_attempts: int | None = None
    concurrency: Limit | None = None
    rate: Rate | None = None
    share_by: str | None = None


class DjangoApiTask(LedgerTask):
    """The ledger task of a Django task: a failure's error names the exception's import path, so
    ``TaskResult.errors`` can name its class."""

    django_task: Task
    #: the queue of its jobs when an enqueue names none (a schedule's, a retry's): its queue_name
    declared_queue: str | None = None

    def failure_outcome(self, exc: BaseException, attempt: Any) -> tuple[str, str, datetime | None]:
        state, error, retry_at = super().failure_outcome(exc, attempt)
        short = f"{type(exc).__name__}: "
        if error.startswith(short):
            error = f"{mapping.exception_path(type(exc))}: {error[len(short) :]}"
        return state, error, retry_at


class PlatformTaskBackend(BaseTaskBackend):
    """``TASKS = {"default": {"BACKEND": "tasks.platform.django_tasks.PlatformTaskBackend"}}``.

    ``QUEUES``: the queues its tasks may name (every declared queue when not given);
    ``OPTIONS["MODULES"]``: modules of Django tasks outside the apps' ``tasks`` modules.
    """

    task_class = PlatformTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict) -> None:
        super().__init__(alias, params)
        self.queues = set(params.get("QUEUES") or QueueName.values)
        if unknown := sorted(self.queues - set(QueueName.values)):
            raise InvalidTaskBackend(f"TASKS[{alias!r}]: no such queue {unknown}; the queues are {QueueName.values}")
        self.modules = list(self.options.get("MODULES", []))

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        _declare(task)

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        # Django's own checks of the arguments (TypeError or ValueError), before anything is written.
        result = TaskResult(
            task=task,
            id="",
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            last_attempted_at=None,
            finished_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        call_args, call_kwargs = mapping.json_round_trip(result.args), mapping.json_round_trip(result.kwargs)
        payload = mapping.bind(mapping.parameters(task.func, takes_context=task.takes_context), call_args, call_kwargs)
        try:
            job = job_enqueue(
                task_name=task.module_path,
                payload=payload,
                owner=_owner.get(),
                queue=task.queue_name,
                priority=mapping.platform_priority(task.priority),
                delay=task.run_after,
            )
        except InvalidPayload as exc:
            errors = "; ".join(f"{e['field'] or 'arguments'}: {e['message']}" for e in exc.details.get("errors", []))
            raise ValueError(f"{task.module_path}: arguments refused ({errors})") from None
        except EnqueueError as exc:
            raise InvalidTask(f"{task.module_path}: {exc}") from None
        result = dataclasses.replace(result, id=str(job.pk), enqueued_at=job.created_at)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        try:
            job_id = uuid.UUID(str(result_id))
        except ValueError:
            raise TaskResultDoesNotExist(result_id) from None
        job = Job.objects.filter(pk=job_id).first()
        task = _django_task(job.task_name) if job is not None else None
        if task is None:
            raise TaskResultDoesNotExist(result_id)
        return ledger_result(task, job, list(JobAttempt.objects.filter(job=job).order_by("number")), self.alias)


def ledger_result(task: Task, job: Job, attempts: list[JobAttempt], alias: str) -> TaskResult:
    """The TaskResult a job's row and attempts tell: status, times, each failed attempt's error
    (the last one's with its traceback), and the return value once it succeeded."""
    params = mapping.parameters(task.func, takes_context=task.takes_context)
    schema = LEDGER_TASKS[job.task_name].payload_schema
    try:
        args, kwargs = _arguments(task, params, schema.model_validate(job.payload))
    except ValueError:  # a payload an edit or an older signature left: shown as stored
        args, kwargs = [], dict(job.payload)
    failed = [a for a in attempts if a.outcome in (JobAttempt.Outcome.FAILED, JobAttempt.Outcome.LOST)]
    errors = [
        TaskError(
            exception_class_path=mapping.error_class_path(attempt.error),
            traceback=(job.traceback if attempt is failed[-1] and job.traceback else attempt.error),
        )
        for attempt in failed
    ]
    if not failed and job.error and job.state in (Job.State.FAILED, Job.State.DEAD):
        errors.append(TaskError(exception_class_path=mapping.error_class_path(job.error), traceback=job.traceback))
    finished = job.state in (Job.State.SUCCEEDED, Job.State.FAILED, Job.State.DEAD, Job.State.CANCELLED)
    shown = task.using(
        priority=mapping.django_priority(job.priority, task.priority),
        queue_name=job.queue,
        run_after=job.run_at,
    )
    result = TaskResult(
        task=shown,
        id=str(job.pk),
        status=mapping.result_status(job.state),
        enqueued_at=job.created_at,
        started_at=attempts[0].started_at if attempts else job.started_at,
        last_attempted_at=job.started_at,
        finished_at=job.finished_at if finished else None,
        args=args,
        kwargs=kwargs,
        backend=alias,
        errors=errors,
        worker_ids=[attempt.worker for attempt in attempts],
    )
    if job.state == Job.State.SUCCEEDED:
        # Private API (django.tasks): TaskResult has no public way to set the return value; its
        # own backends set the field as this does.
        object.__setattr__(result, "_return_value", job.result)
    return result


def discover() -> None:
    """Import every module that declares Django tasks: each installed app's ``tasks`` module (where
    Celery looks too) and each backend's ``OPTIONS["MODULES"]``. Run by every process when Django
    starts, so workers, the relay, beat and Flower know the tasks before they publish or run one."""
    autodiscover_modules("tasks")
    for backend in task_backends.all():
        for module in getattr(backend, "modules", ()):
            import_module(module)


def _declare(task: Task) -> None:
    """Declare ``task``'s function a ledger task, once (``using()`` copies share it)."""
    name = task.module_path
    declared = DJANGO_TASKS.get(name)
    if declared is not None:
        if declared.func is not task.func:
            raise InvalidTask(f"{name}: another function is declared under this name")
        return
    if name in LEDGER_TASKS:
        raise InvalidTask(f"{name}: a platform task has this name")
    if len(name) > Job._meta.get_field("task_name").max_length:
        raise InvalidTask(f"{name}: the import path is too long for a task name")
    params = mapping.parameters(task.func, takes_context=task.takes_context)
    options = _platform_options(task)
    schema = options.pop("payload")
    try:
        if schema is None:
            schema = mapping.signature_schema(name, params)
        elif reason := mapping.payload_schema_fits(schema, params):
            raise ValueError(reason)
        ledger_task(name=name, payload=schema, schedulable=True, base=DjangoApiTask, django_task=task, **options)(_run)
    except ValueError as exc:
        raise InvalidTask(f"{name}: {exc}") from None
    DJANGO_TASKS[name] = task


def _platform_options(task: Task) -> dict[str, Any]:
    options = {"payload": getattr(task, "payload", None)}
    for option in ("max_attempts", "concurrency", "rate", "share_by"):
        if (value := getattr(task, option, None)) is not None:
            options[option] = value
    if task.queue_name != DEFAULT_TASK_QUEUE_NAME:
        # The queue a schedule or a retry without one takes (tasks.platform.services.jobs.task_queue).
        options["declared_queue"] = task.queue_name
    return options


def _django_task(name: str) -> Task | None:
    """The Django task of a ledger task name, importing its module if no code did yet."""
    if name not in DJANGO_TASKS and name not in LEDGER_TASKS and "." in name:
        with contextlib.suppress(ImportError):
            import_string(name)
    return DJANGO_TASKS.get(name)


def _arguments(task: Task, params: list[inspect.Parameter], payload: BaseModel) -> tuple[list, dict[str, Any]]:
    if getattr(task, "payload", None) is not None:  # a declared schema: its validated values, by name
        return [], {name: getattr(payload, name) for name in payload.model_fields_set}
    return mapping.call_arguments(params, payload)


def _run(celery_task: DjangoApiTask, payload: BaseModel) -> Any:
    """A worker's run of a Django task's job: the function, called as Django would call it."""
    task = celery_task.django_task
    params = mapping.parameters(task.func, takes_context=task.takes_context)
    args, kwargs = _arguments(task, params, payload)
    backend = task.get_backend()
    # The job as the ledger has it now (started, this attempt counted): the context's attempt
    # number, and what Django's task_started and task_finished signals carry.
    result = backend.get_result(celery_task.request.id)
    task_started.send(type(backend), task_result=result)
    try:
        value = (
            task.call(TaskContext(task_result=result), *args, **kwargs)
            if task.takes_context
            else task.call(*args, **kwargs)
        )
        try:
            returned = mapping.json_round_trip(value)
        except (TypeError, ValueError) as exc:
            raise PermanentError(f"the return value cannot be stored as JSON ({exc})") from exc
    except Exception:
        # Private API (django.tasks): TaskResult's fields are set as Django's own backends set them.
        object.__setattr__(result, "status", TaskResultStatus.FAILED)
        task_finished.send(type(backend), task_result=result)
        raise
    object.__setattr__(result, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(result, "_return_value", returned)
    task_finished.send(type(backend), task_result=result)
    return returned
