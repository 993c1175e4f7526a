"""Reading schedules for admins: when a schedule runs next, and what its past runs became in the ledger.

Next run times come from the same schedule objects beat uses (django-celery-beat's models and
Celery's crontab arithmetic), so what admin shows is what beat fires, DST days included.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from zoneinfo import ZoneInfo

import redis
from django.conf import settings
from django.db.models import Max, Q
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.platform.models import Job
from tasks.platform.models.jobs import SCHEDULE_ORIGIN_PREFIX
from tasks.platform.queues import LEASE_KEY, redis_client
from tasks.platform.selectors.flow import Blocked

#: how many upcoming run times a schedule's page lists
NEXT_RUNS = 5
#: how many past runs a schedule's page lists
LAST_RUNS = 10
#: a safety bound on the due times walked (a crontab that can never match walks nowhere)
MAX_STEPS = 100
#: a due time passed by more than this is shown as late (beat ticks every few seconds; a failover
#: takes up to twice the leader lease)
LATE_AFTER = timedelta(seconds=30)


def schedule_origins(name: str) -> tuple[str, str]:
    """The ledger origins of a schedule's jobs: fired by beat, and run by hand from admin."""
    return f"{SCHEDULE_ORIGIN_PREFIX}{name}", f"{SCHEDULE_ORIGIN_PREFIX}{name}:run-now"


@dataclass(frozen=True)
class NextRuns:
    """A schedule's upcoming run times, in its own timezone."""

    times: list[datetime] = field(default_factory=list)
    timezone: str = "UTC"
    #: the due time beat has not handled yet, when it is late (beat was down): the missed-run policy applies
    overdue_since: datetime | None = None
    #: why there are no (or few) times: disabled, expired, one-off already run, ...
    note: str = ""


def schedule_timezone(schedule: PeriodicTask) -> tzinfo:
    """A crontab runs on the wall clock of its own timezone; other schedules are shown in TIME_ZONE."""
    if schedule.crontab_id is not None:
        return schedule.crontab.timezone
    return ZoneInfo(settings.TIME_ZONE)


def schedule_next_runs(*, schedule: PeriodicTask, now: datetime | None = None, count: int = NEXT_RUNS) -> NextRuns:
    """The next ``count`` times beat will fire ``schedule`` after ``now`` (default: the current time).

    ``now`` is injectable so a DST change can be checked without freezing the clock.
    """
    now = (now or timezone.now()).astimezone(UTC)
    tz = schedule_timezone(schedule)
    zone = str(tz)
    if (note := _not_run(schedule, now)) is not None:
        return NextRuns(timezone=zone, note=note)
    if schedule.solar_id is not None:
        return NextRuns(timezone=zone, note="solar: the times follow the sun and are not computed here")

    start, base = now, None
    if schedule.start_time is not None and schedule.start_time > now:
        # Nothing before the start time: an interval runs first at it, a crontab at its first time from it.
        start = schedule.start_time.astimezone(UTC) - timedelta(microseconds=1)
        if schedule.interval_id is not None:
            base = schedule.start_time - schedule.interval.schedule.run_every
    times = [moment.astimezone(tz) for moment in _due_times(schedule, start=start, count=count, base=base)]
    if schedule.one_off:
        times = times[:1]
    if schedule.expires is not None:
        times = [moment for moment in times if moment < schedule.expires]

    overdue_since = None
    if schedule.last_run_at is not None and schedule.start_time is None:
        first_due = _due_times(schedule, start=schedule.last_run_at.astimezone(UTC), count=1, base=schedule.last_run_at)
        if first_due and first_due[0] < now - LATE_AFTER:
            overdue_since = first_due[0].astimezone(tz)
    return NextRuns(times=times, timezone=zone, overdue_since=overdue_since)


def _not_run(schedule: PeriodicTask, now: datetime) -> str | None:
    """Why beat never fires the schedule again (None: it fires it when due)."""
    if not schedule.enabled:
        return "disabled: beat does not run it"
    if schedule.expires is not None and schedule.expires <= now:
        return "expired: beat no longer runs it"
    if schedule.one_off and schedule.total_run_count > 0:
        return "one-off, already run"
    return None


def schedule_blocked(schedule: PeriodicTask, *, now: datetime | None = None) -> Blocked | None:
    """Why beat does not fire the schedule's due runs: no beat leads. None when a beat holds the
    leader lease, or when beat would not fire the schedule anyway (disabled, expired, one-off run:
    its next runs' note says so)."""
    return schedules_blocked([schedule], now=now).get(schedule.pk)


