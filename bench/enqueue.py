"""What the job ledger costs at enqueue time, as ratios against raw Celery on the same machine.

    python -m bench.enqueue [--jobs N] [--many N] [--requests N] [--clients K] [--samples K] [--profile]

Four measurements, in one run, each against raw Celery (``ops_ping.delay()`` / ``send_task``,
no ledger row written by the caller):

1. ``job_enqueue()`` one at a time, each in its own transaction (autocommit, as a view), against
   a ``.delay()`` loop: jobs/s. Interleaved in blocks (raw, ours, ours, raw, ...) so machine
   noise hits both; nothing consumes the queue during this phase.
2. ``job_enqueue_many()`` in batches (1000 per call) against the same ``.delay()`` loop: jobs/s.
3. ``POST /api/jobs`` against uvicorn started from the Procfile's ``web`` line (one process, as
   ``make run``), with a bearer token, from K client threads (``requests.Session``) on loopback:
   req/s, p50 and p99. No raw counterpart exists: the in-process ``.delay()`` figures are shown
   for scale, with no goal.
4. Enqueue-to-start latency at idle, with the Procfile's ``worker-default`` running: ours is the
   ledger's ``started_at - created_at`` of a ``job_enqueue``; raw is ``started_at`` (the row the
   worker writes for a message that did not come through enqueue) minus the bench's clock just
   before ``send_task``. One at a time, each waited for, interleaved ours/raw.

Real processes only: Redis, the Procfile's commands, the real services; no eager mode, no mocks.

Environment: BENCH_DATABASE_URL (default: a fresh SQLite file var/bench/enqueue.sqlite3; a
PostgreSQL database is created when missing, and this run's rows are deleted at the end) and
BENCH_REDIS_URL (default: redis://127.0.0.1:6379/14 when it answers, FLUSHDB'd at start; else a
bundled Redis). The ambient DATABASE_URL and REDIS_URL are ignored on purpose.
Figures go to var/bench/enqueue.json; with --profile, cProfile dumps go to var/bench/*.prof.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import os
import pstats
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.support import (
    OUT_DIR,
    empty_broker,
    flush_redis,
    ms,
    percentile,
    prepare_environment,
    redacted,
    refuse_foreign_workers,
    start_procfile_process,
    wait_for_workers,
)
from tests.support.processes import BASE_DIR, ManagedProcess, free_port, wait_until

SQLITE_NAME = "enqueue.sqlite3"
BENCH_USER = "bench-enqueue"
PAYLOAD = {"hold_seconds": 0}
#: (metric, goal): a throughput ratio must reach it, a latency ratio must stay under it
GOAL_SINGLE = 0.6
GOAL_MANY = 10.0
GOAL_LATENCY_P50 = 1.2


@dataclass
class Loop:
    """A timed loop: total seconds spent in the calls, and each call's latency."""

    seconds: float = 0.0
    calls_ms: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.calls_ms)

    def rate(self, items: int | None = None) -> float:
        return (self.count if items is None else items) / self.seconds

    def summary(self, items: int | None = None) -> dict[str, float]:
        return {
            "count": self.count if items is None else items,
            "seconds": round(self.seconds, 4),
            "per_second": round(self.rate(items), 1),
            "call_p50_ms": round(percentile(self.calls_ms, 50), 3),
            "call_p99_ms": round(percentile(self.calls_ms, 99), 3),
        }


def timed(loop: Loop, call, times: int) -> list:
    """Run ``call`` ``times`` times; add the time spent to ``loop``; return the results."""
    results = []
    perf = time.perf_counter
    block_start = perf()
    for _ in range(times):
        start = perf()
        results.append(call())
        loop.calls_ms.append((perf() - start) * 1000)
    loop.seconds += perf() - block_start
    return results


def load_note() -> dict[str, Any]:
    """How busy the machine is besides the bench: load average and running pytest processes."""
    pytest = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"pytest" in cmdline.read_bytes():
                pytest += 1
        except OSError:
            continue
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "pytest_processes": pytest}


