"""A worker's heartbeat: that it is alive, and which jobs it runs in which process.

A thread of the worker's main process writes it every WORKER_HEARTBEAT_SECONDS, from
``worker_ready`` to ``worker_shutdown`` (tasks.platform.signals): Celery's own heartbeat waits for
the event loop, which a solo pool blocks for as long as a task runs. One key per worker
(``worker_key``) that expires WORKER_LOST_AFTER seconds after the last heartbeat, holding each
running job with the pid of the process that runs it; a job's progress report renews the key from
the process running it. tasks.platform.selectors.liveness reads it: the relay recovers the started
jobs of a worker whose key is gone, and a duplicate message of a job whose run goes on is dropped.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from typing import Any

import redis
from celery.worker import state as worker_state
from django.conf import settings

from tasks.platform.engine.publish import BATCH_TASK
from tasks.platform.queues import WORKER_HEARTBEAT_SECONDS, platform_redis, worker_key

logger = logging.getLogger(__name__)

#: this worker's heartbeat thread, the event that stops it and the hostname it beats for (in the
#: main process, once the worker is ready)
_beating: dict[str, Any] = {}
#: when this process last renewed its worker's heartbeat from a progress report (monotonic)
_renewed_at = [float("-inf")]


def start(hostname: str) -> None:
    """Beat for the worker ``hostname`` from a thread of this (its main) process."""
    stopped = threading.Event()
    thread = threading.Thread(target=_beat, args=(hostname, stopped), name="platform-heartbeat", daemon=True)
    _beating.update(hostname=hostname, stopped=stopped, thread=thread)
    thread.start()


def stop() -> None:
    """The worker's runs ended: it is gone at once, not a WORKER_LOST_AFTER later."""
    if not _beating:
        return
    _beating["stopped"].set()
    _beating["thread"].join(WORKER_HEARTBEAT_SECONDS)  # its last heartbeat is not written after the delete
    try:
        platform_redis().delete(worker_key(_beating["hostname"]))
    except redis.RedisError as exc:
        logger.warning("heartbeat key not deleted (it expires): %s", exc)


def renew(hostname: str) -> None:
    """A sign of life from any process of the worker ``hostname`` (a job's progress report): its
    latest heartbeat lives WORKER_LOST_AFTER more, even while its main process does not answer.
    At most once a WORKER_HEARTBEAT_SECONDS per process, however often a task reports."""
    now = time.monotonic()
    if now - _renewed_at[0] < WORKER_HEARTBEAT_SECONDS:
        return
    _renewed_at[0] = now
    try:
        platform_redis().expire(worker_key(hostname), settings.WORKER_LOST_AFTER)
    except redis.RedisError as exc:
        logger.warning("heartbeat not renewed: %s", exc)


def _beat(hostname: str, stopped: threading.Event) -> None:
    for beat in itertools.count():
        # Its time to live goes with it: a reader tells its age from the key's, by Redis's clock.
        heartbeat = json.dumps({"beat": beat, "ttl": settings.WORKER_LOST_AFTER, "runs": _runs()})
        try:
            platform_redis().set(worker_key(hostname), heartbeat, ex=settings.WORKER_LOST_AFTER)
        except redis.RedisError as exc:
            logger.warning("heartbeat not sent: %s", exc)
        if stopped.wait(WORKER_HEARTBEAT_SECONDS):
            return


def _runs() -> list[tuple[str, int]]:
    """(job id, pid of the process running it) of each job this worker runs; a batch's message
    runs each of its jobs."""
    # Private API (Celery): celery.worker.state.active_requests is the worker's record of the runs
    # its pool has accepted; only a remote control request through the broker reads it otherwise.
    # Copied in one step (no Python code runs while a set is copied), as the main thread changes it.
    requests = tuple(worker_state.active_requests)
    runs = []
    for request in requests:
        if request.name == BATCH_TASK:
            runs.extend((job_id, request.worker_pid) for job_id, _ in request.kwargs.get("jobs", ()))
        else:
            runs.append((request.id, request.worker_pid))
    return runs
