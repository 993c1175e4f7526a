"""Django's task API on the platform (tasks.platform.django_tasks): ``@task`` functions enqueued with
``.enqueue()`` run as ledger jobs on real workers, with the relay and Flower; results are read back
with ``get_result``. The example module (tests/django_api/example.py) knows nothing of the platform."""

from __future__ import annotations

from datetime import timedelta

import pytest
import requests
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone

from tasks.models import Job, JobAction
from tasks.platform.django_tasks import owned_by
from tasks.platform.django_tasks.compat import InvalidTask, TaskResultDoesNotExist, TaskResultStatus, task_backends
from tasks.platform.queues import QueueName
from tests.django_api import example, tasks
from tests.fixtures import bearer, message_keys
from tests.support.flower import FLOWER_AUTH
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

#: the modules of Django tasks outside an app's tasks module: every process the test starts imports them
MODULES = {"DJANGO_TASK_MODULES": "tests.django_api.example,tests.django_api.tasks"}
FAST_RETRIES = {"TASK_BACKOFF_BASE_SECONDS": "0", "TASK_MAX_ATTEMPTS": "3"}
ENV = {**MODULES, **FAST_RETRIES}


@pytest.fixture
def platform(start_worker, start_relay):
    """A worker for the default queue and the relay (delayed jobs, retries), both knowing the tasks."""
    start_worker(QueueName.DEFAULT, env=ENV)
    start_relay(env=ENV)


def test_an_enqueue_rolled_back_with_its_transaction_never_runs(platform, broker, wait_for_job):
    with pytest.raises(RuntimeError), transaction.atomic():
        rolled_back = tasks.leave_mark.enqueue("rolled back")
        assert Job.objects.filter(pk=rolled_back.id).exists()  # written in the caller's transaction
        raise RuntimeError("the request failed")
    committed = tasks.leave_mark.enqueue("committed")

    wait_for_job(committed.id, Job.State.SUCCEEDED)
    assert not Job.objects.filter(pk=rolled_back.id).exists()
    with pytest.raises(TaskResultDoesNotExist):
        tasks.leave_mark.get_result(rolled_back.id)
    assert list(Group.objects.values_list("name", flat=True)) == ["committed"]
    assert message_keys(broker) == []  # nothing of the rolled-back job waits in Redis


def test_a_committed_task_runs_once_and_its_result_is_read_from_the_ledger(platform, wait_for_job):
    with transaction.atomic():
        result = example.total.enqueue([1, 2, 3], start=4)
        assert Job.objects.get(pk=result.id).state == Job.State.QUEUED  # its message waits for the commit

    done = wait_for_job(result.id, Job.State.SUCCEEDED)
    read = example.total.get_result(result.id)
    result.refresh()

    assert done.attempts == 1 and done.attempt_history.count() == 1
    assert read.status == result.status == TaskResultStatus.SUCCESSFUL
    assert read.return_value == result.return_value == 10
    assert read.attempts == 1 and read.worker_ids[0].startswith("default-test@")
    assert read.enqueued_at <= read.started_at <= read.finished_at
    assert read.errors == []


def test_a_failing_task_fails_retries_by_the_platforms_policy_and_flower_retries_it(
    platform, start_flower, wait_for_job
):
    result = tasks.charge.enqueue(5)

    dead = wait_for_job(result.id, Job.State.DEAD)
    result.refresh()

    assert dead.attempts == 3  # TASK_MAX_ATTEMPTS, with the platform's backoff between
    assert result.status == TaskResultStatus.FAILED
    assert [error.exception_class for error in result.errors] == [tasks.PaymentDeclined] * 3
    assert "Traceback" in result.errors[-1].traceback
    assert "PaymentDeclined: card declined for 5" in result.errors[-1].traceback
    assert dead.error.startswith("tests.django_api.tasks.PaymentDeclined: card declined for 5")

    _, flower = start_flower(env=ENV)
    response = requests.post(f"{flower}/api/task/retry/{result.id}", auth=FLOWER_AUTH, timeout=10)

    assert response.status_code == 202, response.text
    wait_until(
        lambda: Job.objects.filter(pk=result.id, state=Job.State.DEAD, attempts=6).exists(),
        timeout=30,
        what="the retried job to run out of its fresh attempts",
    )
    assert JobAction.objects.get(job_id=result.id).via == "flower"
    result.refresh()
    assert result.status == TaskResultStatus.FAILED and result.attempts == 6


def test_takes_context_gets_the_attempt_number_and_a_retry_succeeds(platform, wait_for_job):
    result = example.flaky.enqueue(succeed_on_attempt=2)

    wait_for_job(result.id, Job.State.SUCCEEDED)
    result.refresh()

    assert result.return_value == {"attempt": 2, "id": result.id}
    assert result.attempts == 2
    assert [error.exception_class for error in result.errors] == [ConnectionError]


