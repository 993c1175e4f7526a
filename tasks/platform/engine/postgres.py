"""The PostgreSQL engine: the reference engine's transitions, three of them in fewer statements.

- ``insert`` of many jobs without idempotency keys uses COPY, PostgreSQL's cheapest way to add
  rows; psycopg adapts each row's values in C, where ``bulk_create`` prepares each field in Python.
  Their outbox rows are one statement over an array of ids. One job to run now, without a key, that
  the flow gate queues at once is one statement with its outbox row (outside a transaction: no
  BEGIN and COMMIT round trips).
- ``publish`` deletes the outbox rows of the messages it sent in one statement, committed
  asynchronously (PostgreSQL's ``synchronous_commit`` off, for that statement's transaction only):
  the messages are out already, and a database crash that loses the delete only has the relay send
  them again, as a publisher's own crash between send and delete does. Inside a caller's
  transaction the setting would reach the caller's writes too, so there the delete is plain.
- ``begin_attempt`` of a job neither started, held nor finished, whose queue and task are not
  paused, and ``succeed`` of a job no workflow waits for, are each one statement (data-modifying
  CTEs). Every other case takes the reference path.

The contract tests (tests/fast) run both engines through the same transitions.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple

from django.db import connection
from django.db.models import JSONField
from django.utils import timezone

from tasks.platform import metric_counts
from tasks.platform.concurrency import RATES
from tasks.platform.engine import flow
from tasks.platform.engine.events import job_event
from tasks.platform.engine.orm import Attempt, OrmEngine, count_ended, count_enqueued_on_commit
from tasks.platform.models import Job, JobAttempt, JobOutbox, Pause, PauseScope
from tasks.platform.models.jobs import FINISHED_STATES

_JOB = Job._meta.db_table
_ATTEMPT = JobAttempt._meta.db_table
_OUTBOX = JobOutbox._meta.db_table
_PAUSE = Pause._meta.db_table

_PUBLISHED = f"DELETE FROM {_OUTBOX} WHERE job_id = ANY(%s)"  # noqa: S608 - table name from the model
# set_config(..., is_local => true) lasts until this statement's own (autocommit) transaction ends.
_PUBLISHED_ASYNC = f"{_PUBLISHED} AND set_config('synchronous_commit', 'off', true) = 'off'"

_OWE = f"""
INSERT INTO {_OUTBOX} (job_id, claimed_at) SELECT unnest(%(ids)s::uuid[]), %(claimed_at)s
ON CONFLICT (job_id) DO UPDATE SET claimed_at = EXCLUDED.claimed_at
"""

_BEGIN = f"""
WITH started AS (
    UPDATE {_JOB} SET attempts = attempts + 1, state = %(started)s, started_at = %(now)s,
        worker = %(worker)s, queue = COALESCE(NULLIF(%(queue)s, ''), queue)
    WHERE id = %(id)s AND NOT state = ANY(%(not_startable)s) AND NOT EXISTS (
        SELECT 1 FROM {_PAUSE} pause
        WHERE (pause.scope = %(queue_scope)s AND pause.name = COALESCE(NULLIF(%(queue)s, ''), {_JOB}.queue))
            OR (pause.scope = %(task_scope)s AND pause.name = {_JOB}.task_name)
    )
    RETURNING id, attempts, attempts_before_retry, max_attempts, then_id, queue, share_key, queued_at,
        EXISTS (SELECT 1 FROM {_JOB} step WHERE step.after_id = {_JOB}.id AND step.state = %(waiting)s) AS has_next
), opened AS (
    INSERT INTO {_ATTEMPT} (job_id, number, worker, started_at, outcome, error)
    SELECT id, attempts, %(worker)s, %(now)s, %(running)s, '' FROM started
)
SELECT attempts, attempts_before_retry, max_attempts, then_id, has_next, queue, share_key, queued_at FROM started
"""  # noqa: S608 - table names from the models, every value a parameter

_SUCCEEDED = f"""
WITH closed AS (
    UPDATE {_ATTEMPT} SET outcome = %(succeeded)s, finished_at = %(now)s, error = ''
    WHERE job_id = %(id)s AND number = %(number)s AND outcome = %(running)s
)
UPDATE {_JOB} SET state = %(succeeded)s, result = %(result)s, progress = 100, error = '', traceback = '',
    finished_at = %(now)s
