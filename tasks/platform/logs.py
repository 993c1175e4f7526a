"""Log lines that say which job wrote them: ``LOG_FORMAT=json`` makes every process write one JSON
object a line (python-json-logger), and every line written while a task runs carries ``job_id``,
``task`` and ``attempt`` (and ``trace_id``, ``span_id`` when tracing is on).

Which job runs is a context variable: the worker's ``task_prerun`` binds the job id and task
(tasks.platform.signals), ``LedgerTask.__call__`` adds the attempt once the ledger numbered it, a
batch binds each of its jobs in turn, and ``task_postrun`` clears it. A context variable, not a
global: under a thread pool each thread runs its own task.

Django's ``LOGGING`` (project.settings) puts ``json_formatter`` and ``JobContextFilter`` on the
console handler of web, relay and beat. A Celery worker replaces the root logger's handlers with
its own (stderr redirected, a task-name format); ``after_setup_logger`` and
``after_setup_task_logger`` give those the same formatter and filter. In text mode nothing is added.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from celery.signals import after_setup_logger, after_setup_task_logger
from django.conf import settings
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from tasks.platform import tracing


@dataclass(frozen=True)
class JobLog:
    job_id: str
    task: str
    #: None until the ledger numbered the run (lines of the start itself)
    attempt: int | None = None


_current: ContextVar[JobLog | None] = ContextVar("job_log", default=None)


def bind(job_id: str, task: str, attempt: int | None = None) -> None:
    """Lines written from now on in this context name this job (until ``clear``)."""
    _current.set(JobLog(str(job_id), task, attempt))


def clear() -> None:
    _current.set(None)


def current() -> JobLog | None:
    return _current.get()


class JobContextFilter(logging.Filter):
    """Adds the running job's fields, and the current span's ids, to each record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = _current.get()
        if job is not None:
            record.job_id = job.job_id
            record.task = job.task
            record.attempt = job.attempt
        if ids := tracing.current_ids():
            record.trace_id, record.span_id = ids
        return True


def json_formatter() -> logging.Formatter:
    """One JSON object a line: time, level, logger, message, then the record's extra fields."""
    return JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        # uvicorn's copy of each message with terminal colours
        reserved_attrs=[*RESERVED_ATTRS, "color_message"],
    )


@after_setup_logger.connect
@after_setup_task_logger.connect
def worker_json_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    """A Celery worker's handlers write JSON too when LOG_FORMAT says so."""
    if logger is None or settings.LOG_FORMAT != "json":
        return
    for handler in logger.handlers:
        handler.setFormatter(json_formatter())
        if not any(isinstance(existing, JobContextFilter) for existing in handler.filters):
            handler.addFilter(JobContextFilter())
