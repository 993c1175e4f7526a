"""Beat with a leader: real beat processes and real Redis, checked in the job ledger.

Two beats fire each due time once; a standby takes over from a SIGKILLed leader without firing a
due time twice or losing one; after downtime a schedule runs once (or not at all with "skip");
re-enabling a schedule does not fire it at once.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
import redis
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks.models import Job, MissedRunPolicy, ScheduleOptions
from tasks.platform.beat import LEASE_KEY
from tests.fixtures import HOSTNAME
from tests.support.processes import BIN_DIR, ManagedProcess, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

LEASE_SECONDS = 3
PERIOD = timedelta(seconds=2)


@pytest.fixture
def start_beat(process_env: dict[str, str], broker: redis.Redis) -> Iterator[Callable[..., ManagedProcess]]:
    """Start a real `celery beat` (as the Procfile does) with a short lease; all stopped at teardown."""
    started: list[ManagedProcess] = []

    def start(name: str) -> ManagedProcess:
        argv = [str(BIN_DIR / "celery"), "-A", "project", "beat", "--loglevel", "INFO"]
        env = {**process_env, "BEAT_LEASE_SECONDS": str(LEASE_SECONDS)}
        process = ManagedProcess(argv, env, f"beat-{name}").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def leader_pid(broker: redis.Redis) -> int | None:
    holder = broker.get(LEASE_KEY)
    if not holder:
        return None
    host, pid, _ = holder.decode().rsplit(":", 2)
    assert host == HOSTNAME
    return int(pid)


def wait_for_leader(broker: redis.Redis, *candidates: ManagedProcess, timeout: float = 30) -> ManagedProcess:
    by_pid = {process.pid: process for process in candidates}
    return wait_until(lambda: by_pid.get(leader_pid(broker)), timeout=timeout, interval=0.05, what="a beat to lead")


def every(seconds: int) -> IntervalSchedule:
    interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
    return interval


def fired(name: str) -> list[Job]:
    return list(Job.objects.filter(origin=f"beat:{name}").order_by("created_at"))


def due_times(name: str) -> list[datetime]:
    """The due time of each run of a schedule, from its ledger key, in order."""
    prefix = f"beat:{name}:"
    keys = [job.idempotency_key for job in fired(name)]
    assert all(key.startswith(prefix) for key in keys), keys
    return sorted(datetime.fromisoformat(key[len(prefix) :]) for key in keys)


def gaps(times: list[datetime]) -> list[float]:
    return [(b - a).total_seconds() for a, b in itertools.pairwise(times)]


def fired_lines(process: ManagedProcess) -> list[str]:
    return [line for line in process.log().splitlines() if ": fired ops.ping as job " in line]


def test_two_beats_fire_each_due_time_once(start_beat, broker):
    PeriodicTask.objects.create(name="two beats", task="ops.ping", interval=every(2), kwargs=json.dumps({}))
    first, second = start_beat("a"), start_beat("b")
    leader = wait_for_leader(broker, first, second)
    standby = second if leader is first else first
    wait_until(lambda: fired("two beats"), timeout=20, what="the first run")

    time.sleep(20)

    jobs = fired("two beats")
    dues = due_times("two beats")
    assert 9 <= len(jobs) <= 12, len(jobs)
    assert len(set(dues)) == len(dues)  # one job per due time...
    assert set(gaps(dues)) == {PERIOD.total_seconds()}  # ...and every due time, 2 s apart
    assert {job.task_name for job in jobs} == {"ops.ping"}
    assert {job.queue for job in jobs} == {"default"}
    # Only the leader dispatched; the standby never tried (not even a duplicate refused by its key).
    assert leader_pid(broker) == leader.pid
    assert len(fired_lines(leader)) == len(jobs)
    assert fired_lines(standby) == []
    assert "already fired" not in leader.log() + standby.log()
    assert "stands by" in standby.log()


def test_a_standby_takes_over_from_a_killed_leader_and_no_run_is_doubled_or_lost(start_beat, broker):
    PeriodicTask.objects.create(name="failover", task="ops.ping", interval=every(2), kwargs=json.dumps({}))
    first, second = start_beat("a"), start_beat("b")
    leader = wait_for_leader(broker, first, second)
    standby = second if leader is first else first
    wait_until(lambda: len(fired("failover")) >= 3, timeout=30, what="the leader to fire")

    leader.kill()  # SIGKILL: no release, the lease has to expire
    killed_at = time.monotonic()
    before = due_times("failover")
    wait_for_leader(broker, standby, timeout=4 * LEASE_SECONDS)
    takeover = time.monotonic() - killed_at
    wait_until(lambda: len(fired("failover")) >= len(before) + 4, timeout=20, what="the new leader to fire")

    assert takeover <= 2 * LEASE_SECONDS, takeover
    assert "is now the leader" in standby.log()
    dues = due_times("failover")
    assert dues[: len(before)] == before
    steps = gaps(dues)
    # No due time twice (nothing closer than a period), and none lost: the only longer gap is the
    # takeover, whose missed due times collapse into one run (beyond it, at most one period).
    assert min(steps) >= PERIOD.total_seconds(), steps
    assert max(steps) <= takeover + PERIOD.total_seconds() + 1, (steps, takeover)
    assert len([step for step in steps if step > PERIOD.total_seconds()]) <= 1, steps


@pytest.mark.parametrize(
    ("policy", "runs"), [(None, 1), (MissedRunPolicy.RUN_ONCE, 1), (MissedRunPolicy.SKIP, 0)], ids=str
)
def test_after_downtime_across_due_times_a_schedule_runs_once_or_is_skipped(start_beat, broker, policy, runs):
    hourly = PeriodicTask.objects.create(name="hourly", task="ops.ping", interval=every(3600), kwargs="{}")
    if policy is not None:  # None: no options row, the default applies
        ScheduleOptions.objects.create(schedule=hourly, missed_run_policy=policy)
    # Beat runs, then goes down (SIGTERM: it hands the lease back)...
    before = start_beat("before")
    wait_for_leader(broker, before)
    before.stop()
    assert "released the leadership" in before.log()
    assert leader_pid(broker) is None
    # ...for two and a half hours: the due times at +1 h and +2 h passed while it was down.
    last_run = timezone.now().replace(microsecond=0) - timedelta(hours=2, minutes=30)
    PeriodicTask.objects.filter(pk=hourly.pk).update(last_run_at=last_run)

    after = start_beat("after")
    wait_for_leader(broker, after, timeout=15)
    wait_until(
        lambda: PeriodicTask.objects.get(pk=hourly.pk).last_run_at != last_run, timeout=15, what="beat to handle it"
    )
    time.sleep(3)  # nothing more follows

    assert len(fired("hourly")) == runs
    if runs:
        assert due_times("hourly") == [last_run + timedelta(hours=1)]
        assert PeriodicTask.objects.get(pk=hourly.pk).total_run_count == 1
    else:
        assert "skipped (missed-run policy: skip)" in after.log()
    # Either way the schedule is back on its regular hours: the next run is at +3 h, in 30 minutes.
    assert PeriodicTask.objects.get(pk=hourly.pk).last_run_at == last_run + timedelta(hours=2)


def test_re_enabling_a_disabled_schedule_does_not_fire_it_at_once(start_beat, broker):
    long_ago = timezone.now() - timedelta(hours=1)
    schedule = PeriodicTask.objects.create(
        name="re-enabled", task="ops.ping", interval=every(10), kwargs="{}", last_run_at=long_ago, enabled=False
    )
    beat = start_beat("a")
    wait_for_leader(broker, beat)
    time.sleep(2)

    schedule.refresh_from_db()
    schedule.enabled = True
    schedule.save()  # last_run_at stays None: django-celery-beat counts from this change
    enabled_at = PeriodicTask.objects.get(pk=schedule.pk).date_changed

    time.sleep(7)  # beat sees the change within 5 s; an hour overdue, it would fire at once
    assert fired("re-enabled") == []
    first = wait_until(lambda: fired("re-enabled"), timeout=10, what="the first regular run")[0]
    assert due_times("re-enabled")[0] == enabled_at + timedelta(seconds=10)
    assert first.created_at >= enabled_at + timedelta(seconds=10)
