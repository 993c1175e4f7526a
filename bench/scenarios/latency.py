"""Latencies: enqueue to start at idle (ours vs raw), POST /api/jobs under an open-loop load, and
a critical job's start while 10,000 bulk jobs wait.

A start is measured from the bench's clock just before the call: ours to the ledger's
``started_at`` (the worker's clock as it begins the attempt), read once the job's live events
said it succeeded (no polling of the database while it runs); raw to the time its task pushes
to Redis as it begins. Each job is waited for before the next, so every one starts on an idle
worker.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django.utils import timezone

from bench.context import Bench
from bench.environment import broker_client
from bench.figures import REPORT, Results, at_most, percentile, ratio_at_most
from bench.jobs import ours_enqueue, raw_stamp
from bench.processes import BULK_TOPOLOGY, DEFAULT_TOPOLOGY, OURS, RAW, Workers, running_together, start_web
from tests.support.processes import wait_until

WARM_UP = 4
#: idle time between two samples, so each starts on an idle worker
GAP_SECONDS = 0.02
STAMP_KEY = "bench:raw:started"
#: client threads of the open-loop load: enough that a slow answer never delays the next request
API_CLIENTS = 16
#: what each backlog job does: long enough that the bulk worker is always busy
BACKLOG_HOLD_SECONDS = 0.2


class JobEvents:
    """Live job events (Redis pub/sub), to learn that a job finished without polling the ledger."""

    def __init__(self) -> None:
        self.pubsub = broker_client().pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe("jobs:*:events")

    def wait(self, job_id, state: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=1)
            if message is None:
                continue
            event = json.loads(message["data"])
            if event["job"] == str(job_id) and event.get("state") == state:
                return
        raise SystemExit(f"job {job_id} did not reach {state} within {timeout}s")

    def close(self) -> None:
        self.pubsub.close()


def ours_start_ms(bench: Bench, listener: JobEvents, *, owner=None, **options) -> float:
    """One ops.noop job (the bench user's unless told), enqueued and waited for until it
    succeeded: ms from the call to its start."""
    from tasks.models import Job

    before = timezone.now()
    job = ours_enqueue(owner or bench.owner, **options)
    listener.wait(job.pk, Job.State.SUCCEEDED)
    started_at: datetime = Job.objects.values_list("started_at", flat=True).get(pk=job.pk)
    return (started_at - before).total_seconds() * 1000


def raw_start_ms() -> float:
    from bench.raw_app import stamp

    before = time.time()
    stamp.delay(STAMP_KEY)
    return (raw_stamp(STAMP_KEY, timeout=30) - before) * 1000


def idle_start(bench: Bench, results: Results) -> None:
    ours, raw = [], []
    listener = JobEvents()
    try:
        with running_together(
            Workers(OURS, DEFAULT_TOPOLOGY, queues=[OURS.queue], log_dir=bench.log_dir),
            Workers(RAW, DEFAULT_TOPOLOGY, queues=[RAW.queue], log_dir=bench.log_dir),
        ):
            for index in range(WARM_UP + bench.sizes.latency_samples):
                raw_ms = raw_start_ms()
                time.sleep(GAP_SECONDS)
                ours_ms = ours_start_ms(bench, listener)
                time.sleep(GAP_SECONDS)
                if index >= WARM_UP:
                    raw.append(raw_ms)
                    ours.append(ours_ms)
    finally:
        listener.close()
    bench.reset()
    figure = results.figure(
        "latency.enqueue_start_p50",
        f"Enqueue to task start at idle, p50 ({DEFAULT_TOPOLOGY.label})",
        "ms",
        goal=ratio_at_most(1.2),
    )
    figure.record(percentile(ours, 50), percentile(raw, 50), ours_p95=percentile(ours, 95), raw_p95=percentile(raw, 95))
    figure.add_samples("ours", ours)
    figure.add_samples("raw Celery", raw)
    print(f"    enqueue->start p50: ours {percentile(ours, 50):.2f} ms, raw {percentile(raw, 50):.2f} ms")


def api_open_loop(bench: Bench, results: Results) -> None:
    sizes = bench.sizes
    web, base_url = start_web(bench.log_dir)
    try:
        token = bench.api_token()
        post_open_loop(base_url, token, rate=sizes.api_rate, seconds=1)  # warm-up: connections, imports
        latencies, statuses = post_open_loop(base_url, token, rate=sizes.api_rate, seconds=sizes.api_seconds)
    finally:
        web.stop()
    bench.reset()
    if set(statuses) != {202}:
        raise SystemExit(f"POST /api/jobs did not always answer 202: {statuses}\n{web.log()[-2000:]}")
    what = f"POST /api/jobs at {sizes.api_rate:g} requests/s (open loop, {sizes.api_seconds:g} s)"
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    results.figure("latency.api_p50", f"{what}, p50", "ms", baseline=None, goal=REPORT).record(p50)
    results.figure("latency.api_p99", f"{what}, p99", "ms", baseline=None, goal=at_most(25, "ms")).record(p99)
    results.figures["latency.api_p50"].add_samples("POST /api/jobs", latencies)
    print(f"    POST /api/jobs: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def post_open_loop(base_url: str, token: str, *, rate: float, seconds: float) -> tuple[list[float], dict[int, int]]:
    """POST /api/jobs (an ops.noop job) in an open loop (``open_loop``)."""
    body = json.dumps({"task": "ops.noop"})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies, statuses = open_loop(
        lambda session, _: session.post(f"{base_url}/api/jobs", data=body, headers=headers, timeout=30).status_code,
        rate=rate,
        seconds=seconds,
    )
    return latencies, status_counts(statuses)


def open_loop(send: Callable[[Any, int], int], *, rate: float, seconds: float) -> tuple[list[float], list[int]]:
    """``send(session, i)`` (request i through a requests session; its status) on a fixed schedule
    (request i at start + i / rate), whatever the answers take; each latency runs from when the
    request was due, so a slow server cannot hide its queueing by slowing the load down. The
    latencies and statuses, in request order."""
    import requests

    total = round(rate * seconds)
    latencies: list[float] = [0.0] * total
    statuses: list[int] = [0] * total
    numbers = itertools.count()  # next() on it is atomic under the GIL
    start = time.perf_counter() + 0.1

    def client() -> None:
        with requests.Session() as session:
            while (number := next(numbers)) < total:
                due = start + number / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                try:
                    statuses[number] = send(session, number)
                except requests.RequestException:
                    statuses[number] = -1
                latencies[number] = (time.perf_counter() - due) * 1000

    threads = [threading.Thread(target=client, daemon=True) for _ in range(API_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, statuses


def status_counts(statuses: list[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def critical_starts(bench: Bench, listener: JobEvents, count: int) -> list[float]:
    """Critical jobs one at a time, each waited for: ms from the call to the start of each."""
    starts = []
    for _ in range(count):
        starts.append(ours_start_ms(bench, listener, queue="critical"))
        time.sleep(GAP_SECONDS)
    return starts


def critical_under_backlog(bench: Bench, results: Results) -> None:
    from tasks.models import Job
    from tasks.platform.services.jobs import JobRequest, job_enqueue_many

    sizes = bench.sizes
    listener = JobEvents()
    try:
        with running_together(
            Workers(OURS, DEFAULT_TOPOLOGY, queues=["critical"], log_dir=bench.log_dir),
            Workers(OURS, BULK_TOPOLOGY, queues=["bulk"], log_dir=bench.log_dir),
        ):
            critical_starts(bench, listener, WARM_UP)
            idle = critical_starts(bench, listener, sizes.critical_samples)
            backlog = [JobRequest("ops.ping", {"hold_seconds": BACKLOG_HOLD_SECONDS}, queue="bulk")]
            for start in range(0, sizes.backlog, 1000):
                job_enqueue_many(requests=backlog * min(1000, sizes.backlog - start), owner=bench.owner, origin="bench")
            bulk = Job.objects.filter(queue="bulk")
            started = bulk.filter(started_at__isnull=False)
            wait_until(started.exists, timeout=30, what="the bulk worker to start on the backlog")
            loaded = critical_starts(bench, listener, sizes.critical_samples)
            still_waiting = bulk.filter(started_at__isnull=True).count()
    finally:
        listener.close()
    bench.reset()
    figure = results.figure(
        "latency.critical_p95",
        f"Critical job: enqueue to start, p95, with {sizes.backlog:,} bulk jobs waiting, vs idle",
        "ms",
        goal=ratio_at_most(2),
        baseline="idle",
    )
    figure.record(percentile(loaded, 95), percentile(idle, 95), bulk_jobs_still_waiting=still_waiting)
    figure.add_samples("idle", idle)
    figure.add_samples(f"{sizes.backlog:,} bulk jobs waiting", loaded)
    print(f"    critical p95: {percentile(loaded, 95):.2f} ms with the backlog, {percentile(idle, 95):.2f} ms idle")


def run(bench: Bench, results: Results) -> None:
    idle_start(bench, results)
    api_open_loop(bench, results)
    critical_under_backlog(bench, results)
