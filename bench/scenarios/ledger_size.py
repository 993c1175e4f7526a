"""A ledger that stays fast at 10 million rows (issue #25): enqueue, drain, the API's job list and
retention, on an empty ledger and again on a generated one of ``ledger_rows`` finished jobs.

PostgreSQL only (the ledger is generated with generate_series); on SQLite the scenario says it is
skipped. One web process (the Procfile's line) and one worker of the Procfile's worker-default
topology run throughout; the worker waits on an empty queue except while a drain is measured.

Each phase measures, in this order:

- the API's list: ``GET /api/jobs`` (first page, default filters) and ``GET /api/jobs?state=failed``
  through the web process, as a staff user who sees every job (the view permission), one request
  at a time, ``ledger_api_samples`` of each: p50 and p95 (ms). On the "empty" side the ledger holds
  EMPTY_LIST_ROWS generated jobs, so that both lists have a full first page to render;
- enqueue: ``ledger_enqueue`` ``job_enqueue`` calls one at a time, each its own transaction, as
  bench/scenarios/enqueue.py times ours (jobs/s);
- drain: ``ledger_drain`` no-op jobs sent one a message (``job_enqueue``), then consumed by the
  worker, timed from its switch to the queue to the last ``finished_at``, as bench/scenarios/drain.py
  times ours (jobs/s); ``ledger_drains`` times, the median reported (each drain in the details);
- enqueue latency at rest: ``job_enqueue`` one at a time at ``ledger_enqueue_rate`` a second for
  ``ledger_quiet_seconds`` (p50, p99, max, ms).

Retention: with ``ledger_expired`` of the rows expired (succeeded, finished before the
JOB_RETENTION_DAYS cutoff), the platform's retention (tasks.platform.services.retention, as the
nightly *Prune finished jobs* runs it) runs in a process of its own while this process enqueues one
job at a time at ``ledger_enqueue_rate`` a second; reported: the retention's duration and the
enqueue latency during it against the same loop at rest. Its "empty" side is a ledger of the
expired rows only. A retention still running after ``ledger_retention_seconds`` is stopped: its
duration is then extrapolated from the rows it deleted (the figure's details say so).

The generated ledger: INSERT ... SELECT over generate_series, FILL_CHUNK rows a statement, each job
with its one attempt (one statement: the attempts are inserted from the jobs' RETURNING); a mix of
tasks, queues, states and owners (TASK_MIX; system tasks have no owner); created and finished over
the past LEDGER_DAYS days, ids time-ordered as the platform's UUIDv7s; then VACUUM ANALYZE and a
CHECKPOINT (what autovacuum would have done, and no checkpoint of the load inside a measurement).
Every row is removed at the end (TRUNCATE).
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from datetime import timedelta

from django.db import connection

from bench.context import Bench
from bench.environment import empty_broker
from bench.figures import REPORT, Results, percentile, ratio_at_least, ratio_at_most
from bench.jobs import drain_timeout, ensure_published
from bench.processes import DEFAULT_TOPOLOGY, OURS, Workers, api_token, start_web
from tests.support.processes import BASE_DIR, BIN_DIR, wait_until

#: rows a fill statement inserts
FILL_CHUNK = 1_000_000
#: the "empty" ledger's list has this many jobs, so that its first page is full
EMPTY_LIST_ROWS = 1_000
#: generated jobs were created over this many days
LEDGER_DAYS = 90
#: the users (besides the bench's) the generated jobs belong to
OWNERS = 20
VIEWER = "bench-ledger-viewer"
#: the state the filtered list asks for
LIST_STATE = "failed"
WARM_UP = 20
#: the issue's bound: within 10% of the empty ledger's figure
WITHIN = 0.10
EMPTY = "empty ledger"

#: (task, queue, origin, system task: no owner, share of the jobs)
TASK_MIX = [
    ("ops.noop", "default", "api", False, 0.30),
    ("webhooks.deliver", "default", "api", False, 0.22),
    ("notifications.send_welcome_email", "default", "api", False, 0.10),
    ("orders.validate_payment", "critical", "api", False, 0.08),
    ("orders.reserve_inventory", "critical", "api", False, 0.08),
    ("orders.send_confirmation", "critical", "api", False, 0.08),
    ("alerts.evaluate", "critical", "beat:Evaluate alerts", True, 0.08),
    ("reports.build_sales", "bulk", "api", False, 0.04),
    ("ops.fail", "default", "api", False, 0.02),
]

# Row n of the ledger (1..rows): the first ``expired`` rows are succeeded jobs that finished between
# retention + 1 and LEDGER_DAYS - 1 days ago (oldest first); the others finished within the
# retention: 90% succeeded, 6% failed, 2% dead, 2% cancelled; failed, dead and cancelled ones spread
# over LEDGER_DAYS - 1 days (their retention is longer), succeeded ones over the retention's days.
# Ids are UUIDv7-like (the creation's milliseconds first), as the platform writes them.
FILL = """
WITH mix (task_name, queue, origin, is_system, lo, hi) AS (SELECT * FROM (VALUES {mix}) AS m),
numbered AS (
    SELECT n, random() AS r_task, random() AS r_state, random() AS r_owner, random() AS r_age,
        random() AS r_run
    FROM generate_series(%(first)s, %(last)s) AS n
),
shaped AS (
    SELECT numbered.*, mix.*,
        CASE WHEN n <= %(expired)s THEN 'succeeded'
             WHEN r_state < 0.90 THEN 'succeeded' WHEN r_state < 0.96 THEN 'failed'
             WHEN r_state < 0.98 THEN 'dead' ELSE 'cancelled' END AS state,
        now() - CASE
            WHEN n <= %(expired)s THEN make_interval(days => %(retention)s + 1)
                + (1 - (n - 1)::float8 / greatest(%(expired)s, 1)) * make_interval(days => %(old_span)s)
            WHEN r_state >= 0.90 THEN r_age * make_interval(days => %(days)s - 1)
            ELSE (1 - (n - %(expired)s)::float8 / greatest(%(recent)s, 1)) * make_interval(days => %(retention)s - 1)
        END AS created
    FROM numbered JOIN mix ON r_task >= mix.lo AND r_task < mix.hi
),
jobs AS (
    INSERT INTO tasks_job (id, task_name, queue, priority, payload, state, attempts, attempts_before_retry,
        held_reason, flow_key, share_key, progress, progress_message, result, error, traceback, worker, origin,
        owner_id, waiting_for, created_at, queued_at, started_at, finished_at)
    SELECT
        (lpad(to_hex((extract(epoch FROM created) * 1000)::bigint), 12, '0') || '7'
            || substr(md5(n::text), 1, 3) || '8' || substr(md5(n::text), 4, 15))::uuid,
        task_name, queue, 5,
        CASE WHEN is_system THEN '{{}}'::jsonb ELSE jsonb_build_object('ref', n) END,
        state, CASE state WHEN 'dead' THEN 5 WHEN 'failed' THEN 3 ELSE 1 END, 0, '', '', '',
        CASE state WHEN 'succeeded' THEN 100 ELSE 0 END, '',
        CASE state WHEN 'succeeded' THEN '{{"ok": true}}'::jsonb END,
        CASE WHEN state IN ('failed', 'dead') THEN 'TransientOpsError: gateway answered 502 for ref ' || n
             WHEN state = 'cancelled' THEN 'cancelled by its owner' ELSE '' END,
        CASE WHEN state IN ('failed', 'dead') THEN 'Traceback (most recent call last): ... TransientOpsError'
             ELSE '' END,
        'worker-' || queue || '-' || (1 + floor(r_owner * 4))::int || '@bench', origin,
        CASE WHEN is_system THEN NULL ELSE (%(owners)s::int[])[1 + floor(r_owner * %(owner_count)s)::int] END,
        0, created, created, created + interval '40 milliseconds',
        created + interval '40 milliseconds' + r_run * interval '2 seconds'
    FROM shaped
    RETURNING id, worker, started_at, finished_at, state, error
)
INSERT INTO tasks_jobattempt (number, worker, started_at, finished_at, outcome, error, job_id)
SELECT 1, worker, started_at, finished_at, CASE state WHEN 'succeeded' THEN 'succeeded' ELSE 'failed' END, error, id
FROM jobs
"""


def mix_values() -> str:
    rows, low = [], 0.0
    for number, (task, queue, origin, system, share) in enumerate(TASK_MIX):
        high = 2.0 if number == len(TASK_MIX) - 1 else low + share  # the last one takes what rounding left
        rows.append(f"('{task}', '{queue}', '{origin}', {str(system).lower()}, {low!r}::float8, {high!r}::float8)")
        low = high
    return ", ".join(rows)


def fill(rows: int, *, expired: int, owners: list[int]) -> float:
    """The ledger with ``rows`` generated finished jobs (and their attempts), of which the first
    ``expired`` are past their retention; seconds it took, with VACUUM ANALYZE."""
    from django.conf import settings

    started = time.monotonic()
    sql = FILL.format(mix=mix_values())
    retention = settings.JOB_RETENTION_DAYS
    with connection.cursor() as cursor:
        for first in range(1, rows + 1, FILL_CHUNK):
            last = min(rows, first + FILL_CHUNK - 1)
            cursor.execute(
                sql,
                {
                    "first": first,
                    "last": last,
                    "expired": expired,
                    "recent": rows - expired,
                    "retention": retention,
                    "old_span": max(1, LEDGER_DAYS - retention - 2),
                    "days": LEDGER_DAYS,
                    "owners": owners,
                    "owner_count": len(owners),
                },
            )
            print(f"    filled {last:,} of {rows:,} rows ({time.monotonic() - started:.0f} s)", flush=True)
        cursor.execute("VACUUM ANALYZE tasks_job")
        cursor.execute("VACUUM ANALYZE tasks_jobattempt")
        cursor.execute("CHECKPOINT")
    seconds = time.monotonic() - started
    print(f"    ledger of {rows:,} rows ({expired:,} expired) in {seconds:.0f} s", flush=True)
    return seconds


def ledger_owners(bench: Bench) -> list[int]:
    from django.contrib.auth import get_user_model

    model = get_user_model()
    ids = [bench.owner.pk]
    for number in range(OWNERS):
        user, _ = model.objects.get_or_create(username=f"bench-ledger-{number}")
        ids.append(user.pk)
    return ids


def viewer_token() -> str:
    """A bearer token of a staff user who sees every job (the view permission)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user, _ = get_user_model().objects.get_or_create(username=VIEWER, defaults={"is_staff": True})
    user.user_permissions.add(Permission.objects.get(content_type__app_label="tasks", codename="view_job"))
    return api_token(VIEWER)


