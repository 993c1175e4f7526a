"""The metric history's writer: the relay copies Redis's per-minute counts into the database
(minute rows), sums them into hour rows, and prunes what is past its keep.

Copying is idempotent: a minute's hash in Redis is that minute's whole count (every process adds
to it), so its row is overwritten with it, not added to. The open minute is copied too (its row
grows at each pass), and a closed one for GRACE_MINUTES more (a count that arrived late from a
process whose clock is behind); then it leaves Redis's list. Two relays copying at once write the
same figures. An hour's row is the sum of its minute rows, recomputed whenever one of them changed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import redis
from django.db import DatabaseError, transaction
from django.utils import timezone

from tasks.platform import metric_counts
from tasks.platform.metric_counts import Tally
from tasks.platform.models import JobMetric, MetricPeriod

logger = logging.getLogger(__name__)

#: minute rows are kept this long (the issue's "at least 72 hours")
MINUTES_KEPT = timedelta(hours=72)
#: hour rows are kept this long
HOURS_KEPT = timedelta(days=30)
#: a closed minute is copied again at each pass for this many minutes
GRACE_MINUTES = 2
#: at most this many minutes are copied in one pass (a relay back after a long stop catches up)
MINUTES_PER_PASS = 120
#: how often the relay copies the counts (so the history is at most this far behind)
FLUSH_EVERY_SECONDS = 5.0
#: the fields a row takes from a tally
_FIELDS = ("enqueued", "started", "succeeded", "failed", "dead", "wait", "run", "wait_us", "run_us")


def row_of(period: str, start: datetime, queue: str, task_name: str, tally: Tally) -> JobMetric:
    return JobMetric(
        period=period,
        start=start,
        queue=queue,
        task_name=task_name,
        **{name: getattr(tally, name) for name in _FIELDS},
    )


def _write(rows: list[JobMetric]) -> None:
    if rows:
        JobMetric.objects.bulk_create(
            # in one order, so that two relays writing the same rows wait for each other, never deadlock
            sorted(rows, key=lambda row: (row.period, row.start, row.queue, row.task_name)),
            update_conflicts=True,
            unique_fields=["period", "start", "queue", "task_name"],
            update_fields=list(_FIELDS),
        )


def metrics_flush(*, now: datetime | None = None) -> int:
    """Copy the listed minutes up to the open one into minute rows, recompute their hours, prune;
    how many minute rows were written."""
    now = now or timezone.now()
    current = int(now.timestamp() // 60)
    minutes = metric_counts.minutes_listed(until=current)[:MINUTES_PER_PASS]
    if not minutes:
        metrics_prune(now=now)
        return 0
    tallies = metric_counts.minute_tallies(minutes)
    rows = [
        row_of(MetricPeriod.MINUTE, datetime.fromtimestamp(minute * 60, tz=UTC), queue, task, tally)
        for minute, pairs in tallies.items()
        for (queue, task), tally in pairs.items()
    ]
    with transaction.atomic():
        _write(rows)
        hours_rolled_up({(_hour_of(row.start), row.queue, row.task_name) for row in rows})
    metric_counts.minutes_done([minute for minute in minutes if minute < current - GRACE_MINUTES])
    metrics_prune(now=now)
    return len(rows)


def _hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def hours_rolled_up(hours: set[tuple[datetime, str, str]]) -> None:
    """Recompute the hour rows of these (hour, queue, task) from their minute rows."""
    if not hours:
        return
    first, last = min(hour for hour, _, _ in hours), max(hour for hour, _, _ in hours)
    pairs = {(queue, task) for _, queue, task in hours}
    sums: dict[tuple[datetime, str, str], Tally] = defaultdict(Tally)
    minute_rows = JobMetric.objects.filter(
        period=MetricPeriod.MINUTE,
        start__gte=first,
        start__lt=last + timedelta(hours=1),
        queue__in={queue for queue, _ in pairs},
        task_name__in={task for _, task in pairs},
    )
    for row in minute_rows:
        key = (_hour_of(row.start), row.queue, row.task_name)
        if key in hours:
            sums[key].add(Tally.of(row))
    _write([row_of(MetricPeriod.HOUR, hour, queue, task, tally) for (hour, queue, task), tally in sums.items()])


def metrics_prune(*, now: datetime) -> int:
    """Minute rows past MINUTES_KEPT and hour rows past HOURS_KEPT go; how many."""
    gone, _ = JobMetric.objects.filter(period=MetricPeriod.MINUTE, start__lt=now - MINUTES_KEPT).delete()
    gone_hours, _ = JobMetric.objects.filter(period=MetricPeriod.HOUR, start__lt=now - HOURS_KEPT).delete()
    return gone + gone_hours


def metrics_flush_pass() -> None:
    """The relay's pass: ``metrics_flush``, an outage of Redis or of the database logged (the
    counts wait in Redis for the next pass)."""
    try:
        metrics_flush()
    except (redis.RedisError, DatabaseError) as exc:
        logger.warning("metric history not copied this pass: %s: %s", type(exc).__name__, exc)
