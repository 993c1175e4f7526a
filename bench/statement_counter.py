"""Counts the SQL statements of the processes the benchmarks (and the ledger's cost tests) start.

A process started with ``counted_env(url)`` runs with ``bench.settings``: the platform's settings
with ``StatementCounter`` installed, so that each statement Django executes in it (web, worker
children, relay, beat) adds one to the key ``db_statements`` of the Redis at ``url``. Counting on
the server is not possible on SQLite, and PostgreSQL's pg_stat_statements needs a preloaded
library. The platform itself knows nothing of it.
"""

from __future__ import annotations

from typing import Any

import redis
from django.apps import AppConfig
from django.conf import settings
from django.db.backends.signals import connection_created

#: the key each counted statement increments
COUNTER_KEY = "db_statements"
#: the variable bench.settings reads the counter's Redis URL from
URL_VARIABLE = "BENCH_STATEMENT_COUNTER_URL"

_counter: redis.Redis | None = None


def counted_env(counter_url: str) -> dict[str, str]:
    """The environment, added to a process's own, that makes it count its statements in ``counter_url``."""
    return {"DJANGO_SETTINGS_MODULE": "bench.settings", URL_VARIABLE: counter_url}


class StatementCounter(AppConfig):
    """In INSTALLED_APPS by bench.settings: installs the counter when Django is set up."""

    name = "bench.statement_counter"
    label = "bench_statement_counter"

    def ready(self) -> None:
        install(settings.STATEMENT_COUNTER_URL)


def install(counter_url: str) -> None:
    global _counter
    _counter = redis.Redis.from_url(counter_url)
    connection_created.connect(_count_on, weak=False, dispatch_uid="statement_counter")


def _count_on(sender: Any, connection: Any, **_: Any) -> None:
    # The wrapper outlives its connections: add the counter once.
    # Private API (Django): only the execute_wrapper() context manager is documented, not a wrapper for good.
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


def _count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    _counter.incr(COUNTER_KEY)
    return execute(sql, params, many, context)