WHERE id = %(id)s AND state = %(started)s AND attempts = %(number)s
"""  # noqa: S608 - table names from the models, every value a parameter


class _StartedRow(NamedTuple):
    attempts: int
    attempts_before_retry: int
    max_attempts: int | None
    then_id: Any
    has_next: bool
    queue: str
    share_key: str
    queued_at: datetime | None


class PostgresEngine(OrmEngine):
    def insert(self, jobs: list[Job]) -> list[Job]:
        job = jobs[0] if len(jobs) == 1 else None
        if job is None or job.idempotency_key is not None or job.state != Job.State.PENDING:
            return super().insert(jobs)
        if not flow.admits_at_once(job):
            return super().insert(jobs)
        job.state, job.queued_at = Job.State.QUEUED, job.created_at
        values = [encode(getattr(job, attname)) for attname, encode in _fields()]
        with connection.cursor() as cursor:
            cursor.execute(_insert_owed_statement(), [*values, timezone.now()])
        job._state.adding, job._state.db = False, connection.alias
        self.publish_on_commit(jobs)
        count_enqueued_on_commit(jobs)
        return jobs

    def _published(self, ids: list) -> None:
        with connection.cursor() as cursor:
            cursor.execute(_PUBLISHED if connection.in_atomic_block else _PUBLISHED_ASYNC, [ids])

    def _insert_rows(self, jobs: list[Job]) -> None:
        if len(jobs) == 1:
            super()._insert_rows(jobs)
            return
        fields = _fields()
        # Private API (Django): cursor.copy() passes through Django's cursor wrapper with its errors unwrapped.
        with connection.wrap_database_errors, connection.cursor() as cursor, cursor.copy(_copy_statement()) as copy:
            for job in jobs:
                copy.write_row([encode(getattr(job, attname)) for attname, encode in fields])
        for job in jobs:  # what bulk_create sets on an instance it inserted
            job._state.adding, job._state.db = False, connection.alias

    def _owe(self, ids: list, *, claimed_at) -> None:
        if len(ids) < 2:
            super()._owe(ids, claimed_at=claimed_at)
            return
        with connection.cursor() as cursor:
            cursor.execute(_OWE, {"ids": ids, "claimed_at": claimed_at})

    def begin_attempt(
        self, *, job_id: str, task_name: str, queue: str, worker: str, max_attempts: int, **rest: Any
    ) -> Attempt | None:
        # A job started already (its worker may be lost), finished, held or paused, of a task with a
        # rate, or without a row: the reference path.
        if task_name in RATES:
            return super().begin_attempt(
                job_id=job_id, task_name=task_name, queue=queue, worker=worker, max_attempts=max_attempts, **rest
            )
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(
                _BEGIN,
                {
                    "id": job_id,
                    "now": now,
                    "worker": worker,
                    "queue": queue,
                    "started": Job.State.STARTED,
                    "waiting": Job.State.WAITING,
                    "running": JobAttempt.Outcome.RUNNING,
                    "not_startable": sorted({Job.State.STARTED, Job.State.HELD, *FINISHED_STATES}),
                    "queue_scope": PauseScope.QUEUE,
                    "task_scope": PauseScope.TASK,
                },
            )
            row = cursor.fetchone()
        if row is None:
            return super().begin_attempt(
                job_id=job_id, task_name=task_name, queue=queue, worker=worker, max_attempts=max_attempts, **rest
            )
        started = _StartedRow(*row)
        self._next_turn([(started.queue, started.share_key)])
        metric_counts.count(
            started=[(started.queue, task_name, metric_counts.seconds_between(started.queued_at, now))],
            publish=[job_event(job_id=job_id, kind="state", state=Job.State.STARTED, worker=worker)],
        )
        return Attempt.started(started, max_attempts=max_attempts, task_name=task_name, started_at=now)

    def succeed(self, *, job_id: str, attempt: Attempt, result: Any) -> None:
        if attempt.in_workflow:
            super().succeed(job_id=job_id, attempt=attempt, result=result)
            return
        now = timezone.now()
        with connection.cursor() as cursor:
            cursor.execute(
                _SUCCEEDED,
                {
                    "id": job_id,
                    "number": attempt.number,
                    "now": now,
                    "result": Job._meta.get_field("result").get_db_prep_save(result, connection),
                    "succeeded": Job.State.SUCCEEDED,
                    "started": Job.State.STARTED,
                    "running": JobAttempt.Outcome.RUNNING,
                },
            )
            changed = cursor.rowcount > 0
        if changed:
            event = job_event(job_id=job_id, kind="state", state=Job.State.SUCCEEDED, result=result)
            count_ended(Job.State.SUCCEEDED, [attempt], now, publish=[event])


@cache
def _copy_statement() -> str:
    # Private API (Django): quote_name is the backend's own quoting; Django documents no public one.
    columns = ", ".join(connection.ops.quote_name(field.column) for field in Job._meta.concrete_fields)
    return f"COPY {connection.ops.quote_name(_JOB)} ({columns}) FROM STDIN"


@cache
def _insert_owed_statement() -> str:
    """One job's row and its outbox row, claimed at the last parameter, in one statement."""
    quote = connection.ops.quote_name  # Private API (Django): the backend's own quoting, as for COPY
    columns = ", ".join(quote(field.column) for field in Job._meta.concrete_fields)
    values = ", ".join(["%s"] * len(Job._meta.concrete_fields))
    return (
        f"WITH job AS (INSERT INTO {quote(_JOB)} ({columns}) VALUES ({values}) RETURNING id) "  # noqa: S608
        f"INSERT INTO {quote(_OUTBOX)} (job_id, claimed_at) SELECT id, %s FROM job"
    )


@cache
def _fields() -> list[tuple[str, Any]]:
    """Each column's attribute, and how its value goes into COPY: JSON encoded by the field's
    encoder, every other value as psycopg adapts it (UUIDs, aware datetimes, text, numbers)."""
    return [
        (field.attname, _json_encoder(field) if isinstance(field, JSONField) else _as_is)
        for field in Job._meta.concrete_fields
    ]


def _as_is(value: Any) -> Any:
    return value


def _json_encoder(field: JSONField):
    encoder = (field.encoder or json.JSONEncoder)()

    def encode(value: Any) -> str | None:
        return None if value is None else encoder.encode(value)

    return encode
