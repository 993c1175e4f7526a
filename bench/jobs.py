"""Filling queues and waiting until they are done, the platform's way and raw Celery's."""

from __future__ import annotations

import time
from datetime import datetime

from bench.environment import broker_client
from bench.raw_app import QUEUE as RAW_QUEUE
from tests.support.processes import wait_until

NOOP = "ops.noop"


def ours_enqueue_many(count: int, owner, *, io_ms: float = 0, call_size: int = 1000) -> None:
    """``count`` ops.noop jobs through job_enqueue_many, ``call_size`` a call (short jobs travel
    many to a message)."""
    from tasks.platform.services.jobs import JobRequest, job_enqueue_many

    payload = {"io_ms": io_ms} if io_ms else None
    for start in range(0, count, call_size):
        size = min(call_size, count - start)
        jobs = job_enqueue_many(requests=[JobRequest(NOOP, payload)] * size, owner=owner, origin="bench")
        ensure_published(jobs)


def ours_enqueue(owner, task_name: str = NOOP, **options):
    """One job (ops.noop unless told) through job_enqueue (one message), in its own transaction."""
    from tasks.platform.services.jobs import job_enqueue

    job = job_enqueue(task_name=task_name, owner=owner, origin="bench", **options)
    ensure_published([job])
    return job


def ensure_published(jobs: list) -> None:
    unpublished = [job for job in jobs if job.publish_error]
    if unpublished:
        raise SystemExit(f"{len(unpublished)} job(s) not published: {unpublished[0].publish_error}")


def raw_delay(count: int) -> None:
    """``count`` raw Celery no-op messages, one ``.delay()`` each."""
    from bench.raw_app import noop

    for _ in range(count):
        noop.delay()


def raw_fill(count: int, *, io_ms: float = 0) -> None:
    """``count`` raw Celery messages as ``.delay()`` sends them, in Redis pipelines: filling a
    queue is not what a drain measures, so it need not take as long as a .delay() loop."""
    from bench.raw_app import app, io, noop

    task, args = (io, (io_ms,)) if io_ms else (noop, ())
    with app.producer_or_acquire() as producer, producer.batch(max_size=1000):
        for _ in range(count):
            task.apply_async(args, producer=producer)


def wait_ours_done(count: int, *, timeout: float, interval: float = 0.02) -> datetime:
    """Wait until the ledger has ``count`` finished jobs, all succeeded; returns the last finish."""
    from django.db.models import Max

    from tasks.models import Job
    from tasks.platform.models.jobs import FINISHED_STATES

    finished = Job.objects.filter(state__in=FINISHED_STATES)
    wait_until(lambda: finished.count() >= count, timeout=timeout, interval=interval, what=f"{count} jobs to finish")
    failed = finished.exclude(state=Job.State.SUCCEEDED)
    if failed.exists():
        first = failed.first()
        raise SystemExit(f"{failed.count()} job(s) did not succeed, e.g. {first}: {first.error}")
    return finished.aggregate(last=Max("finished_at"))["last"]


def wait_raw_drained(*, timeout: float, interval: float = 0.005) -> int:
    """Wait until the raw queue is empty and no delivery is unacknowledged (late ack: a message
    leaves ``unacked`` once its task returned). Returns how many polls it took, two commands each."""
    client = broker_client()
    polls = 0
    deadline = time.monotonic() + timeout
    while True:
        polls += 1
        waiting, unacked = client.pipeline(transaction=False).llen(RAW_QUEUE).hlen("unacked").execute()
        if not waiting and not unacked:
            return polls
        if time.monotonic() > deadline:
            raise SystemExit(f"raw Celery did not drain in {timeout}s: {waiting} waiting, {unacked} unacknowledged")
        time.sleep(interval)


def raw_stamp(key: str, *, timeout: float) -> float:
    """The time a raw task pushed onto the list ``key`` as it started (see bench.raw_app.stamp)."""
    client = broker_client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Short blocking reads: the client's socket timeout (5 s by default) must not cut one off.
        stamped = client.blpop([key], timeout=1)
        if stamped is not None:
            return float(stamped[1])
    raise SystemExit(f"no raw task pushed onto {key} within {timeout}s")


def drain_timeout(jobs: int) -> float:
    """Generous: 100 jobs/s at the very least."""
    return 60 + jobs / 100
