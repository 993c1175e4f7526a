"""Filling queues and waiting until they are done, the platform's way, raw Celery's, and Celery +
django-celery-results'."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from datetime import UTC, datetime
from functools import cache

from bench.environment import broker_client
from bench.processes import DCR
from bench.raw_app import QUEUE as RAW_QUEUE
from tests.support.processes import BASE_DIR, BIN_DIR, wait_until

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


#: django_celery_results' TaskResult table: the bench process reads it with SQL, since its settings
#: do not install the app (see bench.dcr_settings)
DCR_RESULTS_TABLE = "django_celery_results_taskresult"


@cache
def dcr_migrate() -> None:
    """Create django_celery_results' tables in the bench's database (its migrations, run with the
    counterpart's settings); once per bench process."""
    dcr_run(["-m", "django", "migrate", "--noinput", "--verbosity", "0"], timeout=120)


def dcr_fill(count: int) -> None:
    """``count`` no-op tasks of the Celery + django-celery-results counterpart, one ``.delay()``
    each, sent by a process of that Django project (bench.dcr_send)."""
    dcr_run(["-m", "bench.dcr_send", str(count)], timeout=drain_timeout(count))


def dcr_run(args: list[str], *, timeout: float) -> None:
    env = {**os.environ, **DCR.env()}
    argv = [str(BIN_DIR / "python"), *args]
    done = subprocess.run(argv, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode:
        raise SystemExit(f"{shlex.join(argv)} failed:\n{done.stderr[-3000:]}")


def dcr_clear() -> None:
    """Empty the counterpart's results table, so that a drain counts its own tasks only."""
    from django.core.management.color import no_style
    from django.db import connection

    # Private API (Django): flush's per-table SQL is only in the backend's operations (as in ledger_clear).
    connection.ops.execute_sql_flush(connection.ops.sql_flush(no_style(), [DCR_RESULTS_TABLE]))


def wait_dcr_done(count: int, *, timeout: float, interval: float = 0.02) -> datetime:
    """Wait until ``count`` tasks have a finished TaskResult row, all SUCCESS and each with its
    STARTED recorded (``date_started``: task_track_started on); returns the last one's
    ``date_done`` (the worker's clock, as the ledger's ``finished_at``)."""
    from celery import states
    from django.db import connection
    from django.utils.dateparse import parse_datetime

    def rows(sql: str, params: list) -> list[tuple]:
        with connection.cursor() as cursor:
            cursor.execute(sql.format(table=DCR_RESULTS_TABLE), params)
            return cursor.fetchall()

    ready = [states.SUCCESS, states.FAILURE, states.REVOKED]  # Celery's READY_STATES
    finished = "SELECT COUNT(*) FROM {table} WHERE status IN (%s, %s, %s)"
    wait_until(
        lambda: rows(finished, ready)[0][0] >= count,
        timeout=timeout,
        interval=interval,
        what=f"{count} tasks to finish",
    )
    failed = rows(
        "SELECT status, date_started, result FROM {table} WHERE status <> %s OR date_started IS NULL", [states.SUCCESS]
    )
    if failed:
        raise SystemExit(f"{len(failed)} task(s) did not succeed or never recorded STARTED, e.g. {failed[0]}")
    (last,) = rows("SELECT date_done FROM {table} ORDER BY date_done DESC LIMIT 1", [])[0]
    if isinstance(last, str):  # SQLite, should its column type not be converted
        last = parse_datetime(last)
    # SQLite holds UTC without an offset (USE_TZ); PostgreSQL answers an aware datetime.
    return last if last.tzinfo else last.replace(tzinfo=UTC)


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
