"""Schedules in Django admin: validated edits, next and last runs, run now, permissions, and an edit
reaching a running beat (real beat and worker processes, real Redis, checked in the job ledger)."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from tasks.models import Job, MissedRunPolicy, ScheduleOptions
from tasks.platform.queues import QueueName
from tasks.platform.registry import SCHEDULABLE_TASKS
from tasks.platform.selectors.schedules import schedule_next_runs
from tests.support.processes import BIN_DIR, ManagedProcess, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("static_files")]

BERLIN = ZoneInfo("Europe/Berlin")
ADD_URL = reverse("admin:django_celery_beat_periodictask_add")
CHANGELIST_URL = reverse("admin:django_celery_beat_periodictask_changelist")


def change_url(schedule: PeriodicTask) -> str:
    return reverse("admin:django_celery_beat_periodictask_change", args=[schedule.pk])


def every(seconds: int) -> IntervalSchedule:
    interval, _ = IntervalSchedule.objects.get_or_create(every=seconds, period=IntervalSchedule.SECONDS)
    return interval


def daily_0230_berlin() -> CrontabSchedule:
    crontab, _ = CrontabSchedule.objects.get_or_create(
        minute="30", hour="2", day_of_week="*", day_of_month="*", month_of_year="*", timezone="Europe/Berlin"
    )
    return crontab


def form_data(**fields) -> dict[str, str]:
    """The change form as a browser posts it (the admin splits datetimes into date and time)."""
    data = {
        "name": "Ping now and then",
        "task": "ops.ping",
        "enabled": "on",
        "description": "",
        "interval": "",
        "crontab": "",
        "solar": "",
        "clocked": "",
        "start_time_0": "",
        "start_time_1": "",
        "args": "[]",
        "kwargs": '{"hold_seconds": 1}',
        "queue": "",
        "priority": "",
        "expires_0": "",
        "expires_1": "",
        "expire_seconds": "",
        "missed_run_policy": MissedRunPolicy.RUN_ONCE,
        "_save": "Save",
    }
    data.update({key: str(value) for key, value in fields.items() if value is not None})
    for key in [key for key, value in fields.items() if value is None]:
        data.pop(key)  # an unticked checkbox is not posted at all
    return data


def schedule_data(schedule: PeriodicTask, **fields) -> dict[str, str]:
    """What the change form posts for ``schedule`` as it is, with ``fields`` changed."""
    options = ScheduleOptions.objects.filter(schedule=schedule).first()
    current = {
        "name": schedule.name,
        "task": schedule.task,
        "enabled": "on" if schedule.enabled else None,
        "interval": schedule.interval_id or "",
        "crontab": schedule.crontab_id or "",
        "kwargs": schedule.kwargs,
        "queue": schedule.queue or "",
        "priority": "" if schedule.priority is None else schedule.priority,
        "missed_run_policy": options.missed_run_policy if options else MissedRunPolicy.RUN_ONCE,
    }
    return form_data(**{**current, **fields})


def form_errors(response) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code  # the form again, not a redirect
    return {field: list(errors) for field, errors in response.context["adminform"].form.errors.items()}


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


# --- the form: only schedulable tasks, checked arguments, declared queues ----------------------


def test_the_task_field_offers_only_the_schedulable_tasks(admin_client):
    response = admin_client.get(ADD_URL)

    assert response.status_code == 200
    form = response.context["adminform"].form
    offered = [value for value, _ in form.fields["task"].choices if value]
    assert offered == sorted(SCHEDULABLE_TASKS)
    assert {"ops.ping", "jobs.prune_finished", "orders.alert_stuck_pending"} <= set(offered)
    assert "orders.validate_payment" not in offered  # a ledger task, but not one to schedule
    assert "regtask" not in form.fields  # django-celery-beat's free-text pair is gone
    assert [value for value, _ in form.fields["queue"].choices] == ["", *QueueName.values]
    assert "missed_run_policy" in form.fields


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"task": "ops.nope"}, "task", "Unknown task “ops.nope”: not a schedulable task."),
        ({"task": "orders.validate_payment"}, "task", "Unknown task “orders.validate_payment”"),
        ({"kwargs": '{"hold_seconds": "soon"}'}, "kwargs", "hold_seconds: Input should be a valid number"),
        ({"kwargs": '{"hold_seconds": 301}'}, "kwargs", "hold_seconds: Input should be less than or equal to 300"),
        ({"task": "ops.fail", "kwargs": "{}"}, "kwargs", "mode: Field required"),
        ({"kwargs": '{"hold_secs": 1}'}, "kwargs", "hold_secs: unknown field (the task takes hold_seconds, "),
        ({"kwargs": '{"hold_seconds": 1'}, "kwargs", "Unable to parse JSON"),
        ({"kwargs": "[1]"}, "kwargs", "Must be a JSON object"),
        ({"args": '["x"]'}, "args", "Must be empty ([])"),
        ({"queue": "urgent"}, "queue", "Unknown queue “urgent”: choose one of critical, default, bulk"),
        ({"priority": "10"}, "priority", "Ensure this value is less than or equal to 9."),
        ({"priority": "-1"}, "priority", "Ensure this value is greater than or equal to 0."),
        ({"missed_run_policy": "burst"}, "missed_run_policy", "Select a valid choice."),
    ],
    ids=[
        "unknown task", "task not schedulable", "kwargs wrong type", "kwargs out of range", "kwargs missing field",
        "kwargs unknown field", "kwargs not json", "kwargs not an object", "positional args", "unknown queue",
        "priority too high", "priority negative", "unknown policy",
    ],
)  # fmt: skip
def test_a_bad_schedule_is_a_form_error_naming_the_problem_and_nothing_is_saved(admin_client, fields, field, message):
    before = set(PeriodicTask.objects.values_list("pk", flat=True))

    response = admin_client.post(ADD_URL, form_data(interval=every(10).pk, **fields))

    errors = form_errors(response)
    assert list(errors) == [field]
    assert any(error.startswith(message) for error in errors[field]), errors
    assert set(PeriodicTask.objects.values_list("pk", flat=True)) == before
    assert not ScheduleOptions.objects.exists()


def test_an_edit_that_breaks_a_schedule_is_refused_and_the_schedule_stays_as_it_was(admin_client):
    schedule = PeriodicTask.objects.create(
        name="Mark", task="ops.mark", kwargs='{"key": "a"}', interval=every(10), queue=QueueName.BULK
    )

    response = admin_client.post(change_url(schedule), schedule_data(schedule, kwargs='{"key": ""}', queue="nowhere"))

    errors = form_errors(response)
    assert errors["kwargs"] == ["key: String should have at least 1 character"]
    assert errors["queue"][0].startswith("Unknown queue “nowhere”")
    schedule.refresh_from_db()
    assert (schedule.kwargs, schedule.queue) == ('{"key": "a"}', QueueName.BULK)


def test_a_good_schedule_is_saved_with_its_queue_priority_and_missed_run_policy(admin_client):
    response = admin_client.post(
        ADD_URL,
        form_data(
            name="Ping critical",
            interval=every(30).pk,
            kwargs='{"hold_seconds": 0.5}',
            queue=QueueName.CRITICAL,
            priority=2,
            missed_run_policy=MissedRunPolicy.SKIP,
        ),
    )

    assert response.status_code == 302, form_errors(response)
    schedule = PeriodicTask.objects.get(name="Ping critical")
    assert (schedule.task, json.loads(schedule.kwargs), schedule.args) == ("ops.ping", {"hold_seconds": 0.5}, "[]")
    assert (schedule.queue, schedule.priority, schedule.interval.every) == ("critical", 2, 30)
    assert ScheduleOptions.objects.get(schedule=schedule).missed_run_policy == MissedRunPolicy.SKIP

    # The page shows the policy as saved, and it can be changed back; a blank queue is the task's route.
    page = admin_client.get(change_url(schedule))
    assert page.context["adminform"].form["missed_run_policy"].value() == MissedRunPolicy.SKIP
    listing = admin_client.get(CHANGELIST_URL)
    assert "Skip (wait for the next due time)" in listing.content.decode()
    response = admin_client.post(
        change_url(schedule), schedule_data(schedule, queue="", missed_run_policy=MissedRunPolicy.RUN_ONCE)
    )
    assert response.status_code == 302, form_errors(response)
    schedule.refresh_from_db()
    assert schedule.queue is None
    assert ScheduleOptions.objects.get(schedule=schedule).missed_run_policy == MissedRunPolicy.RUN_ONCE


def test_a_schedule_with_no_options_row_shows_the_default_policy(admin_client):
    schedule = PeriodicTask.objects.create(name="Plain", task="ops.ping", interval=every(10))

    page = admin_client.get(change_url(schedule))

    assert page.context["adminform"].form["missed_run_policy"].value() == MissedRunPolicy.RUN_ONCE


# --- next runs --------------------------------------------------------------------------------


def berlin(*args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold)


def test_next_runs_of_a_daily_0230_in_berlin_across_the_spring_forward():
    schedule = PeriodicTask.objects.create(name="Nightly", task="ops.ping", crontab=daily_0230_berlin())

    upcoming = schedule_next_runs(schedule=schedule, now=datetime(2027, 3, 26, 12, 0, tzinfo=UTC))

    assert upcoming.timezone == "Europe/Berlin"
    local = [(moment.strftime("%Y-%m-%d %H:%M"), moment.tzname()) for moment in upcoming.times]
    assert local == [
        ("2027-03-27 02:30", "CET"),
        # 02:30 does not exist on 2027-03-28 (02:00 CET jumps to 03:00 CEST): beat fires it once, as
        # the clock passes it, at 03:30 CEST (01:30 UTC, one hour of real time after 01:30 CET).
        ("2027-03-28 03:30", "CEST"),
        ("2027-03-29 02:30", "CEST"),
        ("2027-03-30 02:30", "CEST"),
        ("2027-03-31 02:30", "CEST"),
    ]
    assert [moment.astimezone(UTC).strftime("%H:%M") for moment in upcoming.times] == [
        "01:30", "01:30", "00:30", "00:30", "00:30",
    ]  # fmt: skip


def test_next_runs_of_a_daily_0230_in_berlin_across_the_fall_back():
    schedule = PeriodicTask.objects.create(name="Nightly", task="ops.ping", crontab=daily_0230_berlin())

    upcoming = schedule_next_runs(schedule=schedule, now=datetime(2027, 10, 29, 12, 0, tzinfo=UTC))

    assert [moment.astimezone(UTC) for moment in upcoming.times] == [
        berlin(2027, 10, 30, 2, 30).astimezone(UTC),
        berlin(2027, 10, 31, 2, 30).astimezone(UTC),  # the first 02:30 (CEST) only, not the repeated one
        berlin(2027, 11, 1, 2, 30).astimezone(UTC),  # CET from here on
        berlin(2027, 11, 2, 2, 30).astimezone(UTC),
        berlin(2027, 11, 3, 2, 30).astimezone(UTC),
    ]
    assert [moment.tzname() for moment in upcoming.times] == ["CEST", "CEST", "CET", "CET", "CET"]
    assert berlin(2027, 10, 31, 2, 30, fold=1).astimezone(UTC) not in upcoming.times


def test_next_runs_of_an_interval_count_from_its_last_run_and_a_disabled_schedule_has_none():
    now = datetime(2027, 5, 1, 8, 0, 0, tzinfo=UTC)
    schedule = PeriodicTask.objects.create(
        name="Every 10 s", task="ops.ping", interval=every(10), last_run_at=now - timedelta(seconds=3)
    )

    upcoming = schedule_next_runs(schedule=schedule, now=now)

    assert [moment.strftime("%H:%M:%S") for moment in upcoming.times] == [
        "08:00:07", "08:00:17", "08:00:27", "08:00:37", "08:00:47",
    ]  # fmt: skip
    assert upcoming.overdue_since is None
    late = schedule_next_runs(schedule=schedule, now=now + timedelta(minutes=5))
    assert late.overdue_since == now + timedelta(seconds=7)  # beat was down across it
    assert late.times[0] == datetime(2027, 5, 1, 8, 5, 7, tzinfo=UTC)  # still on its 10 s grid

    schedule.enabled = False
    schedule.save()
    disabled = schedule_next_runs(schedule=schedule, now=now)
    assert (disabled.times, disabled.note) == ([], "disabled: beat does not run it")


def test_the_change_page_shows_the_next_five_runs_in_the_schedules_timezone(admin_client):
    schedule = PeriodicTask.objects.create(name="Nightly", task="ops.ping", crontab=daily_0230_berlin())

    page = admin_client.get(change_url(schedule)).content.decode()

    listed = re.search(r'<ol class="next-runs">(.*?)</ol>', page, re.S)
    assert listed, page
    runs = re.findall(r"<li>(.*?)</li>", listed.group(1))
    assert len(runs) == 5
    # 02:30 local every day (03:30 only on a spring-forward day), with the zone and UTC.
    assert all(re.fullmatch(r"\w{3} \d{4}-\d\d-\d\d 0[23]:30 CES?T \(0[01]:30 UTC\)", run) for run in runs), runs
    assert "Times in Europe/Berlin." in page


# --- last runs, list columns -------------------------------------------------------------------


def ledger_job(origin: str, state: str, age: timedelta) -> Job:
    job = Job.objects.create(task_name="ops.ping", queue="default", state=state, origin=origin)
    Job.objects.filter(pk=job.pk).update(created_at=timezone.now() - age)
    return job


def test_the_change_page_lists_the_last_runs_with_their_states_linked_to_the_ledger(admin_client):
    schedule = PeriodicTask.objects.create(name="Pinger", task="ops.ping", interval=every(60))
    other = PeriodicTask.objects.create(name="Pinger 2", task="ops.ping", interval=every(60))
    older = [ledger_job("beat:Pinger", Job.State.SUCCEEDED, timedelta(minutes=20 + i)) for i in range(10)]
    dead = ledger_job("beat:Pinger", Job.State.DEAD, timedelta(minutes=2))
    by_hand = ledger_job("beat:Pinger:run-now", Job.State.QUEUED, timedelta(minutes=1))
    not_ours = ledger_job("beat:Pinger 2", Job.State.FAILED, timedelta(seconds=30))

    page = admin_client.get(change_url(schedule)).content.decode()

    rows = re.findall(r'<tr class="last-run">(.*?)</tr>', page, re.S)
    assert len(rows) == 10  # the latest ten
    linked = [re.search(r'href="([^"]+)"', row).group(1) for row in rows]
    expected = [by_hand, dead, *older[:8]]
    assert linked == [reverse("admin:tasks_job_change", args=[job.pk]) for job in expected]
    assert "run now" in rows[0] and "Queued" in rows[0]
    assert "beat" in rows[1] and "Dead (gave up)" in rows[1]
    assert str(not_ours.pk) not in page
    assert admin_client.get(linked[1]).status_code == 200  # the link opens the job in the ledger

    listing = admin_client.get(CHANGELIST_URL).content.decode()
    row = re.search(r"<tr>(?:(?!</tr>).)*?>Pinger</a>.*?</tr>", listing, re.S).group(0)
    assert f'href="{reverse("admin:tasks_job_change", args=[by_hand.pk])}">Queued</a>' in row  # last result
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", row)  # last and next run
    other_row = re.search(r"<tr>(?:(?!</tr>).)*?>Pinger 2</a>.*?</tr>", listing, re.S).group(0)
    assert f'href="{reverse("admin:tasks_job_change", args=[not_ours.pk])}">Failed</a>' in other_row
    assert other.name in other_row


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's plans")
def test_the_last_runs_queries_can_use_the_index_of_schedules_jobs(admin_client):
    """job_schedule_runs holds only schedules' jobs: a query that does not repeat its condition
    would read the whole ledger."""
    schedule = PeriodicTask.objects.create(name="Pinger", task="ops.ping", interval=every(60))
    ledger_job("beat:Pinger", Job.State.SUCCEEDED, timedelta(minutes=1))

    with CaptureQueriesContext(connection) as queries:
        admin_client.get(change_url(schedule))
        admin_client.get(CHANGELIST_URL)

    ledger_reads = [query["sql"] for query in queries if re.search(r'FROM "tasks_job"', query["sql"])]
    assert len(ledger_reads) == 3  # the change page's last runs; the list's latest run, two queries
    # The index of every job newest first (job_created) serves an equality on created_at too, and
    # on a table this small the planner may take it: what is asserted is that these queries can
    # use job_schedule_runs, so job_created is out of the planner's reach here, and back after.
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # a table this small is read whole otherwise
        cursor.execute("DROP INDEX job_created")
        for sql in ledger_reads:
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            assert "job_schedule_runs" in plan, plan
        transaction.set_rollback(True)


def test_the_schedule_list_costs_the_same_queries_for_more_schedules(admin_client):
    def listing_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(CHANGELIST_URL).status_code == 200
        return len(queries)

    for i in range(3):
        schedule = PeriodicTask.objects.create(name=f"A{i}", task="ops.ping", interval=every(60 + i))
        ledger_job(f"beat:{schedule.name}", Job.State.SUCCEEDED, timedelta(minutes=1))
    few = listing_queries()
    for i in range(6):
        schedule = PeriodicTask.objects.create(name=f"B{i}", task="ops.ping", crontab=daily_0230_berlin())
        ScheduleOptions.objects.create(schedule=schedule, missed_run_policy=MissedRunPolicy.SKIP)
        ledger_job(f"beat:{schedule.name}", Job.State.DEAD, timedelta(minutes=1))

    assert listing_queries() == few


# --- run now ----------------------------------------------------------------------------------


def test_run_now_queues_a_ledger_job_that_a_worker_runs(admin_client, admin_user, start_worker, wait_for_job):
    schedule = PeriodicTask.objects.create(
        name="Ping by hand", task="ops.ping", kwargs='{"hold_seconds": 0.1}', interval=every(3600), priority=3
    )
    broken = PeriodicTask.objects.create(name="Legacy", task="celery.backend_cleanup", interval=every(3600))
    start_worker(QueueName.DEFAULT)

    response = admin_client.post(
        CHANGELIST_URL, {"action": "run_now", "_selected_action": [schedule.pk, broken.pk]}, follow=True
    )

    job = Job.objects.get(origin="beat:Ping by hand:run-now")
    assert messages_of(response) == [
        f"1 schedule(s) queued to run now: job(s) {job.pk}",
        "Not run: Legacy: task 'celery.backend_cleanup' is not a schedulable task",
    ]
    assert (job.task_name, job.owner, job.queue, job.priority) == ("ops.ping", admin_user, "default", 3)
    done = wait_for_job(job.pk, Job.State.SUCCEEDED, Job.State.DEAD, Job.State.FAILED)
    assert done.state == Job.State.SUCCEEDED, done.error
    assert done.result["held_seconds"] == 0.1
    assert Job.objects.count() == 1  # nothing for the refused one
    schedule.refresh_from_db()
    assert (schedule.last_run_at, schedule.total_run_count) == (None, 0)  # its timing is untouched

    # The change page's button does the same.
    page = admin_client.get(change_url(schedule)).content.decode()
    button_url = reverse("admin:django_celery_beat_periodictask_run_now", args=[schedule.pk])
    assert f'action="{button_url}"' in page
    assert admin_client.get(button_url).status_code == 405
    response = admin_client.post(button_url, follow=True)
    assert response.redirect_chain[-1][0] == change_url(schedule)
    second = Job.objects.exclude(pk=job.pk).get(origin="beat:Ping by hand:run-now")
    job_url = reverse("admin:tasks_job_change", args=[second.pk])
    assert messages_of(response) == [f'Queued to run now: <a href="{job_url}">job {second.pk}</a>.']
    assert wait_for_job(second.pk, Job.State.SUCCEEDED).payload == {"hold_seconds": 0.1, "ignore_soft_limit": False}


def test_toggling_a_schedule_off_forgets_its_last_run_so_it_does_not_catch_up_when_back_on(admin_client):
    schedule = PeriodicTask.objects.create(
        name="Toggled", task="ops.ping", interval=every(60), last_run_at=timezone.now() - timedelta(hours=3)
    )

    for _ in range(2):
        admin_client.post(CHANGELIST_URL, {"action": "toggle_tasks", "_selected_action": [schedule.pk]})
        schedule.refresh_from_db()
        assert schedule.last_run_at is None

    assert schedule.enabled


# --- permissions ------------------------------------------------------------------------------


@pytest.fixture
def staff_client() -> tuple[Client, object]:
    user = get_user_model().objects.create_user("ops", password="unused-pass-123", is_staff=True)
    client = Client()
    client.force_login(user)
    return client, user


def test_only_users_with_the_beat_permissions_see_or_change_schedules(staff_client):
    client, user = staff_client
    schedule = PeriodicTask.objects.create(name="Guarded", task="ops.ping", kwargs="{}", interval=every(60))
    run_now_url = reverse("admin:django_celery_beat_periodictask_run_now", args=[schedule.pk])

    assert client.get(CHANGELIST_URL).status_code == 403
    assert client.get(change_url(schedule)).status_code == 403
    assert client.get(ADD_URL).status_code == 403

    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="django_celery_beat", codename="view_periodictask")
    )
    listing = client.get(CHANGELIST_URL)
    assert listing.status_code == 200
    assert "Guarded" in listing.content.decode()
    assert listing.context["action_form"] is None  # view only: no action is offered, run now nor enable
    page = client.get(change_url(schedule))
    assert page.status_code == 200
    assert run_now_url not in page.content.decode()  # no button
    assert "No run in the ledger yet." in page.content.decode()
    assert client.post(change_url(schedule), schedule_data(schedule, kwargs='{"hold_seconds": 2}')).status_code == 403
    assert client.post(run_now_url).status_code == 403
    assert client.post(ADD_URL, form_data(name="Sneaky", interval=every(60).pk)).status_code == 403
    client.post(CHANGELIST_URL, {"action": "run_now", "_selected_action": [schedule.pk]})
    schedule.refresh_from_db()
    assert schedule.kwargs == "{}"
    assert not PeriodicTask.objects.filter(name="Sneaky").exists()
    assert not Job.objects.exists()

    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="django_celery_beat", codename="change_periodictask")
    )
    assert client.post(run_now_url).status_code == 302
    assert Job.objects.filter(origin="beat:Guarded:run-now").count() == 1


# --- a running beat picks up admin edits ----------------------------------------------------------


@pytest.fixture
def start_beat(process_env: dict[str, str], broker: redis.Redis) -> Iterator[Callable[[], ManagedProcess]]:
    started: list[ManagedProcess] = []

    def start() -> ManagedProcess:
        argv = [str(BIN_DIR / "celery"), "-A", "project", "beat", "--loglevel", "INFO"]
        process = ManagedProcess(argv, process_env, "beat").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def fired(name: str, since: datetime | None = None) -> list[Job]:
    jobs = Job.objects.filter(origin=f"beat:{name}").order_by("created_at")
    return list(jobs.filter(created_at__gt=since) if since else jobs)


def test_an_edit_a_disable_and_a_delete_in_admin_reach_the_running_beat_within_5_seconds(
    admin_client, start_worker, start_beat
):
    edited = PeriodicTask.objects.create(
        name="Live edit", task="ops.ping", kwargs='{"hold_seconds": 0}', interval=every(1)
    )
    deleted = PeriodicTask.objects.create(
        name="Live delete", task="ops.ping", kwargs='{"hold_seconds": 0}', interval=every(1)
    )
    start_worker(QueueName.DEFAULT)
    beat = start_beat()
    try:
        wait_until(lambda: len(fired(edited.name)) >= 2 and len(fired(deleted.name)) >= 2, timeout=45, what="beat")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; beat's log:\n{beat.log()[-4000:]}") from None
    latency: dict[str, float] = {}

    # 1. New arguments: the next runs carry them.
    response = admin_client.post(change_url(edited), schedule_data(edited, kwargs='{"hold_seconds": 0.01}'))
    assert response.status_code == 302, form_errors(response)
    saved = timezone.now()
    first_new = wait_until(
        lambda: next((job for job in fired(edited.name, saved) if job.payload["hold_seconds"] == 0.01), None),
        timeout=15,
        what="a run with the new arguments",
    )
    latency["kwargs edit"] = (first_new.created_at - saved).total_seconds()

    # 2. A much longer interval (1 s -> 1 h): the runs stop.
    edited.refresh_from_db()
    response = admin_client.post(change_url(edited), schedule_data(edited, interval=every(3600).pk))
    assert response.status_code == 302, form_errors(response)
    saved = timezone.now()
    time.sleep(6)
    last = max(job.created_at for job in fired(edited.name))
    latency["interval 1 s -> 1 h"] = max(0.0, (last - saved).total_seconds())
    assert not fired(edited.name, saved + timedelta(seconds=5))

    # 3. A shorter one (1 h -> 2 s): beat must re-read the schedule, not wait out the hour it planned.
    edited.refresh_from_db()
    response = admin_client.post(change_url(edited), schedule_data(edited, interval=every(2).pk))
    assert response.status_code == 302, form_errors(response)
    saved = timezone.now()
    resumed = wait_until(lambda: fired(edited.name, saved), timeout=15, what="runs at the shorter interval")
    latency["interval 1 h -> 2 s"] = (resumed[0].created_at - saved).total_seconds()
    time.sleep(7)
    runs = [job.created_at for job in fired(edited.name, saved)]
    # The first run comes at once (its due time had passed); the next ones keep to the 2 s grid.
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(runs[1:])]
    assert len(runs) >= 4 and all(1.5 <= gap <= 2.5 for gap in gaps), gaps

    # 4. Disabled: no run after the pickup.
    edited.refresh_from_db()
    response = admin_client.post(change_url(edited), schedule_data(edited, enabled=None))
    assert response.status_code == 302, form_errors(response)
    saved = timezone.now()

    # 5. Deleted (through admin's delete page): no run after the pickup.
    response = admin_client.post(
        reverse("admin:django_celery_beat_periodictask_delete", args=[deleted.pk]), {"post": "yes"}
    )
    assert response.status_code == 302
    deleted_at = timezone.now()
    assert not PeriodicTask.objects.filter(pk=deleted.pk).exists()
    time.sleep(8)
    last_disabled = max((job.created_at for job in fired(edited.name)), default=saved)
    last_deleted = max((job.created_at for job in fired(deleted.name)), default=deleted_at)
    latency["disable"] = max(0.0, (last_disabled - saved).total_seconds())
    latency["delete"] = max(0.0, (last_deleted - deleted_at).total_seconds())
    print("admin change -> running beat, seconds:", {key: round(value, 2) for key, value in latency.items()})

    assert beat.alive(), beat.log()[-3000:]
    assert all(value < 5 for value in latency.values()), latency
    assert not fired(edited.name, saved + timedelta(seconds=5))
    assert not fired(deleted.name, deleted_at + timedelta(seconds=5))
