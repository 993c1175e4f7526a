"""Flower handlers of the platform: retry and revoke (API and task page), the ledger view of a task,
dead letters, and pause / resume of queues (broker page) and tasks (task page).

Every handler subclasses Flower's, so Flower's basic auth, its cross-site check on POST (Fetch
metadata / Origin: a browser holding the basic-auth credentials cannot be made to post from another
site) and its read-only mode apply. Retry and discard go through the platform's one recovery
service (tasks.platform.services.recovery), which replays the arguments stored in the ledger at enqueue,
never Flower's truncated reprs. Revoke (the task page's Revoke and Terminate buttons) is the same
service's cancel, recorded in the ledger, so a retry undoes it: Celery's revoke would make every
worker drop any later message with that id, a retry's included, for hours. Pause and resume go
through the flow service (tasks.platform.services.flow), as from every other door, recorded via
"flower"; they are authorized exactly as retry and dead letters: any basic-auth user, not in
read-only mode, same-site posts only.

The ORM is synchronous: every ledger call runs in Flower's thread pool (``in_thread``), so the
event loop that serves Flower's pages and receives Celery events never waits for the database.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django.db import close_old_connections
from django.utils import timezone

# Private API (Flower): Flower documents no Python API; its handlers are subclassed for its auth, XSRF check, read-only.
from flower.api import BaseApiHandler
from flower.views import BaseHandler
from flower.views.broker import BrokerView
from flower.views.monitor import Metrics
from flower.views.tasks import TaskView
from tornado import web
from tornado.ioloop import IOLoop

from tasks.platform.models import Job, Pause, PauseScope
from tasks.platform.models.jobs import RETRYABLE_STATES
from tasks.platform.queues import QueueName
from tasks.platform.selectors.flow import job_blocked
from tasks.platform.services.flow import UnknownTarget, flow_pause, flow_resume
from tasks.platform.services.recovery import ActionRefused, job_cancel, job_discard, job_retry

logger = logging.getLogger(__name__)

VIA = "flower"
#: newest dead letters the page lists (the total is shown too)
DEAD_LETTERS_SHOWN = 200
#: characters of an error shown in the list (the whole error is in the row's tooltip)
ERROR_SHOWN = 160


async def in_thread(function: Callable[..., Any], /, **kwargs: Any) -> Any:
    """Run an ORM call in Flower's thread pool, with Django's connection housekeeping around it."""

    def call() -> Any:
        close_old_connections()
        try:
            return function(**kwargs)
        finally:
            close_old_connections()

    return await IOLoop.current().run_in_executor(None, call)


def _job_id(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _ledger_view(job: Job) -> dict[str, Any]:
    return {
        "task_id": str(job.pk),
        "task": job.task_name,
        "queue": job.queue,
        "state": job.state,
        "error": job.error,
        "attempts": job.attempts,
        "retryable": job.state in RETRYABLE_STATES,
        "finished": job.finished,
    }


def ledger_job(*, job_id: uuid.UUID | None) -> dict[str, Any] | None:
    job = Job.objects.filter(pk=job_id).first() if job_id else None
    return _ledger_view(job) if job else None


class PlatformHandlerMixin:
    """What the platform's handlers share: who is acting (for the log) and read-only mode."""

    def acting_user(self) -> str:
        """The basic-auth user name; Flower's users are not Django users, so the log records it."""
        header = self.request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme != "Basic":
            return "?"
        try:
            return base64.b64decode(credentials).decode().partition(":")[0]
        except (binascii.Error, UnicodeDecodeError):
            return "?"

    def refuse_if_read_only(self) -> None:
        # Private API (Flower): its application's options are the only record of its read-only mode.
        if self.application.options.read_only:
            raise web.HTTPError(403, "read only mode is enabled")


class JsonApiHandler(PlatformHandlerMixin, BaseApiHandler):
    """Flower API handler that answers errors as the platform's API does: JSON {"detail", "code"}."""

    def answer(self, status: int, body: dict[str, Any]) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(body)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        # Private API (tornado): send_error's reason phrase is stored only in _reason; no getter exists.
        detail = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
        codes = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
        if status_code == 401:
            # So a browser holding credentials for Flower's realm sends them (and a person is asked).
            self.set_header("WWW-Authenticate", 'Basic realm="flower"')
            detail = "credentials required (basic auth)"
        self.answer(status_code, {"detail": detail, "code": codes.get(status_code, "error")})