# --- the two paths ------------------------------------------------------------------------------


def raw_delay():
    from tasks.tasks.ops import ops_ping

    return ops_ping.delay(**PAYLOAD)


def ours_enqueue(owner):
    from tasks.services.jobs import job_enqueue

    return job_enqueue(task_name="ops.ping", payload=dict(PAYLOAD), owner=owner, origin="bench")


def check_published(jobs: list) -> None:
    unpublished = [job for job in jobs if job.publish_error or job.state != "queued"]
    if unpublished:
        raise SystemExit(f"{len(unpublished)} job(s) not published: {unpublished[0].publish_error or unpublished[0]}")


# --- phase 1 and 2: in-process throughput ----------------------------------------------------


def measure_single(jobs: int, block: int, owner) -> tuple[Loop, Loop]:
    """job_enqueue one at a time (autocommit: one transaction each) against a .delay() loop."""
    ours, raw = Loop(), Loop()
    done = 0
    for index in itertools.count():
        if done >= jobs:
            break
        size = min(block, jobs - done)
        # raw, ours | ours, raw | ...: neither side always runs first
        order = [("raw", raw), ("ours", ours)] if index % 2 == 0 else [("ours", ours), ("raw", raw)]
        for name, loop in order:
            if name == "raw":
                timed(loop, raw_delay, size)
            else:
                check_published(timed(loop, lambda: ours_enqueue(owner), size))
        done += size
    return ours, raw


def measure_many(jobs: int, batch: int, owner) -> tuple[Loop, Loop]:
    """job_enqueue_many in batches against the .delay() loop, one batch and one raw block in turn."""
    from tasks.services.jobs import JobRequest, job_enqueue_many

    def one_batch(size: int):
        return job_enqueue_many(
            requests=[JobRequest("ops.ping", dict(PAYLOAD)) for _ in range(size)], owner=owner, origin="bench"
        )

    ours, raw = Loop(), Loop()
    done = 0
    for index in itertools.count():
        if done >= jobs:
            break
        size = min(batch, jobs - done)
        if index % 2 == 0:
            timed(raw, raw_delay, size)
        check_published(timed(ours, lambda size=size: one_batch(size), 1)[0])
        if index % 2 == 1:
            timed(raw, raw_delay, size)
        done += size
    return ours, raw


# --- phase 3: the HTTP API ---------------------------------------------------------------------


def start_web() -> tuple[ManagedProcess, str]:
    port = free_port()
    # The per-user rate limit would throttle this benchmark's one user: it measures the API, not the limit.
    web = start_procfile_process("web", WEB_PORT=str(port), API_RATE_LIMIT_PER_MINUTE="0")
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        import requests

        if not web.alive():
            raise SystemExit(f"web exited:\n{web.log()[-2000:]}")
        try:
            return requests.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, timeout=60, interval=0.1, what="uvicorn to answer /healthz")
    return web, base_url