def schedules_blocked(schedules: Iterable[PeriodicTask], *, now: datetime | None = None) -> dict[int, Blocked]:
    """``schedule_blocked`` for a page of schedules, by id: one look at the lease, whatever the count."""
    now = (now or timezone.now()).astimezone(UTC)
    fired = [schedule.pk for schedule in schedules if _not_run(schedule, now) is None]
    if not fired:
        return {}
    reason = beat_standby()
    return {} if reason is None else dict.fromkeys(fired, reason)


def beat_standby() -> Blocked | None:
    """The reason no schedule fires now, when no beat holds the leader lease (tasks.platform.beat:
    only the holder fires runs; without Redis none holds it). None when a beat leads."""
    try:
        holder = _redis(settings.REDIS_URL).get(LEASE_KEY)
    except redis.RedisError as exc:
        return Blocked(
            "beat_standby",
            f"Redis cannot be asked which beat leads ({exc or type(exc).__name__}); without Redis no beat "
            "leads, and due runs are not fired",
        )
    if holder is None:
        return Blocked(
            "beat_standby",
            "no beat holds the leader lease (every beat stands by, or none runs): due runs are not fired",
        )
    return None


@cache
def _redis(url: str) -> redis.Redis:
    # Short timeouts and no retries: a Redis that does not answer must not hold a page up.
    return redis_client(url, socket_connect_timeout=1, socket_timeout=1, retry=Retry(NoBackoff(), 0))


def _due_times(schedule: PeriodicTask, *, start: datetime, count: int, base: datetime | None = None) -> list[datetime]:
    """Up to ``count`` due times strictly after ``start`` (aware datetimes, UTC or the crontab's zone)."""
    if schedule.crontab_id is not None:
        crontab = schedule.crontab.schedule
        tz = schedule.crontab.timezone
        moments, moment = [], start.astimezone(tz)
        for _ in range(min(count, MAX_STEPS)):
            # Celery's own step from one due time to the next, on the crontab's wall clock: a time the
            # spring-forward skips comes out as the instant the clock passes it, as beat fires it.
            origin, delta, _ = crontab.remaining_delta(moment)
            following = (origin + delta).astimezone(UTC)
            if following <= moment.astimezone(UTC):
                break
            moments.append(following)
            moment = following.astimezone(tz)
        return moments
    if schedule.interval_id is not None:
        every = schedule.interval.schedule.run_every
        if every <= timedelta(0):
            return []
        # Intervals count real time from the last run (or the last change, as beat does for a new schedule).
        anchor = (base or schedule.last_run_at or schedule.date_changed or start).astimezone(UTC)
        first = anchor + every
        if first <= start:
            first = anchor + every * ((start - anchor) // every + 1)
        return [first + every * step for step in range(count)]
    if schedule.clocked_id is not None:
        clocked = schedule.clocked.clocked_time.astimezone(UTC)
        return [clocked] if clocked > start else []
    return []


def schedule_last_runs(*, schedule: PeriodicTask, limit: int = LAST_RUNS) -> list[Job]:
    """The schedule's latest jobs in the ledger (fired by beat or run by hand), newest first."""
    runs = _schedule_jobs().filter(origin__in=schedule_origins(schedule.name))
    return list(runs.order_by("-created_at", "-id")[:limit])


def schedules_latest_run(*, names: Iterable[str]) -> dict[str, Job]:
    """Each schedule's latest job, for a page of the schedule list: two queries, whatever the count."""
    origin_to_name = {origin: name for name in names for origin in schedule_origins(name)}
    if not origin_to_name:
        return {}
    latest_at = (
        _schedule_jobs()
        .filter(origin__in=origin_to_name)
        .values("origin")
        .annotate(at=Max("created_at"))
        .values_list("origin", "at")
    )
    pairs = Q()
    for origin, at in latest_at:
        pairs |= Q(origin=origin, created_at=at)
    if not pairs:
        return {}
    latest: dict[str, Job] = {}
    for job in _schedule_jobs().filter(pairs).order_by("created_at", "id"):
        name = origin_to_name[job.origin]
        if name not in latest or job.created_at >= latest[name].created_at:
            latest[name] = job
    return latest


def _schedule_jobs():
    """Jobs of schedules, as the index job_schedule_runs holds them: PostgreSQL uses a partial
    index only for a query that states its condition."""
    return Job.objects.filter(origin__startswith=SCHEDULE_ORIGIN_PREFIX)