class TaskRetryApi(JsonApiHandler):
    @web.authenticated
    async def post(self, task_id: str) -> None:
        """Retry a failed, dead or cancelled task through the platform's retry service.

        202 {"task_id", "state", "url", "status_url", "detail"}: the job runs again under the same
        id (the Celery task id is the job id), with the arguments stored at enqueue. 404 for a task
        the ledger does not know, 409 for one in another state; JSON {"detail", "code"} either way.
        """
        self.refuse_if_read_only()
        job_id = _job_id(task_id)
        try:
            if job_id is None:
                raise Job.DoesNotExist
            job = await in_thread(job_retry, job_id=job_id, by=None, via=VIA)
        except Job.DoesNotExist:
            self.answer(
                404,
                {
                    "detail": f"task {task_id} is not in the job ledger: only ledger jobs can be retried",
                    "code": "not_found",
                },
            )
            return
        except ActionRefused as exc:
            current = await in_thread(ledger_job, job_id=job_id)
            self.answer(409, {"detail": str(exc), "code": "not_retryable", "state": (current or {}).get("state")})
            return
        logger.info("job %s (%s) retried via Flower by %s", job.pk, job.task_name, self.acting_user())
        self.answer(
            202,
            {
                "task_id": str(job.pk),
                "state": job.state,
                "url": self.reverse_url("task", str(job.pk)),
                "status_url": self.reverse_url("platform_task_ledger", str(job.pk)),
                "detail": "retried: the same task id runs again with the arguments stored at enqueue",
            },
        )


class TaskRevokeApi(JsonApiHandler):
    @web.authenticated
    async def post(self, task_id: str) -> None:
        """Flower's revoke (``terminate`` true or false): the platform's cancel of a ledger job.

        The job is cancelled in the ledger, so no worker runs it, now or after a restart; a running
        one is terminated (with either button: a cancelled run's outcome would not be recorded
        anyway). A retry runs it again. 200 {"message", "task_id", "state", "status_url",
        "detail"}; 409 for a finished job; 404 for a task the ledger does not know (a
        ``jobs.run_batch`` message: cancel its jobs one by one), which Celery's revoke is not
        used for either. JSON {"detail", "code"} on errors.
        """
        self.refuse_if_read_only()
        job_id = _job_id(task_id)
        try:
            if job_id is None:
                raise Job.DoesNotExist
            job = await in_thread(job_cancel, job_id=job_id, by=None, via=VIA)
        except Job.DoesNotExist:
            self.answer(
                404,
                {
                    "detail": f"task {task_id} is not in the job ledger: only ledger jobs can be revoked "
                    "(cancelled); a batch message's jobs are cancelled one by one",
                    "code": "not_found",
                },
            )
            return
        except ActionRefused as exc:
            current = await in_thread(ledger_job, job_id=job_id)
            self.answer(409, {"detail": str(exc), "code": "not_cancellable", "state": (current or {}).get("state")})
            return
        logger.info("job %s (%s) cancelled via Flower's revoke by %s", job.pk, job.task_name, self.acting_user())
        self.answer(
            200,
            {
                "message": f"Cancelled '{job.pk}' in the job ledger",
                "task_id": str(job.pk),
                "state": job.state,
                "status_url": self.reverse_url("platform_task_ledger", str(job.pk)),
                "detail": "cancelled: no worker runs it (a running one was terminated); retry runs it again",
            },
        )


class TaskSendRefused(JsonApiHandler):
    """Flower's apply, async-apply and send-task: any task, any arguments, past the ledger. Jobs
    are started through the platform (API, admin, schedules), where payloads are validated."""

    @web.authenticated
    def post(self, task_name: str) -> None:
        self.answer(
            403,
            {
                "detail": "starting tasks from Flower is turned off: enqueue through the platform's API, "
                "and retry failed jobs with /api/task/retry/<task-id>",
                "code": "forbidden",
            },
        )


class TaskLedgerApi(JsonApiHandler):
    @web.authenticated
    async def get(self, task_id: str) -> None:
        """The task's job in the ledger: state, error, attempts (what the task page follows after a retry)."""
        view = await in_thread(ledger_job, job_id=_job_id(task_id))
        if view is None:
            self.answer(404, {"detail": f"task {task_id} is not in the job ledger", "code": "not_found"})
            return
        self.answer(200, {**view, "url": self.reverse_url("task", view["task_id"])})


# --- flow control: pause and resume ------------------------------------------------------------


@dataclass(frozen=True)
class FlowTarget:
    """A queue or a task as the pause buttons show it: paused or not, and by whom since when."""

    scope: str
    name: str
    paused: bool
    note: str = ""


def _flow_target(scope: str, name: str, pause: Pause | None) -> FlowTarget:
    if pause is None:
        return FlowTarget(scope, name, paused=False)
    by = pause.by.get_username() if pause.by else "the system"
    return FlowTarget(scope, name, paused=True, note=f"by {by} via {pause.via} since {pause.at:%Y-%m-%d %H:%M:%S} UTC")


def queues_flow() -> list[FlowTarget]:
    """The platform's queues, each paused or not."""
    pauses = {pause.name: pause for pause in Pause.objects.select_related("by").filter(scope=PauseScope.QUEUE)}
    return [_flow_target(PauseScope.QUEUE, name, pauses.get(name)) for name in QueueName.values]


