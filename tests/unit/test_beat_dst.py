"""Beat's schedule logic on a controlled clock: DST days, missed runs, no bursts (no processes).

The scheduler's own code decides: an entry's ``is_due()`` (django-celery-beat and Celery, on the
scheduler's clock) and ``run_plan`` (what a run records), stepped minute by minute.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from project.celery import app
from tasks.models import MissedRunPolicy
from tasks.platform import beat
from tasks.platform.services.beat import run_plan, schedule_run_key

BERLIN = ZoneInfo("Europe/Berlin")
GRACE = timedelta(seconds=30)


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    controlled = Clock(datetime(2000, 1, 1, tzinfo=UTC))
    monkeypatch.setattr(beat, "clock", controlled)
    return controlled


def entry_for(last_run_at: datetime, **timing) -> beat.LedgerEntry:
    """A schedule row as beat reads it (unsaved: nothing here needs the database)."""
    model = PeriodicTask(name="nightly", task="ops.ping", kwargs="{}", last_run_at=last_run_at, **timing)
    return beat.LedgerEntry(model, app=app)


def run(
    entry: beat.LedgerEntry,
    clock: Clock,
    until: datetime,
    *,
    step: timedelta = timedelta(minutes=1),
    policy: str = MissedRunPolicy.RUN_ONCE,
    advance_like_celery: bool = False,
) -> Iterator[tuple[datetime, datetime]]:
    """Step the clock; at each step where the entry is due, dispatch as LeaderScheduler does.
    Yields (due time, fired at) for each run fired."""
    while clock.now < until:
        if entry.is_due().is_due:
            plan = run_plan(
                schedule=entry.schedule, last_run_at=entry.last_run_at, now=clock.now, policy=policy, grace=GRACE
            )
            assert plan.due_at is not None and plan.due_at <= clock.now
            if plan.fire:
                yield plan.due_at, clock.now
            # django-celery-beat's own scheduler records "now"; ours records the due time.
            entry.last_run_at = entry.model.last_run_at = clock.now if advance_like_celery else plan.last_run_at
        clock.now += step


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)


# --- DST: a daily 02:30 in Europe/Berlin ------------------------------------------------------


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(seconds=37)], ids=["on the minute", "between minutes"])
@pytest.mark.parametrize("advance_like_celery", [False, True], ids=["ledger dispatch", "celery's advance"])
def test_daily_0230_fires_once_on_the_spring_forward_day(clock, offset, advance_like_celery):
    # 2027-03-28: clocks jump from 02:00 CET to 03:00 CEST; 02:30 does not exist that day.
    crontab = CrontabSchedule(minute="30", hour="2", timezone="Europe/Berlin")
    clock.now = berlin(2027, 3, 27, 12, 0).astimezone(UTC) + offset
    entry = entry_for(clock.now, crontab=crontab)

    runs = list(run(entry, clock, berlin(2027, 3, 29, 12, 0), advance_like_celery=advance_like_celery))

    due_local = [due.astimezone(BERLIN) for due, _ in runs]
    assert [d.date().isoformat() for d in due_local] == ["2027-03-28", "2027-03-29"]
    # The skipped 02:30 fires once, as the clock passes it (03:30 CEST, one hour of real time after
    # 01:30 CET), then the schedule is back to 02:30 CEST.
    assert due_local[0] == berlin(2027, 3, 28, 3, 30)
    assert due_local[1] == berlin(2027, 3, 29, 2, 30)
    for due, fired in runs:
        assert timedelta(0) <= fired - due < timedelta(minutes=1)


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(seconds=37)], ids=["on the minute", "between minutes"])
@pytest.mark.parametrize("advance_like_celery", [False, True], ids=["ledger dispatch", "celery's advance"])
def test_daily_0230_fires_once_on_the_fall_back_day(clock, offset, advance_like_celery):
    # 2027-10-31: clocks go back from 03:00 CEST to 02:00 CET; 02:30 happens twice.
    crontab = CrontabSchedule(minute="30", hour="2", timezone="Europe/Berlin")
    clock.now = berlin(2027, 10, 30, 12, 0).astimezone(UTC) + offset
    entry = entry_for(clock.now, crontab=crontab)

    runs = list(run(entry, clock, berlin(2027, 11, 1, 12, 0), advance_like_celery=advance_like_celery))

    assert [due for due, _ in runs] == [
        berlin(2027, 10, 31, 2, 30).astimezone(UTC),  # the first 02:30 (CEST), 00:30 UTC
        berlin(2027, 11, 1, 2, 30).astimezone(UTC),  # the next day, 02:30 CET
    ]
    # Not again at the second 02:30 (CET, 01:30 UTC).
    assert berlin(2027, 10, 31, 2, 30, fold=1).astimezone(UTC) == datetime(2027, 10, 31, 1, 30, tzinfo=UTC)
    for due, fired in runs:
        assert timedelta(0) <= fired - due < timedelta(minutes=1)
    # Distinct due times: distinct ledger keys, so no run is dropped as a duplicate either.
    assert len({schedule_run_key(name="nightly", due_at=due) for due, _ in runs}) == 2


def test_hourly_interval_keeps_real_hours_across_both_dst_changes(clock):
    every_hour = IntervalSchedule(every=1, period=IntervalSchedule.HOURS)
    for day in ((2027, 3, 28), (2027, 10, 31)):
        clock.now = berlin(*day, 0, 0).astimezone(UTC) - timedelta(hours=1)
        entry = entry_for(clock.now, interval=every_hour)
        runs = list(run(entry, clock, berlin(*day, 0, 0).astimezone(UTC) + timedelta(hours=6)))
        dues = [due for due, _ in runs]
        assert len(dues) == 6  # six hours of real time
        assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(dues))


# --- missed runs: one run (or none), never a burst ---------------------------------------------


@pytest.mark.parametrize(
    ("policy", "fired"), [(MissedRunPolicy.RUN_ONCE, 1), (MissedRunPolicy.SKIP, 0)], ids=["run once", "skip"]
)
def test_an_interval_missed_many_times_fires_at_most_once_then_keeps_its_cadence(clock, policy, fired):
    every_10_minutes = IntervalSchedule(every=10, period=IntervalSchedule.MINUTES)
    last = datetime(2027, 5, 1, 8, 0, tzinfo=UTC)
    entry = entry_for(last, interval=every_10_minutes)
    clock.now = datetime(2027, 5, 1, 11, 3, 20, tzinfo=UTC)  # beat was down: 18 due times passed

    catch_up = list(run(entry, clock, clock.now + timedelta(minutes=6), step=timedelta(seconds=5), policy=policy))

    assert len(catch_up) == fired
    if fired:
        assert catch_up[0][0] == last + timedelta(minutes=10)  # keyed by the first missed due time
    # The next run is the next regular one (11:10), and it fires whatever the policy.
    assert entry.last_run_at == datetime(2027, 5, 1, 11, 0, tzinfo=UTC)
    later = list(run(entry, clock, datetime(2027, 5, 1, 11, 31, tzinfo=UTC), step=timedelta(seconds=5), policy=policy))
    assert [due.strftime("%H:%M") for due, _ in later] == ["11:10", "11:20", "11:30"]


def test_a_crontab_missed_across_several_due_times_fires_once_with_run_once(clock):
    every_15_minutes = CrontabSchedule(minute="*/15", hour="*", timezone="UTC")
    entry = entry_for(datetime(2027, 5, 1, 8, 0, tzinfo=UTC), interval=None, crontab=every_15_minutes)
    clock.now = datetime(2027, 5, 1, 9, 50, tzinfo=UTC)

    runs = list(run(entry, clock, datetime(2027, 5, 1, 10, 16, tzinfo=UTC), step=timedelta(seconds=10)))

    assert [(due.strftime("%H:%M"), fired.strftime("%H:%M")) for due, fired in runs] == [
        ("08:15", "09:50"),  # the catch-up run, once
        ("10:00", "10:00"),
        ("10:15", "10:15"),
    ]


def test_a_run_late_by_less_than_the_grace_is_not_missed():
    every_minute = IntervalSchedule(every=1, period=IntervalSchedule.MINUTES).schedule
    last = datetime(2027, 5, 1, 8, 0, tzinfo=UTC)
    on_time = run_plan(
        schedule=every_minute, last_run_at=last, now=last + timedelta(seconds=80), policy="skip", grace=GRACE
    )
    late = run_plan(
        schedule=every_minute, last_run_at=last, now=last + timedelta(seconds=100), policy="skip", grace=GRACE
    )
    never_ran = run_plan(
        schedule=every_minute,
        last_run_at=last,
        now=last + timedelta(hours=5),
        policy="skip",
        grace=GRACE,
        first_run=True,
    )

    assert (on_time.fire, on_time.missed) == (True, False)
    assert (late.fire, late.missed) == (False, True)
    assert (never_ran.fire, never_ran.missed) == (True, False)
