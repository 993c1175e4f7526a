"""Raw Celery, the counterpart of every figure: no Django, no ledger, no events.

    celery -A bench.raw_app worker -Q raw ...

On the bench's broker (REDIS_URL), with what the platform shares with it: JSON only, late
acknowledgement, one message prefetched per process, no results stored. The chord scenario's
members store theirs in a Redis result backend, as a Celery chord needs.
"""

from __future__ import annotations

import os
import time
from functools import cache

import redis
from celery import Celery

QUEUE = "raw"

# Not the current app: the bench process also runs the platform's app, whose shared tasks must
# stay bound to it.
app = Celery("bench_raw", set_as_current=False)
app.conf.update(
    broker_url=os.environ["REDIS_URL"],
    # Stock kombu's: the bench process also loads the platform's, which installs its own for redis://.
    broker_transport="kombu.transport.redis:Transport",
    result_backend=os.environ["REDIS_URL"],
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=QUEUE,
)


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["REDIS_URL"])


@app.task(name="raw.noop")
def noop() -> None:
    """Do nothing: what Celery itself costs per message."""


@app.task(name="raw.io")
def io(io_ms: float) -> None:
    """Wait ``io_ms`` milliseconds, as a short I/O call would."""
    time.sleep(io_ms / 1000)


@app.task(name="raw.stamp")
def stamp(key: str) -> None:
    """Push when the task started (time.time()) onto the list ``key``, for the latency figures."""
    _redis().rpush(key, repr(time.time()))


@app.task(name="raw.member", ignore_result=False)
def member() -> None:
    """A chord member: a no-op whose result the chord counts."""


@app.task(name="raw.callback")
def callback(results: list, key: str) -> None:
    """A chord's callback: stamps when it started, as ``stamp`` does."""
    _redis().rpush(key, repr(time.time()))
