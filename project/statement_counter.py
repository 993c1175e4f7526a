"""Counts the SQL statements every process runs, for the benchmarks' statements-per-job figure.

Off unless DB_STATEMENT_COUNTER_URL names a Redis: then each statement Django executes (web,
worker children, relay, beat) adds one to the key ``db_statements`` there. Counting on the server
is not possible on SQLite, and PostgreSQL's pg_stat_statements needs a preloaded library.
"""

from __future__ import annotations

from typing import Any

import redis
from django.db.backends.signals import connection_created

COUNTER_KEY = "db_statements"

_counter: redis.Redis | None = None


def install(counter_url: str) -> None:
    global _counter
    _counter = redis.Redis.from_url(counter_url)
    connection_created.connect(_count_on, weak=False, dispatch_uid="statement_counter")


def _count_on(sender: Any, connection: Any, **_: Any) -> None:
    # The wrapper outlives its connections: add the counter once.
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


def _count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    _counter.incr(COUNTER_KEY)
    return execute(sql, params, many, context)