def test_priority_maps_onto_the_platforms_steps(start_worker, broker, wait_for_job):
    later = example.total.using(priority=-100).enqueue([1])
    sooner = example.total.using(priority=100).enqueue([2])
    assert {key.decode() for key in message_keys(broker)} == {"default:9", "default"}  # steps 9 and 0

    start_worker(QueueName.DEFAULT, env=ENV)  # one process: the more urgent job goes first

    first, second = wait_for_job(sooner.id, Job.State.SUCCEEDED), wait_for_job(later.id, Job.State.SUCCEEDED)
    assert first.started_at < second.started_at
    assert (first.priority, second.priority) == (0, 9)


def test_queue_name_picks_a_declared_queue_and_an_unknown_one_is_refused(start_worker, wait_for_job):
    start_worker(QueueName.CRITICAL, env=ENV)
    result = example.create_group.enqueue("editors")  # queue_name="critical"

    done = wait_for_job(result.id, Job.State.SUCCEEDED)

    assert done.queue == "critical" and done.worker.startswith("critical-test@")
    assert example.create_group.get_result(result.id).return_value == Group.objects.get(name="editors").pk
    with pytest.raises(InvalidTask):
        example.create_group.using(queue_name="celery").enqueue("nope")
    assert not Group.objects.filter(name="nope").exists()


def test_run_after_makes_a_delayed_job_the_relay_sends_when_due(platform, wait_for_job):
    due = timezone.now() + timedelta(seconds=3)
    result = example.calculate_meaning_of_life.using(run_after=due).enqueue()
    assert Job.objects.get(pk=result.id).state == Job.State.SCHEDULED
    assert task_backends["default"].get_result(result.id).status == TaskResultStatus.READY

    done = wait_for_job(result.id, Job.State.SUCCEEDED, timeout=30)

    assert done.started_at >= due
    assert example.calculate_meaning_of_life.get_result(result.id).task.run_after == due


def test_the_example_written_against_djangos_api_runs_unchanged(start_worker, wait_for_job):
    start_worker(QueueName.DEFAULT, env=ENV)
    start_worker(QueueName.CRITICAL, env=ENV)
    results = [
        example.calculate_meaning_of_life.enqueue(),
        example.create_group.enqueue("authors"),
        example.total.enqueue([1, 2], start=1),
        example.flaky.enqueue(1),
        example.greet.enqueue("Ada"),
    ]

    for result in results:
        wait_for_job(result.id, Job.State.SUCCEEDED)
        result.refresh()

    assert [result.status for result in results] == [TaskResultStatus.SUCCESSFUL] * 5
    assert [result.return_value for result in results] == [
        42,
        Group.objects.get(name="authors").pk,
        4,
        {"attempt": 1, "id": results[3].id},
        "Hello, Ada!",
    ]


def test_a_django_tasks_job_is_visible_to_its_owner_only(client, django_user_model, broker):
    owner, other = django_user_model.objects.create_user("owner"), django_user_model.objects.create_user("other")
    with owned_by(owner):
        result = example.calculate_meaning_of_life.enqueue()

    assert client.get(f"/api/jobs/{result.id}", **bearer(owner)).status_code == 200
    assert client.get(f"/api/jobs/{result.id}", **bearer(other)).status_code == 404


def test_a_schedule_in_admin_checks_arguments_against_the_signature_and_runs_on_the_tasks_queue(
    admin_client, start_worker, wait_for_job
):
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from tests.integration.test_schedule_admin import ADD_URL, CHANGELIST_URL, form_data, form_errors

    every = IntervalSchedule.objects.create(every=3600, period=IntervalSchedule.SECONDS)
    name = "tests.django_api.example.total"
    for kwargs, message in [
        ("{}", "numbers: Field required"),
        ('{"numbers": "1, 2"}', "numbers: Input should be a valid list"),
        ('{"numbers": [1], "begin": 2}', "begin: unknown field"),
    ]:
        response = admin_client.post(ADD_URL, form_data(task=name, kwargs=kwargs, interval=every.pk))
        assert any(error.startswith(message) for error in form_errors(response)["kwargs"]), kwargs
    assert not PeriodicTask.objects.filter(task=name).exists()

    admin_client.post(
        ADD_URL, form_data(name="Totals", task=name, kwargs='{"numbers": [1, 2], "start": 3}', interval=every.pk)
    )
    admin_client.post(
        ADD_URL,
        form_data(
            name="Groups", task="tests.django_api.example.create_group", kwargs='{"name": "beat"}', interval=every.pk
        ),
    )
    start_worker(QueueName.DEFAULT, env=ENV)
    start_worker(QueueName.CRITICAL, env=ENV)
    schedules = list(
        PeriodicTask.objects.filter(name__in=["Totals", "Groups"]).order_by("name").values_list("pk", flat=True)
    )
    assert len(schedules) == 2
    admin_client.post(CHANGELIST_URL, {"action": "run_now", "_selected_action": schedules})

    groups, totals = (Job.objects.get(origin=f"beat:{n}:run-now") for n in ("Groups", "Totals"))
    assert (groups.queue, totals.queue) == ("critical", "default")  # a schedule without a queue: the task's own
    assert wait_for_job(totals.pk, Job.State.SUCCEEDED).result == 6
    assert example.total.get_result(str(totals.pk)).return_value == 6
    wait_for_job(groups.pk, Job.State.SUCCEEDED)
    assert Group.objects.filter(name="beat").exists()
