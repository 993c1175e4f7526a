"""Why a schedule is not firing: no beat holds the leader lease (issue #23), against a real beat
process and real Redis, as admin shows it and as ``schedule_blocked`` answers it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import redis
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks.platform.queues import LEASE_KEY
from tasks.platform.selectors import schedules
from tasks.platform.selectors.schedules import schedule_blocked
from tests.fixtures import HOSTNAME
from tests.support.processes import BIN_DIR, ManagedProcess, free_port, wait_until

LEASE_SECONDS = 3
NO_LEADER = "no beat holds the leader lease"
CHANGELIST_URL = reverse("admin:django_celery_beat_periodictask_changelist")
LIST_MARK = "Not firing: no beat leads"


def change_url(schedule: PeriodicTask) -> str:
    return reverse("admin:django_celery_beat_periodictask_change", args=[schedule.pk])


def hourly(name: str, **fields) -> PeriodicTask:
    # Hourly: beat, once it leads, does not fire it during the test (its first run is an hour away).
    interval, _ = IntervalSchedule.objects.get_or_create(every=3600, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name=name, task="ops.ping", interval=interval, kwargs=json.dumps({}), **fields)


def reason_on_page(client, schedule: PeriodicTask) -> str | None:
    """The change page's "Not firing" paragraph, or None when it has none."""
    response = client.get(change_url(schedule))
    assert response.status_code == 200
    page = response.content.decode()
    marker = "<strong>Not firing:</strong>"
    if marker not in page:
        return None
    return page.split(marker, 1)[1].split("</p>", 1)[0].strip()


def list_rows(client) -> dict[str, str]:
    """The schedule list's rows (seeded schedules included), by schedule name."""
    response = client.get(CHANGELIST_URL)
    assert response.status_code == 200
    rows = response.content.decode().split("<tbody>", 1)[1].split("</tbody>", 1)[0].split("<tr")[1:]
    names = {schedule.name for schedule in PeriodicTask.objects.all()}
    return {name: row for row in rows for name in names if f">{name}</a>" in row}


@pytest.fixture
def start_beat(process_env: dict[str, str], broker: redis.Redis) -> Iterator[Callable[[], ManagedProcess]]:
    """A real `celery beat` (as the Procfile runs it) with a short lease; all stopped at teardown."""
    started: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        argv = [str(BIN_DIR / "celery"), "-A", "project", "beat", "--loglevel", "INFO"]
        env = {**process_env, "BEAT_LEASE_SECONDS": str(LEASE_SECONDS)}
        process = ManagedProcess(argv, env, "beat").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def wait_to_lead(broker: redis.Redis, beat: ManagedProcess) -> None:
    def leads() -> bool:
        holder = broker.get(LEASE_KEY)
        return bool(holder) and holder.decode().startswith(f"{HOSTNAME}:{beat.pid}:")

    wait_until(leads, timeout=30, interval=0.05, what="the beat to take the lease")


# --- against a real beat ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("static_files")
def test_a_schedule_is_not_firing_exactly_while_no_beat_holds_the_lease(admin_client, broker, start_beat):
    schedule = hourly("Hourly ping")
    hourly("Switched off", enabled=False)

    # (a) No beat runs and no lease: the enabled schedule is not firing, and says why.
    assert broker.get(LEASE_KEY) is None
    blocked = schedule_blocked(schedule)
    assert blocked is not None
    assert blocked.code == "beat_standby"
    assert NO_LEADER in blocked.message
    assert NO_LEADER in reason_on_page(admin_client, schedule)
    rows = list_rows(admin_client)
    assert LIST_MARK in rows["Hourly ping"]
    assert LIST_MARK not in rows["Switched off"]  # beat does not run a disabled schedule anyway

    # (b) A real beat takes the lease: nothing blocks the schedule, and the reason is gone.
    beat = start_beat()
    wait_to_lead(broker, beat)
    assert schedule_blocked(schedule) is None
    assert reason_on_page(admin_client, schedule) is None
    assert not [name for name, row in list_rows(admin_client).items() if LIST_MARK in row]

    # (c) Stopped (SIGTERM), it hands the lease back: the reason is back at once.
    beat.stop()
    assert "released the leadership" in beat.log()
    assert broker.get(LEASE_KEY) is None
    assert schedule_blocked(schedule).code == "beat_standby"
    assert NO_LEADER in reason_on_page(admin_client, schedule)

    # A beat killed outright (SIGKILL) does not hand it back: the reason returns once its lease expires.
    killed = start_beat()
    wait_to_lead(broker, killed)
    assert schedule_blocked(schedule) is None
    killed.kill()
    killed_at = time.monotonic()
    blocked = wait_until(lambda: schedule_blocked(schedule), timeout=3 * LEASE_SECONDS, what="the lease to expire")
    assert blocked.code == "beat_standby"
    assert time.monotonic() - killed_at <= LEASE_SECONDS + 1
    assert broker.get(LEASE_KEY) is None
    assert NO_LEADER in reason_on_page(admin_client, schedule)


# --- no process needed ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_lease_held_by_any_beat_is_a_leader_and_blocks_nothing(broker):
    schedule = hourly("Hourly ping")
    broker.set(LEASE_KEY, "another-host:4242:0123abcd", px=60_000)

    assert schedule_blocked(schedule) is None

    broker.delete(LEASE_KEY)
    assert schedule_blocked(schedule).code == "beat_standby"


@pytest.mark.django_db
def test_only_a_schedule_beat_would_run_is_reported(broker):
    now = timezone.now()
    assert broker.get(LEASE_KEY) is None
    runs = hourly("Runs")
    starts_later = hourly("Starts tomorrow", start_time=now + timedelta(days=1))
    quiet = [
        hourly("Disabled", enabled=False),
        hourly("Expired", expires=now - timedelta(minutes=1)),
        hourly("One-off, done", one_off=True, total_run_count=1),
    ]

    assert schedule_blocked(runs, now=now).code == "beat_standby"
    assert schedule_blocked(starts_later, now=now).code == "beat_standby"
    for schedule in quiet:
        assert schedule_blocked(schedule, now=now) is None, schedule.name
    # The expiry is judged at ``now``: before it, beat still runs the schedule.
    assert schedule_blocked(quiet[1], now=now - timedelta(minutes=2)).code == "beat_standby"


@pytest.mark.django_db
def test_a_redis_that_cannot_be_asked_is_its_own_reason_and_answers_quickly():
    schedule = hourly("Hourly ping")
    with override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"):
        started = time.monotonic()
        blocked = schedule_blocked(schedule)
        elapsed = time.monotonic() - started

    assert blocked is not None
    assert blocked.code == "beat_standby"
    assert blocked.message.startswith("Redis cannot be asked which beat leads")
    assert NO_LEADER not in blocked.message
    assert elapsed < 3, elapsed


@pytest.mark.django_db
@pytest.mark.usefixtures("static_files")
def test_the_schedule_list_looks_at_the_lease_once_per_page(admin_client, broker, monkeypatch):
    for number in range(3):
        hourly(f"Hourly ping {number}")
    looks = []
    standby = schedules.beat_standby
    monkeypatch.setattr(schedules, "beat_standby", lambda: looks.append(1) or standby())

    rows = list_rows(admin_client)

    assert len(looks) == 1
    assert len(rows) == PeriodicTask.objects.count() > 3  # the seeded schedules are on the page too
    for number in range(3):
        assert LIST_MARK in rows[f"Hourly ping {number}"]
