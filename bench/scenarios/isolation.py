"""Heavy work stays away from the web: the API's p99 and a critical job's start while sales reports
run back to back on the bulk queue, against the same with the bulk queue idle.

The web (the Procfile's line), a critical worker and a bulk worker (the Procfile's topologies) run
through both phases. Each phase measures, one after the other: POST /api/jobs and GET
/api/jobs/<id> taking turns in one open loop at ``api_rate`` requests/s in all for
``api_seconds``; and critical jobs one at a time (enqueue to start, as the latency scenario
measures it). At ``api_rate`` requests/s of each, the web alone uses both cores of the bench's
2-core machine: its latency is then its own queue's, idle or not. In the loaded phase a feeder keeps
a sales report over ``isolation_orders`` confirmed orders waiting behind the one being built, so
the bulk worker never rests.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from decimal import Decimal

from bench.context import Bench
from bench.figures import Results, percentile, ratio_at_most
from bench.processes import BULK_TOPOLOGY, DEFAULT_TOPOLOGY, OURS, Workers, running_together, start_web
from bench.report_memory import YEAR_FROM, seed_orders
from bench.scenarios.latency import (
    GAP_SECONDS,
    WARM_UP,
    JobEvents,
    open_loop,
    ours_start_ms,
    post_open_loop,
    status_counts,
)
from tests.support.processes import wait_until

GOAL = ratio_at_most(1.3)
#: the reports' range: the seeded orders' year
REPORT_DAYS = 366
#: reports waiting or being built at any moment of the loaded phase
REPORTS_IN_FLIGHT = 2


def seed(bench: Bench) -> None:
    from django.db import connection

    from tasks.models import Order, Product

    Order.objects.filter(customer=bench.owner).delete()
    widget, _ = Product.objects.update_or_create(sku="BENCH-W", defaults={"name": "Widget", "price": Decimal("10")})
    gadget, _ = Product.objects.update_or_create(sku="BENCH-G", defaults={"name": "Gadget", "price": Decimal("2.5")})
    orders = bench.sizes.isolation_orders
    seed_orders(customer=bench.owner, products=(widget, gadget), first=0, count=orders, spread=orders, days=REPORT_DAYS)
    if connection.vendor == "postgresql":
        # The seed's writes flushed to disk now, not by a checkpoint in the middle of a phase.
        with connection.cursor() as cursor:
            cursor.execute("CHECKPOINT")


class ReportFeeder:
    """Requests a sales report whenever fewer than REPORTS_IN_FLIGHT are unfinished, from a thread."""

    def __init__(self, owner) -> None:
        self.owner = owner
        self.requested: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from django.db import connection

        from tasks.models import Job
        from tasks.platform.models.jobs import FINISHED_STATES
        from tasks.reports.services import report_request

        try:
            while not self._stop.is_set():
                unfinished = Job.objects.filter(queue="bulk").exclude(state__in=FINISHED_STATES).count()
                for _ in range(REPORTS_IN_FLIGHT - unfinished):
                    report = report_request(owner=self.owner, date_from=YEAR_FROM, days=REPORT_DAYS, origin="bench")
                    self.requested.append(report.job_id)
                self._stop.wait(0.2)
        finally:
            connection.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[ReportFeeder]:
        from tasks.models import Job

        self._thread.start()
        try:
            started = Job.objects.filter(queue="bulk", started_at__isnull=False)
            wait_until(started.exists, timeout=60, what="the bulk worker to start a report")
            yield self
        finally:
            self._stop.set()
            self._thread.join(30)


def measure(bench: Bench, base_url: str, job_url: str, listener: JobEvents) -> dict[str, list[float]]:
    """One phase: POST /api/jobs and GET /api/jobs/<id> taking turns in one open loop at
    ``api_rate`` requests/s in all, then critical jobs' starts (ms)."""
    sizes, token = bench.sizes, bench.api_token()
    headers = {"Authorization": f"Bearer {token}"}

    def send(session, number: int) -> int:
        if number % 2:
            return session.get(job_url, headers=headers, timeout=30).status_code
        return session.post(f"{base_url}/api/jobs", json={"task": "ops.noop"}, headers=headers, timeout=30).status_code

    latencies, statuses = open_loop(send, rate=sizes.api_rate, seconds=sizes.api_seconds)
    posts, gets = status_counts(statuses[0::2]), status_counts(statuses[1::2])
    if set(posts) != {202} or set(gets) != {200}:
        raise SystemExit(f"the API did not answer as expected: POST {posts}, GET {gets}")
    critical = []
    for _ in range(sizes.isolation_critical_samples):
        critical.append(ours_start_ms(bench, listener, queue="critical"))
        time.sleep(GAP_SECONDS)
    return {"post": latencies[0::2], "get": latencies[1::2], "critical": critical}


def run(bench: Bench, results: Results) -> None:
    import requests

    from tasks.models import Job, Order, Report

    seed(bench)
    web, base_url = start_web(bench.log_dir)
    listener = JobEvents()
    try:
        with running_together(
            Workers(OURS, DEFAULT_TOPOLOGY, queues=["critical"], log_dir=bench.log_dir),
            Workers(OURS, BULK_TOPOLOGY, queues=["bulk"], log_dir=bench.log_dir),
        ):
            token = bench.api_token()
            headers = {"Authorization": f"Bearer {token}"}
            created = requests.post(f"{base_url}/api/jobs", json={"task": "ops.noop"}, headers=headers, timeout=30)
            job_url = f"{base_url}/api/jobs/{created.json()['id']}"
            post_open_loop(base_url, token, rate=bench.sizes.api_rate, seconds=1)  # warm-up
            for _ in range(WARM_UP):
                ours_start_ms(bench, listener, queue="critical")
            idle = measure(bench, base_url, job_url, listener)
            with ReportFeeder(bench.owner).running() as feeder:
                loaded = measure(bench, base_url, job_url, listener)
            reports = Job.objects.filter(pk__in=feeder.requested)
            built = reports.filter(state=Job.State.SUCCEEDED).count()
            if reports.filter(state__in=[Job.State.FAILED, Job.State.DEAD]).exists():
                raise SystemExit("a sales report failed during the loaded phase")
    finally:
        listener.close()
        web.stop()
    Report.objects.filter(owner=bench.owner).delete()
    Order.objects.filter(customer=bench.owner).delete()
    bench.reset()

    under = f"while sales reports of {bench.sizes.isolation_orders:,} orders run on the bulk queue, vs idle"
    rate = f"{bench.sizes.api_rate:g} requests/s in all"
    for key, label in (
        ("post", f"POST /api/jobs, taking turns with GET /api/jobs/<id> at {rate}, p99, {under}"),
        ("get", f"GET /api/jobs/<id>, taking turns with POST /api/jobs at {rate}, p99, {under}"),
        ("critical", f"Critical job: enqueue to start, p99, {under}"),
    ):
        figure = results.figure(f"isolation.{key}_p99", label, "ms", goal=GOAL, baseline="idle")
        figure.record(
            percentile(loaded[key], 99),
            percentile(idle[key], 99),
            loaded_p50=percentile(loaded[key], 50),
            idle_p50=percentile(idle[key], 50),
            reports_built=built,
        )
        figure.add_samples("idle", idle[key])
        figure.add_samples("reports running", loaded[key])
        busy, calm = percentile(loaded[key], 99), percentile(idle[key], 99)
        print(f"    {key} p99: {busy:.1f} ms with reports running, {calm:.1f} ms idle")