def list_latencies(session, url: str, samples: int) -> list[float]:
    """``samples`` GETs of ``url`` one after the other (ms), after two of warm-up."""
    latencies = []
    for number in range(samples + 2):
        started = time.perf_counter()
        response = session.get(url, timeout=120)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200 or "count" not in response.json():
            raise SystemExit(f"GET {url} answered {response.status_code}: {response.text[:500]}")
        if number >= 2:
            latencies.append(elapsed)
    return latencies


def measure_list(bench: Bench, base_url: str, token: str) -> dict[str, list[float]]:
    import requests

    session = requests.Session()
    session.headers.update({"Authorization": f"Bearer {token}"})
    samples = bench.sizes.ledger_api_samples
    return {
        "list": list_latencies(session, f"{base_url}/api/jobs", samples),
        "list_state": list_latencies(session, f"{base_url}/api/jobs?state={LIST_STATE}", samples),
    }


def enqueue_one(owner) -> tuple[object, float]:
    """One ops.noop job through job_enqueue, its own transaction; its id and ms."""
    from tasks.platform.services.jobs import job_enqueue

    started = time.perf_counter()
    job = job_enqueue(task_name="ops.noop", owner=owner, origin="bench")
    elapsed = (time.perf_counter() - started) * 1000
    ensure_published([job])
    return job.pk, elapsed


