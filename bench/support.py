"""Set-up shared by the benchmarks: environment, Redis, database, Procfile processes, percentiles.

Everything here runs real processes only (Redis, the Procfile's commands); nothing is mocked.
``prepare_environment`` must run before Django is imported, so that this process and every
process it starts see the same DATABASE_URL and REDIS_URL.
"""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from project.redis_server import answers
from tests.support.processes import BASE_DIR, BIN_DIR, ManagedProcess, RedisProcess, start_bundled_redis, wait_until

OUT_DIR = BASE_DIR / "var" / "bench"
#: the benchmarks' own Redis database: emptied at start, so never a running platform's (db 0)
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"


def procfile_command(name: str) -> str:
    for line in (BASE_DIR / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise SystemExit(f"Procfile has no {name!r} process")


def prepare_environment(sqlite_name: str) -> RedisProcess | None:
    """Fill os.environ for this process and its children; returns the bundled Redis if one was started.

    DATABASE_URL: BENCH_DATABASE_URL (a PostgreSQL database is created when missing), else a fresh
    SQLite file ``var/bench/<sqlite_name>``. REDIS_URL: BENCH_REDIS_URL, else db 14 of the local
    Redis when it answers, else a throwaway bundled Redis. The ambient DATABASE_URL and REDIS_URL
    are ignored on purpose: a benchmark empties its Redis database and fills its ledger.
    """
    os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key")
    os.environ.setdefault("PAYMENT_SANDBOX", "true")  # settings want a payment gateway; none is called
    os.environ.setdefault("LOG_LEVEL", "INFO")  # as the Procfile runs the workers
    # The Procfile's celery and uvicorn must be this virtualenv's.
    os.environ["PATH"] = os.pathsep.join([str(BIN_DIR), os.environ.get("PATH", "")])

    database_url = os.environ.get("BENCH_DATABASE_URL")
    if database_url:
        if urlsplit(database_url).scheme.startswith("postgres"):
            ensure_postgres_database(database_url)
    else:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        path = OUT_DIR / sqlite_name
        for suffix in ("", "-wal", "-shm"):  # a fresh database each run
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        database_url = f"sqlite:///{path}"
    os.environ["DATABASE_URL"] = database_url

    bundled = None
    redis_url = os.environ.get("BENCH_REDIS_URL") or DEFAULT_REDIS_URL
    if not answers(redis_url):
        if os.environ.get("BENCH_REDIS_URL"):
            raise SystemExit(f"BENCH_REDIS_URL {redacted(redis_url)} does not answer")
        bundled = start_bundled_redis()
        redis_url = bundled.url
    os.environ["REDIS_URL"] = redis_url
    return bundled


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
        "connect_timeout": 5,
    }
    with psycopg.connect(**{k: v for k, v in conninfo.items() if v is not None}, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name!r}")


def flush_redis(redis_url: str) -> None:
    """FLUSHDB: only before this process has published anything (kombu caches queue bindings)."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()


def empty_broker(redis_url: str) -> None:
    """Drop waiting messages; queue bindings stay (producers cache them, so they must survive)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    stale = [key for key in client.scan_iter() if not key.startswith(b"_kombu.binding.")]
    if stale:
        client.delete(*stale)


def refuse_foreign_workers() -> None:
    """A worker left over on the bench's broker (a crashed earlier run) would steal its jobs."""
    from project.celery import app

    if app.control.ping(timeout=1):
        raise SystemExit(f"workers already consume from {redacted(os.environ['REDIS_URL'])}; stop them first")


def start_procfile_process(process: str, **extra_env: str) -> ManagedProcess:
    """Start a Procfile line exactly as written (``sh -c``, with ``exec`` so the signal reaches it)."""
    argv = ["sh", "-c", f"exec {procfile_command(process)}"]
    started = ManagedProcess(argv, {**os.environ, **extra_env}, name=process).start()
    shown = " ".join(f"{k}={v}" for k, v in extra_env.items())
    print(f"  {process}: {shown + ' ' if shown else ''}{shlex.join(argv)}  (log {started.log_path})")
    return started


def wait_for_workers(nodes: list[str], timeout: float = 60) -> None:
    from project.celery import app

    def all_answer() -> bool:
        replies = app.control.ping(destination=nodes, timeout=0.5)
        return {node for reply in replies for node in reply} >= set(nodes)

    wait_until(all_answer, timeout=timeout, interval=0.2, what=f"workers {nodes} to answer")


def ms(delta: Any) -> float:
    return delta.total_seconds() * 1000


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: an observed value, no interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def redacted(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url
