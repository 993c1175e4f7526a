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

from bench.counterpart_conf import shared_conf

QUEUE = "raw"

# Not the current app: the bench process also runs the platform's app, whose shared tasks must
# stay bound to it.
app = Celery("bench_raw", set_as_current=False)
app.conf.update(shared_conf(QUEUE), result_backend=os.environ["REDIS_URL"], task_ignore_result=True)


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
