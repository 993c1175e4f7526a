"""The job engine: the only code that changes a job's state or writes its attempts.

Transitions (methods of ``Engine``): ``insert`` new jobs; ``publish`` them after commit (and
``claim_due`` for the relay, ``resend`` of queued jobs whose messages the broker lost);
``begin_attempt`` / ``claim_batch`` a run; ``succeed`` /
``succeed_many``; ``fail`` (retrying, failed or dead); ``abandon_batch``; ``mark_undeliverable``;
the relay's ``recover_lost`` (started jobs whose worker stopped answering run again); an
operator's ``cancel``, ``cancel_terminated``, ``retry``, ``retry_edited`` (a failed or dead job
runs again with a new payload) and ``discard``; flow control's
``pause``, ``resume``, ``admit`` and ``admit_waiting`` (tasks.platform.engine.flow decides which
jobs may go to their queue and which wait, held). Releasing or cancelling
a workflow's next steps happens inside the transition that ends a job (tasks.platform.engine.workflows).

``engine()`` is the implementation for the database in use: the reference ORM engine
(tasks.platform.engine.orm), or on PostgreSQL the same with three transitions in fewer statements
(tasks.platform.engine.postgres). The enqueue service, the relay, the worker's tasks, beat and the
operators' doors (API, admin, Flower, commands) call it; nothing else writes ``Job.state``.
"""

from __future__ import annotations

from functools import cache

from django.db import connection

from tasks.platform.engine.orm import ActionRefused, Attempt, OrmEngine, backoff_delay
from tasks.platform.engine.workflows import job_finished

Engine = OrmEngine

__all__ = ["ActionRefused", "Attempt", "Engine", "backoff_delay", "engine", "job_finished"]


def engine() -> Engine:
    """The engine for the default database (its vendor is fixed for the life of the process)."""
    return _engine_for(connection.vendor)


@cache
def _engine_for(vendor: str) -> Engine:
    if vendor == "postgresql":
        from tasks.platform.engine.postgres import PostgresEngine

        return PostgresEngine()
    return OrmEngine()