def task_page_ledger(*, job_id: uuid.UUID | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The ledger view of the task page's job, and its flow: why it is not running (None when
    nothing holds it) and whether its task is paused."""
    job = Job.objects.filter(pk=job_id).first() if job_id else None
    if job is None:
        return None, None
    blocked = job_blocked(job)
    pause = Pause.objects.select_related("by").filter(scope=PauseScope.TASK, name=job.task_name).first()
    flow = {
        "blocked": blocked.as_dict() if blocked else None,
        "task": _flow_target(PauseScope.TASK, job.task_name, pause),
    }
    return _ledger_view(job), flow


def flow_apply(*, action: str, scope: str, name: str) -> int:
    """Pause or resume through the flow service (UnknownTarget for no such queue or task); how many
    held jobs a resume released."""
    if action == "pause":
        flow_pause(scope=scope, name=name, by=None, via=VIA)
        return 0
    return flow_resume(scope=scope, name=name, by=None, via=VIA)


def flow_notice(handler: web.RequestHandler) -> str:
    """The outcome of the last pause or resume, from the redirect's query (a fixed word and a
    number, never free text)."""
    outcome = handler.get_query_argument("flow", "")
    if outcome == "paused":
        return "Paused: its jobs wait, held, until it is resumed; running ones finish."
    if outcome == "resumed":
        try:
            released = int(handler.get_query_argument("released", "0"))
        except ValueError:
            released = 0
        return f"Resumed: {_plural(released, 'held job')} released to their queue."
    return ""


class FlowView(PlatformHandlerMixin, BaseHandler):
    """Pause or resume a queue (the broker page's buttons) or a task (the task page's), then back
    to the page the button was on."""

    @web.authenticated
    async def post(self) -> None:
        self.refuse_if_read_only()
        action = self.get_body_argument("action", "")
        if action not in ("pause", "resume"):
            raise web.HTTPError(400, "unknown action: pause or resume")
        scope, name = self.get_body_argument("scope", ""), self.get_body_argument("name", "")
        try:
            released = await in_thread(flow_apply, action=action, scope=scope, name=name)
        except UnknownTarget as exc:
            raise web.HTTPError(404, str(exc)) from None
        logger.info("%s %s %sd via Flower by %s", scope, name, action, self.acting_user())
        # Back to the task page the button was on (a job id, checked), else to the broker page.
        task_id = _job_id(self.get_body_argument("task_id", ""))
        back = self.reverse_url("task", str(task_id)) if task_id else self.reverse_url("broker")
        outcome = {"flow": "paused" if action == "pause" else "resumed", "released": released}
        self.redirect(f"{back}?{urlencode(outcome)}", status=303)


# Private API (Flower): its broker page renders "broker.html" from get(); nothing public adds to that page.
class PlatformBrokerView(BrokerView):
    """Flower's broker page, with a Pause or Resume button for each of the platform's queues."""

    _queues_flow: list[FlowTarget] | None = None

    @web.authenticated
    async def get(self) -> None:
        self._queues_flow = await in_thread(queues_flow)
        await super().get()

    def render(self, template_name: str, **kwargs: Any) -> None:
        if template_name == "broker.html":
            template_name = "platform/broker.html"
            kwargs["queues_flow"] = self._queues_flow or []
            kwargs["flow_notice"] = flow_notice(self)
            # Private API (Flower): its application's options are the only record of its read-only mode.
            kwargs["read_only"] = self.application.options.read_only
        super().render(template_name, **kwargs)


# Private API (Flower): its task page renders "task.html" from get(); nothing public adds to that page.
class PlatformTaskView(TaskView):
    """Flower's task page, rendered through a template that extends Flower's with the ledger panel:
    the job's ledger state, Retry, why it is not running, and Pause / Resume of its task."""

    _ledger: dict[str, Any] | None = None
    _flow: dict[str, Any] | None = None

    @web.authenticated
    async def get(self, task_id: str) -> None:
        self._ledger, self._flow = await in_thread(task_page_ledger, job_id=_job_id(task_id))
        super().get(task_id)

    def render(self, template_name: str, **kwargs: Any) -> None:
        if template_name == "task.html":
            template_name = "platform/task.html"
            kwargs["ledger"] = self._ledger
            kwargs["flow"] = self._flow
            kwargs["flow_notice"] = flow_notice(self)
        super().render(template_name, **kwargs)


@dataclass(frozen=True)
class DeadLetter:
    id: str
    task: str
    queue: str
    error: str
    error_shown: str
    attempts: int
    died_at: datetime
    age: str