def drop_jobs(ids: list) -> None:
    """Remove the bench's own jobs (and their messages): the generated ledger stays as it was."""
    from tasks.models import Job

    for start in range(0, len(ids), 1000):
        Job.objects.filter(pk__in=ids[start : start + 1000]).delete()
    empty_broker()


def measure_enqueue(bench: Bench) -> float:
    """jobs/s of job_enqueue one at a time (no worker consumes them)."""
    ids = [enqueue_one(bench.owner)[0] for _ in range(WARM_UP)]
    started = time.perf_counter()
    for _ in range(bench.sizes.ledger_enqueue):
        ids.append(enqueue_one(bench.owner)[0])
    seconds = time.perf_counter() - started
    drop_jobs(ids)
    return bench.sizes.ledger_enqueue / seconds


def measure_drain(bench: Bench, workers: Workers) -> float:
    """jobs/s of the worker draining no-op jobs sent one a message (timed as drain.py times ours)."""
    from django.db.models import Max
    from django.utils import timezone

    from tasks.models import Job
    from tasks.platform.models.jobs import FINISHED_STATES

    jobs = bench.sizes.ledger_drain
    ids = [enqueue_one(bench.owner)[0] for _ in range(jobs)]
    mine = Job.objects.filter(pk__in=ids)
    start = timezone.now()
    workers.consume(OURS.queue, instead_of=OURS.idle_queue)
    wait_until(
        lambda: mine.filter(state__in=FINISHED_STATES).count() >= jobs,
        timeout=drain_timeout(jobs),
        interval=0.05,
        what=f"{jobs} jobs to finish",
    )
    workers.consume(OURS.idle_queue, instead_of=OURS.queue)
    if mine.exclude(state=Job.State.SUCCEEDED).exists():
        raise SystemExit("ledger_size: a drained no-op job did not succeed")
    last = mine.aggregate(last=Max("finished_at"))["last"]
    drop_jobs(ids)
    return jobs / (last - start).total_seconds()


