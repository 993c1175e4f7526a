"""Ledger and queue gauges, and the metric history's counters and histograms, on Flower's
Prometheus `/metrics`.

A collector registered in Flower's process serves the latest snapshot; the `/metrics` handler
refreshes it (in Flower's thread pool, at most every few seconds) before Flower renders the page,
so a scrape sees current figures and the event loop never waits for the database or Redis.
The counters and histograms are the running totals every process adds to in Redis
(tasks.platform.metric_counts): they only grow, across restarts of any process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import redis
from django.db import DatabaseError, close_old_connections
from django.db.models import Count, Q
from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from tornado.ioloop import IOLoop

from tasks.platform import histogram, metric_counts
from tasks.platform.metric_counts import Tally
from tasks.platform.models import Job
from tasks.platform.models.jobs import JobState
from tasks.platform.queues import QueueName
from tasks.platform.selectors.queues import BrokerUnavailable, queue_waiting_counts

logger = logging.getLogger(__name__)

#: a scrape within this many seconds of the last refresh reuses its figures
REFRESH_SECONDS = 5.0


@dataclass
class Snapshot:
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)  # (queue, state) -> count
    dead_letters: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    history: dict[tuple[str, str], Tally] = field(default_factory=dict)  # (queue, task) -> totals
    ledger_up: bool = False
    broker_up: bool = False
    history_up: bool = False


def read_snapshot() -> Snapshot:
    """Jobs per queue and state (two aggregate queries) and messages waiting per queue (one pipeline)."""
    snapshot = Snapshot()
    close_old_connections()
    try:
        rows = Job.objects.order_by().values("queue", "state").annotate(count=Count("pk"))
        snapshot.jobs = {(row["queue"], row["state"]): row["count"] for row in rows}
        dead = Q(state=JobState.DEAD, discarded_at__isnull=True)
        rows = Job.objects.filter(dead).order_by().values("queue").annotate(count=Count("pk"))
        snapshot.dead_letters = {row["queue"]: row["count"] for row in rows}
        snapshot.ledger_up = True
    except DatabaseError as exc:
        logger.warning("metrics: the ledger is unavailable (%s: %s)", type(exc).__name__, exc)
    finally:
        close_old_connections()
    try:
        snapshot.waiting = queue_waiting_counts()
        snapshot.broker_up = True
    except (BrokerUnavailable, redis.RedisError) as exc:
        logger.warning("metrics: queue depths unavailable (%s)", exc)
    try:
        snapshot.history = metric_counts.totals()
        snapshot.history_up = True
    except redis.RedisError as exc:
        logger.warning("metrics: job counters unavailable (%s)", exc)
    return snapshot


class LedgerMetrics:
    """The snapshot, its refresh, and the prometheus_client collector that serves it."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.read_at = 0.0
        self._lock = asyncio.Lock()

    @classmethod
    def register(cls) -> LedgerMetrics:
        metrics = cls()
        REGISTRY.register(metrics)
        return metrics

    async def refresh(self) -> None:
        async with self._lock:  # concurrent scrapes share one read
            if time.monotonic() - self.read_at < REFRESH_SECONDS:
                return
            self.snapshot = await IOLoop.current().run_in_executor(None, read_snapshot)
            self.read_at = time.monotonic()

    def describe(self):
        return list(self._families(Snapshot()))

    def collect(self):
        return self._families(self.snapshot)

    def _families(self, snapshot: Snapshot):
        jobs = GaugeMetricFamily(
            "platform_ledger_jobs", "Jobs in the job ledger, per queue and state.", labels=["queue", "state"]
        )
        dead = GaugeMetricFamily(
            "platform_dead_letters", "Dead jobs nobody has discarded yet, per queue.", labels=["queue"]
        )
        depth = GaugeMetricFamily(
            "platform_queue_depth", "Messages waiting in the broker (Redis lists), per queue.", labels=["queue"]
        )
        up = GaugeMetricFamily(
            "platform_metrics_source_up",
            "1 when the last read of the source (ledger or broker) succeeded.",
            labels=["source"],
        )
        for queue in QueueName.values:
            if snapshot.ledger_up:
                for state in JobState.values:
                    jobs.add_metric([queue, state], snapshot.jobs.get((queue, state), 0))
                dead.add_metric([queue], snapshot.dead_letters.get(queue, 0))
            if snapshot.broker_up:
                depth.add_metric([queue], snapshot.waiting.get(queue, 0))
        up.add_metric(["ledger"], int(snapshot.ledger_up))
        up.add_metric(["broker"], int(snapshot.broker_up))
        up.add_metric(["history"], int(snapshot.history_up))
        return [jobs, dead, depth, up, *_history_families(snapshot.history)]


def _history_families(totals: dict[tuple[str, str], Tally]) -> list:
    events = CounterMetricFamily(
        "platform_job_events",
        "Jobs enqueued and runs started, succeeded, failed (failed or retrying) and dead, per queue and task.",
        labels=["queue", "task", "event"],
    )
    wait = HistogramMetricFamily(
        "platform_job_wait_seconds", "Enqueue to start of a run, per queue and task.", labels=["queue", "task"]
    )
    run = HistogramMetricFamily(
        "platform_job_run_seconds", "Start to end of a run, per queue and task.", labels=["queue", "task"]
    )
    for (queue, task), tally in sorted(totals.items()):
        for event in metric_counts.COUNTS:
            events.add_metric([queue, task, event], getattr(tally, event))
        for family, counts, micros in ((wait, tally.wait, tally.wait_us), (run, tally.run, tally.run_us)):
            buckets = [(floatToGoString(bound), total) for bound, total in histogram.cumulative(counts)]
            family.add_metric([queue, task], buckets, sum_value=micros / 1_000_000)
    return [events, wait, run]
