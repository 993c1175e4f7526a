"""The ledger's two most frequent writes in one statement each, on PostgreSQL.

Starting a job (row started, attempt opened) and recording its success (attempt closed, row
succeeded) take two or three statements through the ORM. Data-modifying CTEs do each in one
statement and one round trip, which is most of what the ledger costs a short job. The callers in
tasks.services.ledger use them on PostgreSQL for the common case only (a job neither started nor
finished; a success no workflow waits for) and take their general ORM path for everything else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from django.db import connection

from tasks.models import Job, JobAttempt
from tasks.models.jobs import FINISHED_STATES

_JOB = Job._meta.db_table
_ATTEMPT = JobAttempt._meta.db_table
#: a started job (its worker may be lost) and the row-less job take the general path
_NOT_STARTABLE = tuple(sorted({Job.State.STARTED, *FINISHED_STATES}))

_BEGIN = f"""
WITH started AS (
    UPDATE {_JOB} SET attempts = attempts + 1, state = %(started)s, started_at = %(now)s,
        worker = %(worker)s, queue = COALESCE(NULLIF(%(queue)s, ''), queue)
    WHERE id = %(id)s AND NOT state = ANY(%(not_startable)s)
    RETURNING id, attempts, attempts_before_retry, max_attempts, then_id,
        EXISTS (SELECT 1 FROM {_JOB} step WHERE step.after_id = {_JOB}.id AND step.state = %(waiting)s) AS has_next
), opened AS (
    INSERT INTO {_ATTEMPT} (job_id, number, worker, started_at, outcome, error)
    SELECT id, attempts, %(worker)s, %(now)s, %(running)s, '' FROM started
)
SELECT attempts, attempts_before_retry, max_attempts, then_id, has_next FROM started
"""  # noqa: S608 - table names from the models, every value a parameter

_SUCCEEDED = f"""
WITH closed AS (
    UPDATE {_ATTEMPT} SET outcome = %(succeeded)s, finished_at = %(now)s, error = ''
    WHERE job_id = %(id)s AND number = %(number)s
)
UPDATE {_JOB} SET state = %(succeeded)s, result = %(result)s, progress = 100, error = '', traceback = '',
    finished_at = %(now)s
WHERE id = %(id)s AND state = %(started)s
"""  # noqa: S608 - table names from the models, every value a parameter


class StartedRow(NamedTuple):
    attempts: int
    attempts_before_retry: int
    max_attempts: int | None
    then_id: Any
    has_next: bool


def applies() -> bool:
    return connection.vendor == "postgresql"


def begin_attempt(*, job_id: str, queue: str, worker: str, now: datetime) -> StartedRow | None:
    """Start a job that is neither started nor finished, and open its attempt; None otherwise."""
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
                "not_startable": list(_NOT_STARTABLE),
            },
        )
        row = cursor.fetchone()
    return StartedRow(*row) if row else None


def attempt_succeeded(*, job_id: str, number: int, result: Any, now: datetime) -> bool:
    """Close the attempt as succeeded and the job too unless it was cancelled meanwhile (it then
    stays cancelled); whether the job row changed."""
    result_field = Job._meta.get_field("result")
    with connection.cursor() as cursor:
        cursor.execute(
            _SUCCEEDED,
            {
                "id": job_id,
                "number": number,
                "now": now,
                "result": result_field.get_db_prep_save(result, connection),
                "succeeded": Job.State.SUCCEEDED,
                "started": Job.State.STARTED,
            },
        )
        return cursor.rowcount > 0