def paced_enqueues(bench: Bench, *, until) -> tuple[list[float], list]:
    """job_enqueue one at a time at ``ledger_enqueue_rate`` a second while ``until()`` is false:
    each call's ms, and the jobs' ids."""
    interval = 1 / bench.sizes.ledger_enqueue_rate
    latencies, ids = [], []
    due = time.perf_counter()
    while not until():
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        job_id, ms = enqueue_one(bench.owner)
        latencies.append(ms)
        ids.append(job_id)
        due = max(due + interval, time.perf_counter())  # late: the next one now, no burst
    return latencies, ids


def quiet_enqueues(bench: Bench) -> list[float]:
    deadline = time.monotonic() + bench.sizes.ledger_quiet_seconds
    latencies, ids = paced_enqueues(bench, until=lambda: time.monotonic() > deadline)
    drop_jobs(ids)
    return latencies


RETENTION = """
import json, sys, time
import django
django.setup()
from datetime import timedelta
from django.conf import settings
from tasks.platform.services.retention import jobs_prune_finished
print("started", flush=True)
started = time.monotonic()
deleted = jobs_prune_finished(
    succeeded_older_than=timedelta(days=settings.JOB_RETENTION_DAYS),
    failed_older_than=timedelta(days=settings.JOB_FAILED_RETENTION_DAYS),
)
print(json.dumps({"seconds": time.monotonic() - started, "deleted": deleted}), flush=True)
"""


def expired_left() -> int:
    from django.conf import settings
    from django.utils import timezone

    from tasks.models import Job

    cutoff = timezone.now() - timedelta(days=settings.JOB_RETENTION_DAYS)
    return Job.objects.filter(state=Job.State.SUCCEEDED, finished_at__lt=cutoff).order_by().count()


