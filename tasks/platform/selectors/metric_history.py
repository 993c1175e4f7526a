"""Reads of the metric history (tasks.platform.models.metrics) for the charts and their JSON.

A range is read from minute rows (1 h, 24 h) or hour rows (72 h, 30 d) and summed into steps of
a fixed width; every step of the range is present, zero when nothing happened, so a chart's x axis
is continuous. Percentiles are computed from the summed histograms (tasks.platform.histogram).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.utils import timezone

from tasks.platform import histogram
from tasks.platform.metric_counts import COUNTS, Tally
from tasks.platform.models import JobMetric, MetricPeriod


@dataclass(frozen=True)
class Range:
    span: timedelta
    period: str
    step: timedelta


RANGES = {
    "1h": Range(timedelta(hours=1), MetricPeriod.MINUTE, timedelta(minutes=1)),
    "24h": Range(timedelta(hours=24), MetricPeriod.MINUTE, timedelta(minutes=15)),
    "72h": Range(timedelta(hours=72), MetricPeriod.HOUR, timedelta(hours=1)),
    "30d": Range(timedelta(days=30), MetricPeriod.HOUR, timedelta(hours=6)),
}


def _floor(moment: datetime, step: timedelta) -> datetime:
    seconds = int(step.total_seconds())
    return datetime.fromtimestamp(int(moment.timestamp()) // seconds * seconds, tz=UTC)


def tally_summary(tally: Tally) -> dict[str, Any]:
    """A tally as JSON: its counts, and p50/p95/p99 of the wait and the run time in seconds."""
    return {
        **{name: getattr(tally, name) for name in COUNTS},
        "wait_seconds": histogram.percentiles(tally.wait),
        "run_seconds": histogram.percentiles(tally.run),
    }


def metric_history(
    *, range_name: str, queue: str | None = None, task: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """The history over ``range_name`` (a key of RANGES), of one queue and/or task or of all:
    ``points`` (one per step, oldest first), ``total`` over the range, and the queues and tasks
    that have rows in it (for a chart's filters)."""
    chosen = RANGES[range_name]
    now = now or timezone.now()
    last = _floor(now, chosen.step)
    first = last - chosen.span + chosen.step
    rows = JobMetric.objects.filter(period=chosen.period, start__gte=first, start__lt=last + chosen.step)
    pairs = set(rows.values_list("queue", "task_name").distinct())
    if queue is not None:
        rows = rows.filter(queue=queue)
    if task is not None:
        rows = rows.filter(task_name=task)
    steps: dict[datetime, Tally] = defaultdict(Tally)
    total = Tally()
    for row in rows:
        tally = Tally.of(row)
        steps[_floor(row.start, chosen.step)].add(tally)
        total.add(tally)
    count = int(chosen.span / chosen.step)
    points = []
    for index in range(count):
        start = first + index * chosen.step
        points.append({"start": start, **tally_summary(steps.get(start, Tally()))})
    return {
        "range": range_name,
        "step_seconds": int(chosen.step.total_seconds()),
        "start": first,
        "end": last + chosen.step,
        "queue": queue,
        "task": task,
        "points": points,
        "total": tally_summary(total),
        "queues": sorted({queue for queue, _ in pairs}),
        "tasks": sorted({task for _, task in pairs}),
    }


def metric_breakdown(*, range_name: str, now: datetime | None = None) -> dict[str, list[dict[str, Any]]]:
    """Totals over ``range_name`` per queue and per task (each with ``name``), busiest first."""
    chosen = RANGES[range_name]
    now = now or timezone.now()
    last = _floor(now, chosen.step)
    rows = JobMetric.objects.filter(
        period=chosen.period, start__gte=last - chosen.span + chosen.step, start__lt=last + chosen.step
    )
    queues: dict[str, Tally] = defaultdict(Tally)
    tasks: dict[str, Tally] = defaultdict(Tally)
    for row in rows:
        tally = Tally.of(row)
        queues[row.queue].add(tally)
        tasks[row.task_name].add(tally)

    def listed(tallies: dict[str, Tally]) -> list[dict[str, Any]]:
        ordered = sorted(tallies.items(), key=lambda item: (-item[1].started - item[1].enqueued, item[0]))
        return [{"name": name, **tally_summary(tally)} for name, tally in ordered]

    return {"queues": listed(queues), "tasks": listed(tasks)}