def post_jobs(base_url: str, token: str, total: int, clients: int) -> dict[str, Any]:
    """POST /api/jobs ``total`` times from ``clients`` threads, each with its own keep-alive session."""
    import requests

    url = f"{base_url}/api/jobs"
    body = json.dumps({"task": "ops.ping", "payload": PAYLOAD})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    counter = itertools.count()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    statuses: list[dict[int, int]] = [{} for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        perf = time.perf_counter
        with requests.Session() as session:
            barrier.wait()
            while next(counter) < total:  # itertools.count is atomic under the GIL
                start = perf()
                try:
                    response = session.post(url, data=body, headers=headers, timeout=30)
                except requests.RequestException as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                latencies[index].append((perf() - start) * 1000)
                statuses[index][response.status_code] = statuses[index].get(response.status_code, 0) + 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    cpu_before = time.process_time()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - cpu_before
    flat = [value for per_client in latencies for value in per_client]
    codes: dict[int, int] = {}
    for per_client in statuses:
        for code, count in per_client.items():
            codes[code] = codes.get(code, 0) + count
    return {
        "requests": total,
        "clients": clients,
        "seconds": round(seconds, 3),
        "per_second": round(len(flat) / seconds, 1) if flat else 0.0,
        "p50_ms": round(percentile(flat, 50), 2) if flat else None,
        "p99_ms": round(percentile(flat, 99), 2) if flat else None,
        "max_ms": round(max(flat), 2) if flat else None,
        "statuses": {str(code): count for code, count in sorted(codes.items())},
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "bench_client_cpu_seconds": round(client_cpu, 2),
    }


# --- phase 4: enqueue-to-start latency -------------------------------------------------------


def wait_finished(job_id):
    from tasks.models import Job
    from tasks.models.jobs import FINISHED_STATES

    row = wait_until(
        lambda: Job.objects.filter(pk=job_id, state__in=FINISHED_STATES).first(),
        timeout=30,
        interval=0.005,
        what=f"job {job_id} to finish",
    )
    if row.state != Job.State.SUCCEEDED:
        raise SystemExit(f"job {job_id} ended {row.state}: {row.error}")
    return row


def measure_latency(samples: int, warm_up: int, gap: float, owner) -> dict[str, list[dict[str, float]]]:
    """One job at a time, each waited for, ours and raw in turn."""
    from django.utils import timezone

    from project.celery import app

    ours: list[dict[str, float]] = []
    raw: list[dict[str, float]] = []
    raw_ids: list[str] = []
    for index in range(warm_up + samples):
        keep = index >= warm_up
        before = timezone.now()
        job = ours_enqueue(owner)
        row = wait_finished(job.id)
        if keep:
            ours.append(
                {
                    "ledger_ms": ms(row.started_at - row.created_at),
                    "wall_ms": ms(row.started_at - before),
                    "pickup_ms": ms(row.started_at - row.queued_at),
                }
            )
        time.sleep(gap)
        sent = timezone.now()
        result = app.send_task("ops.ping", kwargs=dict(PAYLOAD), queue="default")
        raw_ids.append(result.id)
        row = wait_finished(result.id)
        if keep:
            raw.append({"ledger_ms": ms(row.started_at - sent), "wall_ms": ms(row.started_at - sent)})
        time.sleep(gap)
    return {"ours": ours, "raw": raw, "raw_ids": raw_ids}


def latency_summary(samples: list[dict[str, float]], key: str) -> dict[str, float]:
    values = [s[key] for s in samples]
    return {
        "p50": round(percentile(values, 50), 2),
        "p95": round(percentile(values, 95), 2),
        "max": round(max(values), 2),
    }


# --- profile (optional) ------------------------------------------------------------------------

#: (what, file path fragment, function name) read back from cProfile's cumulative times
PROFILE_POINTS = [
    ("job_enqueue (total)", "tasks/services/jobs.py", "job_enqueue"),
    ("job_enqueue_many (total)", "tasks/services/jobs.py", "job_enqueue_many"),
    ("raw .delay() (total)", "celery/app/task.py", "delay"),
    ("  _job_build (validate + Job())", "tasks/services/jobs.py", "_job_build"),
    ("    pydantic model_validate", "pydantic/main.py", "model_validate"),
    ("    task_queue (router lookup)", "tasks/services/jobs.py", "task_queue"),
    ("    Job.__init__", "django/db/models/base.py", "__init__"),
    ("  Model.save (INSERT)", "django/db/models/base.py", "save"),
    ("  QuerySet.bulk_create (INSERT)", "django/db/models/query.py", "bulk_create"),
    ("  connection.commit (COMMIT)", "django/db/backends/base/base.py", "commit"),
    ("  job_publish_many (after commit)", "tasks/services/jobs.py", "job_publish_many"),
    ("    Task.apply_async", "celery/app/task.py", "apply_async"),
    ("      amqp.as_task_v2 (build message)", "celery/app/amqp.py", "as_task_v2"),
    ("      amqp.send_task_message", "celery/app/amqp.py", "send_task_message"),
    ("        kombu Producer._publish (all)", "kombu/messaging.py", "_publish"),
    ("        task-sent event", "celery/events/dispatcher.py", "publish"),
    ("    PublishBatch.flush (Redis pipeline)", "kombu/transport/redis.py", "flush"),
    ("    QuerySet.update (UPDATE queued)", "django/db/models/query.py", "update"),
]


def profile_paths(jobs: int, batches: int, batch: int, owner) -> dict[str, Any]:
    """cProfile `jobs` .delay() and job_enqueue calls, `batches` job_enqueue_many calls; µs per job at each point."""
    from tasks.services.jobs import JobRequest, job_enqueue_many

    report: dict[str, Any] = {}
    runs = {
        "raw": (jobs, lambda: [raw_delay() for _ in range(jobs)]),
        "single": (jobs, lambda: [ours_enqueue(owner) for _ in range(jobs)]),
        "many": (
            batches * batch,
            lambda: [
                job_enqueue_many(
                    requests=[JobRequest("ops.ping", dict(PAYLOAD)) for _ in range(batch)], owner=owner, origin="bench"
                )
                for _ in range(batches)
            ],
        ),
    }
    for name, (count, run) in runs.items():
        profiler = cProfile.Profile()
        profiler.enable()
        run()
        profiler.disable()
        path = OUT_DIR / f"enqueue-{name}.prof"
        profiler.dump_stats(path)
        stats = pstats.Stats(profiler)
        points = {}
        for label, fragment, function in PROFILE_POINTS:
            cumulative, calls = 0.0, 0
            for (filename, _line, funcname), (_cc, ncalls, _tt, ct, _callers) in stats.stats.items():
                if funcname == function and filename.replace(os.sep, "/").endswith(fragment):
                    cumulative, calls = cumulative + ct, calls + ncalls
            if calls:
                points[label] = {"us_per_job": round(cumulative / count * 1e6, 1), "calls": calls}
        report[name] = {"jobs": count, "profile": str(path.relative_to(BASE_DIR)), "points": points}
        print(f"\nprofile of {name} ({count} jobs; under cProfile, so slower than measured): µs per job")
        for label, point in points.items():
            print(f"  {label:<36} {point['us_per_job']:>8.1f}   ({point['calls']} calls)")
        print(f"  (full profile: {path.relative_to(BASE_DIR)}; python -m pstats to browse)")
    return report


# --- report ------------------------------------------------------------------------------------


def rows_for(results: dict[str, Any]) -> list[dict[str, Any]]:
    single, many, api, latency = results["single"], results["many"], results["api"], results["latency"]
    rows = [
        {
            "metric": "job_enqueue, 1 per transaction (jobs/s)",
            "ours": single["ours"]["per_second"],
            "raw": single["raw"]["per_second"],
            "goal": f">= {GOAL_SINGLE}x",
            "min_ratio": GOAL_SINGLE,
        },
        {
            "metric": f"job_enqueue_many, {results['config']['batch']}/call (jobs/s)",
            "ours": many["ours"]["per_second"],
            "raw": many["raw"]["per_second"],
            "goal": f">= {GOAL_MANY:g}x",
            "min_ratio": GOAL_MANY,
        },
        {
            "metric": f"POST /api/jobs, {api['clients']} clients (req/s)",
            "ours": api["per_second"],
            "raw": single["raw"]["per_second"],
            "goal": "info",
        },
        {
            "metric": "POST /api/jobs p50 (ms)",
            "ours": api["p50_ms"],
            "raw": single["raw"]["call_p50_ms"],
            "goal": "info",
        },
        {
            "metric": "POST /api/jobs p99 (ms)",
            "ours": api["p99_ms"],
            "raw": single["raw"]["call_p99_ms"],
            "goal": "info",
        },
        {
            "metric": "enqueue->start p50, ledger (ms)",
            "ours": latency["ours"]["ledger_ms"]["p50"],
            "raw": latency["raw"]["ledger_ms"]["p50"],
            "goal": f"<= {GOAL_LATENCY_P50}x",
            "max_ratio": GOAL_LATENCY_P50,
        },
        {
            "metric": "enqueue->start p50, wall (ms)",
            "ours": latency["ours"]["wall_ms"]["p50"],
            "raw": latency["raw"]["wall_ms"]["p50"],
            "goal": "info",
        },
        {
            "metric": "enqueue->start p95, ledger (ms)",
            "ours": latency["ours"]["ledger_ms"]["p95"],
            "raw": latency["raw"]["ledger_ms"]["p95"],
            "goal": "info",
        },
    ]
    for row in rows:
        row["ratio"] = round(row["ours"] / row["raw"], 3) if row["raw"] else None
        if "min_ratio" in row:
            row["met"] = row["ratio"] is not None and row["ratio"] >= row.pop("min_ratio")
        elif "max_ratio" in row:
            row["met"] = row["ratio"] is not None and row["ratio"] <= row.pop("max_ratio")
        else:
            row["met"] = None
    return rows


def print_table(rows: list[dict[str, Any]], database: str) -> None:
    header = f"{'metric':<42} {'ours':>9} {'raw':>9} {'ratio':>7}  {'goal':<8} {'met?':<4}"
    print(f"\nenqueue bench, database {database}")
    print(header)
    print("-" * len(header))
    for row in rows:
        met = "-" if row["met"] is None else ("yes" if row["met"] else "NO")
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        print(f"{row['metric']:<42} {row['ours']:>9.2f} {row['raw']:>9.2f} {ratio:>7}  {row['goal']:<8} {met:<4}")
    print(
        "raw: ops_ping.delay() in this process (rows 1-5); send_task + the row the worker writes (rows 6-8).\n"
        "API rows: no raw HTTP path exists, the in-process .delay() figures are shown for scale only."
    )


def bench_user():
    """A user and a fresh bearer token, as `create_api_token` makes them."""
    from django.contrib.auth import get_user_model

    from tasks.models import ApiToken

    user, _ = get_user_model().objects.get_or_create(username=BENCH_USER)
    _, token = ApiToken.issue(user)
    return user, token


def delete_rows(user, raw_ids: list[str]) -> None:
    """Leave a shared bench database as it was: this run's jobs and the bench user go."""
    from tasks.models import Job

    Job.objects.filter(owner=user).delete()
    for start in range(0, len(raw_ids), 500):
        Job.objects.filter(pk__in=raw_ids[start : start + 500]).delete()
    user.delete()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.enqueue", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="phase 1: job_enqueue and .delay() calls each")
    parser.add_argument("--block", type=int, default=250, help="phase 1: calls per interleaved block (250)")
    parser.add_argument("--many", type=int, default=10000, help="phase 2: jobs through job_enqueue_many (10000)")
    parser.add_argument("--batch", type=int, default=1000, help="phase 2: jobs per job_enqueue_many call (1000)")
    parser.add_argument("--requests", type=int, default=2000, help="phase 3: POST /api/jobs requests (2000)")
    parser.add_argument("--clients", type=int, default=8, help="phase 3: concurrent client threads (8)")
    parser.add_argument("--samples", type=int, default=50, help="phase 4: latency samples per side (50)")
    parser.add_argument("--gap", type=float, default=0.02, help="phase 4: idle seconds between jobs (0.02)")
    parser.add_argument("--profile", action="store_true", help="also cProfile job_enqueue and job_enqueue_many")
    args = parser.parse_args(argv)
    if min(args.jobs, args.block, args.many, args.batch, args.requests, args.clients, args.samples) < 1:
        parser.error("counts must be at least 1")

    started: list[ManagedProcess] = []
    flushed = False
    throwaway_db = not os.environ.get("BENCH_DATABASE_URL")
    bundled = prepare_environment(SQLITE_NAME)
    if bundled:
        started.append(bundled.process)
    user, raw_ids = None, []
    try:
        import django

        django.setup()
        from django.core.management import call_command
        from django.db import connection

        call_command("migrate", interactive=False, verbosity=0)
        redis_url = os.environ["REDIS_URL"]
        refuse_foreign_workers()
        flush_redis(redis_url)  # before this process publishes anything
        flushed = True
        user, token = bench_user()
        database = f"{connection.vendor} ({redacted(os.environ['DATABASE_URL'])})"
        print(f"redis {redacted(redis_url)}, database {database}, {os.cpu_count()} CPUs")
        load: dict[str, Any] = {"start": load_note()}

        # Warm both paths (imports, connections, queue declarations) before measuring.
        for _ in range(20):
            raw_delay()
            ours_enqueue(user)

        print(f"phase 1: {args.jobs} job_enqueue vs {args.jobs} .delay(), blocks of {args.block}, no consumer")
        ours, raw = measure_single(args.jobs, args.block, user)
        single = {"ours": ours.summary(), "raw": raw.summary()}
        load["single"] = load_note()

        print(f"phase 2: {args.many} jobs via job_enqueue_many ({args.batch}/call) vs {args.many} .delay()")
        ours, raw = measure_many(args.many, args.batch, user)
        many = {"ours": ours.summary(items=args.many), "raw": raw.summary()}
        load["many"] = load_note()
        empty_broker(redis_url)

        print(f"phase 3: {args.requests} POST /api/jobs from {args.clients} threads; starting web from the Procfile:")
        web, base_url = start_web()
        started.append(web)
        post_jobs(base_url, token, total=args.clients * 5, clients=args.clients)  # warm-up: connect, import
        api = post_jobs(base_url, token, total=args.requests, clients=args.clients)
        load["api"] = load_note()
        web.stop()
        started.remove(web)
        if set(api["statuses"]) != {"202"} or api["statuses"]["202"] != args.requests or api["errors"]:
            raise SystemExit(f"POST /api/jobs did not answer 202 every time: {api}\n{web.log()[-2000:]}")
        empty_broker(redis_url)

        print(f"phase 4: {args.samples} enqueue->start samples each, interleaved; starting worker-default:")
        worker = start_procfile_process("worker-default")
        started.append(worker)
        wait_for_workers([f"default@{socket.gethostname()}"])
        measured = measure_latency(args.samples, warm_up=4, gap=args.gap, owner=user)
        raw_ids = measured.pop("raw_ids")
        latency = {
            side: {
                "ledger_ms": latency_summary(samples, "ledger_ms"),
                "wall_ms": latency_summary(samples, "wall_ms"),
            }
            for side, samples in measured.items()
        }
        latency["ours"]["pickup_ms"] = latency_summary(measured["ours"], "pickup_ms")
        load["latency"] = load_note()
        worker.stop()
        started.remove(worker)

        results = {
            "at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "database": connection.vendor,
            "config": vars(args),
            "single": single,
            "many": many,
            "api": api,
            "latency": latency,
            "load": load,
        }
        rows = rows_for(results)
        results["table"] = rows
        print_table(rows, database)
        print(f"load (1-min average, pytest processes): {json.dumps(load)}")
        if args.profile:
            empty_broker(redis_url)
            results["profile"] = profile_paths(jobs=1000, batches=5, batch=args.batch, owner=user)
        results["samples"] = measured
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        out = OUT_DIR / "enqueue.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"figures written to {out.relative_to(BASE_DIR)}")
    finally:
        for process in reversed(started):  # workers and web first, Redis last
            process.stop()
        if flushed and not bundled:  # leave no messages behind in a shared Redis
            empty_broker(os.environ["REDIS_URL"])
        if user is not None and not throwaway_db:
            delete_rows(user, raw_ids)


if __name__ == "__main__":
    sys.exit(main())