def retention_under_enqueues(bench: Bench, expired: int) -> dict:
    """The platform's retention in a process of its own, while this one enqueues at a steady rate:
    its duration (extrapolated from the rows it deleted when stopped at ``ledger_retention_seconds``),
    and the enqueues' latencies (ms) during it."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings"}
    process = subprocess.Popen(
        [str(BIN_DIR / "python"), "-c", RETENTION],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        if process.stdout.readline().strip() != "started":
            raise SystemExit("ledger_size: the retention process did not start")
        started = time.monotonic()
        deadline = started + bench.sizes.ledger_retention_seconds
        latencies, ids = paced_enqueues(bench, until=lambda: process.poll() is not None or time.monotonic() > deadline)
        finished = process.poll() is not None
        if not finished:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
        elapsed = time.monotonic() - started
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    drop_jobs(ids)
    if finished:
        if process.returncode:
            raise SystemExit(f"ledger_size: the retention process failed ({process.returncode})")
        answer = json.loads(output.strip().splitlines()[-1])
        deleted = sum(answer["deleted"].values())
        seconds = answer["seconds"]
    else:
        deleted = expired - expired_left()
        seconds = elapsed * expired / max(deleted, 1)
        print(f"    retention stopped after {elapsed:.0f} s: {deleted:,} of {expired:,} rows deleted", flush=True)
    return {"seconds": seconds, "deleted": deleted, "finished": finished, "latencies": latencies}


def phase(bench: Bench, workers: Workers, base_url: str, token: str, *, rows: int, owners: list[int]) -> dict:
    """Every figure on a ledger of ``rows`` generated jobs (0: the empty ledger)."""
    sizes = bench.sizes
    measured: dict = {}
    bench.reset()
    expired = min(sizes.ledger_expired, sizes.ledger_rows)
    if rows:
        measured["fill_seconds"] = fill(rows, expired=expired, owners=owners)
    else:
        fill(EMPTY_LIST_ROWS, expired=0, owners=owners)
    measured.update(measure_list(bench, base_url, token))
    if not rows:
        bench.reset()
    measured["enqueue"] = measure_enqueue(bench)
    measured["drains"] = [measure_drain(bench, workers) for _ in range(sizes.ledger_drains)]
    measured["quiet"] = quiet_enqueues(bench)
    if not rows:  # the retention's baseline: a ledger of the expired rows only
        fill(expired, expired=expired, owners=owners)
        measured["quiet_expired_only"] = quiet_enqueues(bench)
    measured["retention"] = retention_under_enqueues(bench, expired)
    bench.reset()
    return measured


def run(bench: Bench, results: Results) -> None:
    if connection.vendor != "postgresql":
        print("    ledger_size: skipped (PostgreSQL only: the ledger is generated with generate_series)")
        return
    sizes = bench.sizes
    rows = sizes.ledger_rows
    owners = ledger_owners(bench)
    token = viewer_token()
    web, base_url = start_web(bench.log_dir)
    try:
        with Workers(OURS, DEFAULT_TOPOLOGY, queues=[OURS.idle_queue], log_dir=bench.log_dir) as workers:
            empty = phase(bench, workers, base_url, token, rows=0, owners=owners)
            full = phase(bench, workers, base_url, token, rows=rows, owners=owners)
    finally:
        web.stop()
        bench.reset()
    record(results, bench, empty, full)


def record(results: Results, bench: Bench, empty: dict, full: dict) -> None:
    sizes = bench.sizes
    at = f"{sizes.ledger_rows:,} jobs vs {EMPTY}"
    expired_rows = min(sizes.ledger_expired, sizes.ledger_rows)
    details = {"rows": sizes.ledger_rows, "expired": expired_rows, "fill_seconds": round(full["fill_seconds"])}
    keep, grow = ratio_at_least(1 - WITHIN), ratio_at_most(1 + WITHIN)

    def figure(key: str, label: str, unit: str, ours: float, base: float, goal=REPORT, baseline=EMPTY, **extra):
        made = results.figure(f"ledger_size.{key}", label, unit, goal=goal, baseline=baseline)
        made.record(ours, base, **details, **extra)
        print(f"    {key}: {ours:,.2f} {unit} vs {base:,.2f} ({baseline}), {ours / base:.2f}x")
        return made

    figure("enqueue", f"Enqueue: job_enqueue one at a time, {at}", "jobs/s", full["enqueue"], empty["enqueue"], keep)
    figure(
        "drain",
        f"Drain of no-op jobs sent by job_enqueue, {DEFAULT_TOPOLOGY.label}, median of {sizes.ledger_drains}, {at}",
        "jobs/s",
        statistics.median(full["drains"]),
        statistics.median(empty["drains"]),
        keep,
        drains=[round(value) for value in full["drains"]],
        baseline_drains=[round(value) for value in empty["drains"]],
    )
    for key, what in (("list", "GET /api/jobs"), ("list_state", f"GET /api/jobs?state={LIST_STATE}")):
        for pct in (50, 95):
            made = figure(
                f"{key}_p{pct}",
                f"{what} (first page, staff who sees every job), p{pct}, {at} ({EMPTY_LIST_ROWS:,} jobs)",
                "ms",
                percentile(full[key], pct),
                percentile(empty[key], pct),
                grow,
            )
        made.add_samples(EMPTY, empty[key])
        made.add_samples(f"{sizes.ledger_rows:,} jobs", full[key])
    expired = f"{expired_rows:,} expired jobs"
    big, small = full["retention"], empty["retention"]
    figure(
        "retention_seconds",
        f"Retention of {expired}, in a ledger of {sizes.ledger_rows:,} jobs vs of those only",
        "s",
        big["seconds"],
        small["seconds"],
        baseline="expired jobs only",
        finished=big["finished"],
        baseline_finished=small["finished"],
        deleted=big["deleted"],
        baseline_deleted=small["deleted"],
    )
    rate = f"{sizes.ledger_enqueue_rate:g}/s"
    for pct, name in ((50, "p50"), (99, "p99"), (100, "max")):
        figure(
            f"retention_enqueue_{name}",
            f"Enqueue latency (job_enqueue, {rate}) during that retention, {name}, {sizes.ledger_rows:,} jobs, "
            "vs at rest",
            "ms",
            percentile(big["latencies"], pct),
            percentile(full["quiet"], pct),
            baseline="at rest",
            samples=len(big["latencies"]),
            expired_only_during=percentile(small["latencies"], pct),
            expired_only_at_rest=percentile(empty["quiet_expired_only"], pct),
            empty_at_rest=percentile(empty["quiet"], pct),
        )
