"""Worker signal handlers: a bulk worker's lower CPU priority, database connections kept across
tasks, a message the worker refuses marks its ledger row dead, each heartbeat says which queues
this worker consumes (a key per queue that expires unless renewed, read by "why isn't my job
running"), the worker's own heartbeat says it is alive and which jobs it runs, and the lines a
task writes name its job (tasks.platform.logs).

The worker's heartbeat (tasks.platform.heartbeats) beats from ``worker_ready`` to
``worker_shutdown``, which Celery sends once the runs ended.

The refusal handlers run in the worker's main process (the consumer), where Celery rejects or
acknowledges such a message without running it; without them the job would sit ``queued`` in the
ledger forever.

A body the worker cannot decode has no signal: ``tasks.platform.worker.LedgerConsumer`` calls ``mark_dead``.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.signals import (
    heartbeat_sent,
    task_postrun,
    task_prerun,
    task_rejected,
    task_unknown,
    worker_init,
    worker_ready,
    worker_shutdown,
)
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from tasks.platform import cpu_priority, heartbeats, logs
from tasks.platform.engine import engine
from tasks.platform.queues import CONSUMER_TTL_SECONDS, QueueName, consumer_key, platform_redis

logger = logging.getLogger(__name__)

#: the queues this worker process consumes, known once it is ready
_consumed: list[str] = []


@worker_init.connect
def yield_cpu_to_the_web(sender: Any = None, **_: Any) -> None:
    """A worker of the bulk queue alone runs at a lower CPU priority (BULK_WORKER_NICE), it and the
    pool processes it forks, also against programs of other sessions (tasks.platform.cpu_priority):
    its CPU-heavy jobs then take only the cores web, the other queues' workers and the database
    leave idle."""
    if settings.BULK_WORKER_NICE and set(sender.app.amqp.queues.consume_from) == {QueueName.BULK.value}:
        cpu_priority.lower(settings.BULK_WORKER_NICE)


@worker_ready.connect
def remember_consumed_queues(sender: Any = None, **_: Any) -> None:
    _consumed[:] = list(sender.app.amqp.queues.consume_from)
    announce_consumed_queues()


@heartbeat_sent.connect
def announce_consumed_queues(**_: Any) -> None:
    """This worker is alive and consumes its queues: their keys live CONSUMER_TTL_SECONDS more."""
    if not _consumed:
        return
    try:
        with platform_redis().pipeline(transaction=False) as pipeline:
            for queue in _consumed:
                pipeline.set(consumer_key(queue), "1", ex=CONSUMER_TTL_SECONDS)
            pipeline.execute()
    except redis.RedisError as exc:
        logger.warning("queues consumed not announced: %s", exc)


@worker_ready.connect
def start_heartbeat(sender: Any = None, **_: Any) -> None:
    heartbeats.start(sender.hostname)


@worker_shutdown.connect
def stop_heartbeat(**_: Any) -> None:
    heartbeats.stop()


@task_prerun.connect
@task_postrun.connect
def reuse_database_connection(**_: Any) -> None:
    """Keep the connection across tasks unless it is broken or past CONN_MAX_AGE (see celeryconfig)."""
    close_old_connections()


@task_prerun.connect
def name_the_job_in_logs(task_id: str = "", task: Any = None, **_: Any) -> None:
    """Lines written from here to postrun carry the job's id and task (tasks.platform.logs); the
    ledger adds the attempt once it numbered the run."""
    logs.bind(task_id, getattr(task, "name", ""))


@task_postrun.connect
def forget_the_job_in_logs(**_: Any) -> None:
    logs.clear()


@task_unknown.connect
def job_dead_on_unknown_task(
    sender: Any = None, message: Any = None, exc: Any = None, name: str = "", id: str = "", **_: Any
) -> None:
    mark_dead(id, f"undeliverable: unknown task {name!r} (no worker has it registered); the message was dropped")


@task_rejected.connect
def job_dead_on_rejected_message(
    sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any
) -> None:
    headers = getattr(message, "headers", None) or {}
    job_id = headers.get("id") if isinstance(headers, dict) else None
    if not job_id:
        return  # protocol 1 or a foreign message: nothing names a job
    problem = f"{type(exc).__name__}: {exc}" if exc is not None else "not a task message"
    content_type = getattr(message, "content_type", "") or ""
    mark_dead(str(job_id), f"undeliverable: message refused ({content_type}): {problem}; the message was dropped")


def mark_dead(job_id: str, reason: str) -> None:
    # The worker's main process has no request cycle to drop a connection the server closed.
    close_old_connections()
    try:
        if engine().mark_undeliverable(job_id=job_id, reason=reason):
            logger.error("job %s is dead: %s", job_id, reason)
    except DatabaseError:
        # The message is already gone; the row stays as it was and the log says why.
        logger.exception("could not mark job %s dead (%s)", job_id, reason)
