"""How promptly a critical job starts while a bulk backlog waits, against an idle platform.

    python -m bench.priority [--backlog N] [--samples K] [--hold SECONDS]

Real processes only: Redis, the Procfile's worker-critical and worker-bulk commands, and the
real ``job_enqueue`` service. Latency is read from the job ledger (``started_at - created_at``)
and, as a cross-check, from the bench's own clock just before it called ``job_enqueue``.

Environment: BENCH_DATABASE_URL (default: a fresh SQLite file under var/bench/) and
BENCH_REDIS_URL (default: redis://127.0.0.1:6379/14 when it answers, else a bundled Redis).
The ambient DATABASE_URL and REDIS_URL are ignored on purpose: the bench empties its Redis
database, and must never do that to a running platform's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from bench.support import (
    OUT_DIR,
    empty_broker,
    ms,
    percentile,
    prepare_environment,
    redacted,
    refuse_foreign_workers,
    start_procfile_process,
    wait_for_workers,
)
from tests.support.processes import BASE_DIR, ManagedProcess, wait_until

SQLITE_NAME = "db.sqlite3"
WORKERS = {"worker-critical": "critical", "worker-bulk": "bulk"}  # Procfile process -> node name prefix


@dataclass
class Sample:
    ledger_ms: float  # started_at - created_at, both written to the ledger
    wall_ms: float  # started_at - the bench's clock just before job_enqueue was called
    pickup_ms: float  # started_at - queued_at: from the publish to the worker starting it
    bulk_waiting: int  # backlog jobs not yet started when this critical job started


def run_critical(samples: int, backlog_ids: list) -> list[Sample]:
    """Enqueue critical pings one at a time, each after the previous one succeeded."""
    from django.utils import timezone

    from tasks.models import Job
    from tasks.services.jobs import job_enqueue

    results = []
    for _ in range(samples):
        before = timezone.now()
        job = job_enqueue(task_name="ops.ping", queue="critical", origin="bench")
        done = wait_until(
            lambda job=job: Job.objects.filter(pk=job.id, state=Job.State.SUCCEEDED).first(),
            timeout=30,
            interval=0.005,
            what=f"critical job {job.id} to succeed",
        )
        # Backlog jobs that had not started when this one did: read back from the ledger, exact.
        waiting = Job.objects.filter(pk__in=backlog_ids).exclude(started_at__lte=done.started_at).count()
        results.append(
            Sample(
                ledger_ms=ms(done.started_at - done.created_at),
                wall_ms=ms(done.started_at - before),
                pickup_ms=ms(done.started_at - done.queued_at),
                bulk_waiting=waiting,
            )
        )
    return results


def enqueue_backlog(count: int, hold_seconds: float) -> list:
    from tasks.models import Job
    from tasks.services.jobs import job_enqueue

    ids = [
        job_enqueue(task_name="ops.ping", payload={"hold_seconds": hold_seconds}, queue="bulk", origin="bench").id
        for _ in range(count)
    ]
    # The bulk worker is busy once a backlog job has started.
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, started_at__isnull=False).exists(),
        timeout=30,
        what="the bulk worker to start on the backlog",
    )
    return ids


def summarize(samples: list[Sample]) -> dict[str, Any]:
    ledger, wall = [s.ledger_ms for s in samples], [s.wall_ms for s in samples]
    waiting = [s.bulk_waiting for s in samples]
    return {
        "samples": len(samples),
        "ledger_ms": {"p50": percentile(ledger, 50), "p95": percentile(ledger, 95), "max": max(ledger)},
        "wall_ms": {"p50": percentile(wall, 50), "p95": percentile(wall, 95), "max": max(wall)},
        "bulk_waiting": {"min": min(waiting), "max": max(waiting)},
    }


def print_table(summaries: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'phase':<8} {'samples':>7}  {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}"
        f"  {'wall p50':>8} {'wall p95':>8} {'wall max':>8}  {'bulk waiting':>12}"
    )
    print(header)
    print("-" * len(header))
    for phase, s in summaries.items():
        led, wall, wait = s["ledger_ms"], s["wall_ms"], s["bulk_waiting"]
        waiting = f"{wait['min']}" if wait["min"] == wait["max"] else f"{wait['min']}-{wait['max']}"
        print(
            f"{phase:<8} {s['samples']:>7}  {led['p50']:>7.1f} {led['p95']:>7.1f} {led['max']:>7.1f}"
            f"  {wall['p50']:>8.1f} {wall['p95']:>8.1f} {wall['max']:>8.1f}  {waiting:>12}"
        )
    print("(p50/p95/max: started_at - created_at from the ledger; wall: from just before job_enqueue)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.priority", description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=500, help="bulk jobs waiting in phase 2 (default 500)")
    parser.add_argument("--hold", type=float, default=0.2, help="seconds each bulk job holds (default 0.2)")
    parser.add_argument("--samples", type=int, default=30, help="critical jobs per phase (default 30)")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.backlog < 1:
        parser.error("--samples and --backlog must be at least 1")

    started: list[ManagedProcess] = []
    emptied = False
    bundled = prepare_environment(SQLITE_NAME)
    if bundled:
        started.append(bundled.process)
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", interactive=False, verbosity=0)
        refuse_foreign_workers()
        empty_broker(os.environ["REDIS_URL"])
        emptied = True

        print(f"redis {redacted(os.environ['REDIS_URL'])}, database {redacted(os.environ['DATABASE_URL'])}")
        print(f"{os.cpu_count()} CPUs; starting workers from the Procfile:")
        started += [start_procfile_process(process) for process in WORKERS]
        host = socket.gethostname()
        wait_for_workers([f"{node}@{host}" for node in WORKERS.values()])
        # Warm both critical pool children (first task imports and connects) before measuring.
        run_critical(4, [])

        print(f"phase idle: {args.samples} critical jobs, nothing else queued")
        idle = run_critical(args.samples, [])
        print(f"phase backlog: {args.backlog} bulk jobs holding {args.hold}s, then {args.samples} critical jobs")
        backlog_ids = enqueue_backlog(args.backlog, args.hold)
        loaded = run_critical(args.samples, backlog_ids)

        summaries = {"idle": summarize(idle), "backlog": summarize(loaded)}
        print()
        print_table(summaries)
        report = {
            "at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "database": connection.vendor,
            "backlog": args.backlog,
            "bulk_hold_seconds": args.hold,
            "summary": summaries,
            "samples": {"idle": [asdict(s) for s in idle], "backlog": [asdict(s) for s in loaded]},
        }
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        (OUT_DIR / "priority.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {(OUT_DIR / 'priority.json').relative_to(BASE_DIR)}")
    finally:
        # Workers first (warm shutdown: the running bulk job finishes), Redis last.
        for process in reversed(started):
            process.stop()
        if emptied and not bundled:  # leave no backlog behind in a shared Redis
            empty_broker(os.environ["REDIS_URL"])


if __name__ == "__main__":
    sys.exit(main())
