"""OpenTelemetry traces of a job's way: the HTTP request, its publish, the worker's run and the
ledger's writes, one trace.

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set (project.settings):
then ``configure`` installs nothing, imports nothing of the SDK, and every helper below is a
no-op. On, each process sets itself up once:

- web: ``project.asgi`` (and ``project.wsgi``) call ``configure(WEB, web=True)`` before Django's
  handler builds its middleware chain, so the Django instrumentation's middleware is in it;
- worker: each prefork pool process on ``worker_process_init``, after the fork, because a
  ``BatchSpanProcessor``'s export thread does not survive one; a solo or thread pool at
  ``worker_init``. The pool process flushes on ``worker_process_shutdown`` (it leaves through
  ``os._exit``, which runs no ``atexit``);
- relay: ``relay_jobs`` calls ``configure(RELAY, data_stores=False)``, and beat on ``beat_init``
  ``configure(BEAT, data_stores=False)``: only their publishes are traced, not the queries of a
  pass every second.

The well-kept instrumentations do the work: Django (server span), Celery (``apply_async/<task>``
producer span, whose W3C ``traceparent`` travels in the message headers, and ``run/<task>``
consumer span, its child in the worker), Redis and psycopg (the ledger's statements, children of
whichever span is current). The platform adds ``job.id``, ``job.task``, ``job.attempt`` and
``job.queue`` to the publish span (``enqueueing``) and to the run span (``tag_job``).

The context travels with the message, not with the job row: a message published after commit by
the web request belongs to that request's trace; one the relay publishes later (the publish failed,
a delayed job fell due, a retry) starts a trace of its own, found by its ``job.id``. Keeping the
request's ``traceparent`` on the row for that would cost a column and a write on every enqueue for
the rare path; it is not kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

from celery.signals import (
    beat_init,
    before_task_publish,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)
from django.conf import settings

logger = logging.getLogger(__name__)

#: default service names (``OTEL_SERVICE_NAME`` wins)
WEB = "task-platform-web"
WORKER = "task-platform-worker"
RELAY = "task-platform-relay"
BEAT = "task-platform-beat"

#: the SDK's tracer provider once this process is traced
_provider: Any = None
_NOTHING = nullcontext()
#: what the publish span of the message being sent should carry beyond its headers (the attempt)
_publishing: ContextVar[dict[str, Any] | None] = ContextVar("publishing", default=None)


def enabled() -> bool:
    return _provider is not None


def configure(default_service: str, *, web: bool = False, data_stores: bool = True) -> bool:
    """Trace this process from now on, if an OTLP endpoint is set and it is not traced yet; whether
    it started now. ``web``: the Django instrumentation too; ``data_stores``: Redis and psycopg."""
    global _provider
    if _provider is not None or not settings.TRACING:
        return False
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The exporter reads the endpoint, headers and timeouts from the standard OTEL_* variables.
    resource = Resource.create({SERVICE_NAME: settings.OTEL_SERVICE_NAME or default_service})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    if web:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        DjangoInstrumentor().instrument()
    CeleryInstrumentor().instrument()
    if data_stores:
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        RedisInstrumentor().instrument()
        PsycopgInstrumentor().instrument()
    # Connected after the Celery instrumentation's own receiver: its publish span is then current.
    before_task_publish.connect(_tag_publish, weak=False)
    _provider = provider
    logger.info("tracing: %s exports spans over OTLP/HTTP", resource.attributes[SERVICE_NAME])
    return True


def shutdown() -> None:
    """Export what is buffered and stop (the process is ending)."""
    if _provider is not None:
        _provider.shutdown()


def enqueueing(job: Any) -> AbstractContextManager:
    """Around the publish of one job's message: its publish span carries the job's attributes."""
    if _provider is None:
        return _NOTHING
    return _publishing_with({"job.attempt": job.attempts + 1})


def enqueueing_batch(jobs: list[Any]) -> AbstractContextManager:
    """Around the publish of a batch message: its span names the jobs it carries."""
    if _provider is None:
        return _NOTHING
    return _publishing_with({"job.task": jobs[0].task_name, "job.ids": [str(job.pk) for job in jobs]})


@contextmanager
def _publishing_with(attributes: dict[str, Any]) -> Iterator[None]:
    token = _publishing.set(attributes)
    try:
        yield
    finally:
        _publishing.reset(token)


def _tag_publish(headers: dict | None = None, routing_key: str | None = None, **_: Any) -> None:
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.is_recording():
        return
    headers = headers or {}
    attributes = {"job.id": str(headers.get("id", "")), "job.task": headers.get("task", ""), "job.queue": routing_key}
    attributes.update(_publishing.get() or {})
    span.set_attributes({key: value for key, value in attributes.items() if value})


def tag_job(*, job_id: str, task: str, attempt: int, queue: str) -> None:
    """The current span (a task's run span) names the job it runs."""
    if _provider is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(_job_attributes(job_id, task, attempt, queue))


def job_span(*, job_id: str, task: str, attempt: int, queue: str) -> AbstractContextManager:
    """A span for one job of a batch message, child of the batch's run span."""
    if _provider is None:
        return _NOTHING
    from opentelemetry import trace

    return trace.get_tracer(__name__).start_as_current_span(
        f"run_job/{task}", attributes=_job_attributes(job_id, task, attempt, queue)
    )


def current_ids() -> tuple[str, str] | None:
    """The current span's trace and span ids (hex, as the W3C header has them), for log lines."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return (format(context.trace_id, "032x"), format(context.span_id, "016x")) if context.is_valid else None


def _job_attributes(job_id: str, task: str, attempt: int, queue: str) -> dict[str, Any]:
    return {"job.id": str(job_id), "job.task": task, "job.attempt": attempt, "job.queue": queue}


@worker_process_init.connect
def trace_pool_process(**_: Any) -> None:
    configure(WORKER)


@worker_process_shutdown.connect
def flush_pool_process(**_: Any) -> None:
    shutdown()


@worker_init.connect
def trace_worker_without_pool_processes(sender: Any = None, **_: Any) -> None:
    """A solo or thread pool runs tasks in the worker's own process: no fork to wait for."""
    # Private API (Celery): WorkController.pool_cls, a name or the pool class, is not documented.
    if sender is not None and "prefork" not in str(getattr(sender, "pool_cls", "prefork")):
        configure(WORKER)


@beat_init.connect
def trace_beat(**_: Any) -> None:
    """Beat's fired runs are published by beat itself: their publish spans, not its polling."""
    configure(BEAT, data_stores=False)