def _age(since: datetime, now: datetime) -> str:
    seconds = max(0, int((now - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def dead_letters(*, limit: int = DEAD_LETTERS_SHOWN) -> tuple[list[DeadLetter], int]:
    """The newest dead jobs nobody has discarded, and how many there are in all."""
    jobs = Job.objects.filter(state=Job.State.DEAD, discarded_at__isnull=True)
    now = timezone.now()
    letters = []
    for job in jobs.order_by("-finished_at", "-created_at")[:limit]:
        died_at = job.finished_at or job.created_at
        first_line = job.error.strip().splitlines()[0] if job.error.strip() else ""
        shown = first_line if len(first_line) <= ERROR_SHOWN else first_line[: ERROR_SHOWN - 1] + "…"
        letters.append(
            DeadLetter(
                id=str(job.pk),
                task=job.task_name,
                queue=job.queue,
                error=job.error,
                error_shown=shown,
                attempts=job.attempts,
                died_at=died_at,
                age=_age(died_at, now),
            )
        )
    return letters, jobs.count()


def dead_letters_apply(*, action: str, job_ids: list[uuid.UUID]) -> tuple[int, int]:
    """Retry or discard each job through the recovery service; returns (done, skipped).

    A job someone else already handled (no longer dead, or gone) is skipped, not an error.
    """
    service = job_retry if action == "retry" else job_discard
    done = skipped = 0
    for job_id in job_ids:
        try:
            service(job_id=job_id, by=None, via=VIA)
        except (ActionRefused, Job.DoesNotExist):
            skipped += 1
        else:
            done += 1
    return done, skipped


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


class DeadLettersView(PlatformHandlerMixin, BaseHandler):
    """Dead jobs with task, error, attempts and age; retry one, retry selected, discard selected."""

    @web.authenticated
    async def get(self) -> None:
        letters, total = await in_thread(dead_letters)
        self.render(
            "platform/dead_letters.html",
            letters=letters,
            total=total,
            notice=self._notice(),
            # Private API (Flower): its application's options are the only record of its read-only mode.
            read_only=self.application.options.read_only,
        )

    @web.authenticated
    async def post(self) -> None:
        self.refuse_if_read_only()
        one = self.get_body_argument("retry_one", "")
        action = "retry" if one else self.get_body_argument("action", "")
        if action not in ("retry", "discard"):
            raise web.HTTPError(400, "unknown action: retry or discard")
        values = [one] if one else self.get_body_arguments("job_id")
        job_ids = [job_id for job_id in map(_job_id, values) if job_id]
        done, skipped = await in_thread(dead_letters_apply, action=action, job_ids=job_ids)
        logger.info(
            "dead letters: %s %d job(s) via Flower by %s (%d skipped)", action, done, self.acting_user(), skipped
        )
        outcome = {"action": action, "done": done, "skipped": skipped}
        self.redirect(f"{self.reverse_url('platform_dead_letters')}?{urlencode(outcome)}", status=303)

    def _notice(self) -> str:
        """The outcome of the last action, from the redirect's query (numbers only, never free text)."""
        action = self.get_query_argument("action", "")
        if action not in ("retry", "discard"):
            return ""
        try:
            done = int(self.get_query_argument("done", "0"))
            skipped = int(self.get_query_argument("skipped", "0"))
        except ValueError:
            return ""
        if done == skipped == 0:
            return "Nothing selected."
        verb = "Retried" if action == "retry" else "Discarded"
        notice = f"{verb} {_plural(done, 'job')}."
        if skipped:
            notice += f" {_plural(skipped, 'job')} skipped: no longer a dead letter (already handled?)."
        return notice


# Private API (Flower): its /metrics handler is subclassed; nothing public runs code before a scrape.
class PlatformMetrics(Metrics):
    """Flower's /metrics, with the ledger and queue gauges read (off the event loop) just before.

    Behind the same basic auth as every other page (Flower leaves its own open): the ledger's
    counts are not for anyone who can reach the port. Prometheus scrapes with ``basic_auth``.
    """

    @web.authenticated
    async def get(self) -> None:
        await self.application.ledger_metrics.refresh()
        await super().get()


def platform_handlers() -> list:
    return [
        web.url(r"/api/task/retry/(.+)", TaskRetryApi, name="platform_task_retry"),
        web.url(r"/api/task/revoke/(.+)", TaskRevokeApi, name="platform_task_revoke"),
        web.url(r"/api/task/ledger/(.+)", TaskLedgerApi, name="platform_task_ledger"),
        web.url(r"/task/(.+)", PlatformTaskView, name="platform_task"),
        web.url(r"/broker", PlatformBrokerView, name="platform_broker"),
        web.url(r"/flow", FlowView, name="platform_flow"),
        web.url(r"/dead-letters", DeadLettersView, name="platform_dead_letters"),
        *((rf"/api/task/{route}/(.+)", TaskSendRefused) for route in ("apply", "async-apply", "send-task")),
        (r"/metrics", PlatformMetrics),
    ]
