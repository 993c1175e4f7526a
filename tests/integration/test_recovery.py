"""Retry and cancel by hand, through the one recovery service, with real workers."""

import io
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from tasks.models import ApiToken, Job, JobAction
from tasks.platform.queues import QueueName
from tasks.platform.selectors.queues import queue_ledger_counts
from tasks.platform.services.jobs import job_enqueue
from tasks.platform.services.recovery import ActionRefused, job_cancel, job_discard, job_retry

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ops():
    return get_user_model().objects.create_user("ops", password="unused-pass-123", is_staff=True)


def test_a_dead_job_retried_by_hand_runs_again_with_its_stored_arguments(ops, start_worker, start_relay, wait_for_job):
    start_worker(QueueName.DEFAULT, env={"TASK_MAX_ATTEMPTS": "1"})
    payload = {"mode": "transient", "succeed_on_attempt": 2}
    job = job_enqueue(task_name="ops.fail", payload=payload, idempotency_key="ticket-7")
    wait_for_job(job.id, Job.State.DEAD)

    job_retry(job_id=job.id, by=ops, via="admin")

    done = wait_for_job(job.id, Job.State.SUCCEEDED)
    assert done.result == {"succeeded_on_attempt": 2}
    assert (done.payload, done.idempotency_key, done.attempts) == (payload, "ticket-7", 2)
    assert list(done.attempt_history.values_list("outcome", flat=True)) == ["failed", "succeeded"]
    action = JobAction.objects.get(job=done)
    assert (action.kind, action.by, action.via, action.from_state) == ("retried", ops, "admin", "dead")
    with pytest.raises(ActionRefused):
        job_retry(job_id=job.id, by=ops, via="admin")


def test_a_job_cancelled_while_no_worker_runs_is_never_run(ops, start_worker, wait_for_job):
    cancelled = job_enqueue(task_name="ops.ping")
    job_cancel(job_id=cancelled.id, by=ops, via="api")
    start_worker(QueueName.DEFAULT)

    after = job_enqueue(task_name="ops.ping")
    wait_for_job(after.id, Job.State.SUCCEEDED)

    cancelled.refresh_from_db()
    assert cancelled.state == Job.State.CANCELLED
    assert cancelled.attempts == 0
    assert cancelled.started_at is None
    with pytest.raises(ActionRefused):
        job_cancel(job_id=after.id, by=ops, via="api")


def test_a_running_job_is_terminated_when_cancelled(ops, start_worker, wait_for_job):
    start_worker(QueueName.DEFAULT)
    job = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 30})
    wait_for_job(job.id, Job.State.STARTED)

    job_cancel(job_id=job.id, by=ops, via="admin")

    follow_up = job_enqueue(task_name="ops.ping")
    wait_for_job(follow_up.id, Job.State.SUCCEEDED, timeout=15)  # the worker was freed, not held 30 s
    job.refresh_from_db()
    assert job.state == Job.State.CANCELLED


def test_discarding_a_dead_job_is_recorded_and_takes_it_out_of_the_dead_letter_count():
    job = Job.objects.create(task_name="ops.ping", queue="default", state=Job.State.DEAD)
    assert queue_ledger_counts()["default"]["dead"] == 1

    job_discard(job_id=job.id, via="command")

    assert queue_ledger_counts()["default"]["dead"] == 0

    job.refresh_from_db()
    assert job.discarded_at is not None
    assert JobAction.objects.filter(job=job, kind="discarded", by=None).exists()
    with pytest.raises(ActionRefused):
        job_discard(job_id=job.id, via="command")


def test_admin_bulk_retry_reports_what_it_did_and_refused(client, broker, static_files):
    admin_user = get_user_model().objects.create_superuser("root", password="unused-pass-123")
    dead = Job.objects.create(task_name="ops.ping", queue="default", state=Job.State.DEAD, attempts=5)
    running = Job.objects.create(task_name="ops.ping", queue="default", state=Job.State.STARTED)
    client.force_login(admin_user)

    response = client.post(
        "/admin/tasks/job/",
        {"action": "retry_jobs", "_selected_action": [str(dead.pk), str(running.pk)]},
        follow=True,
    )

    shown = [str(message) for message in response.context["messages"]]
    assert shown[0] == "1 job(s) queued again."
    assert shown[1].startswith(f"Not changed: {running.pk}: a started job cannot be retried")
    dead.refresh_from_db()
    assert dead.state == Job.State.QUEUED
    assert dead.attempts_before_retry == 5
    assert JobAction.objects.get(job=dead).by == admin_user
    assert broker.llen("default:5") == 1


def test_api_retry_and_cancel_answer_404_409_and_act_on_the_callers_jobs(client, broker):
    owner = get_user_model().objects.create_user("dev", password="unused-pass-123")
    other = get_user_model().objects.create_user("other", password="unused-pass-123")
    _, token = ApiToken.issue(owner)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    dead = Job.objects.create(task_name="ops.ping", queue="default", state=Job.State.DEAD, owner=owner)
    theirs = Job.objects.create(task_name="ops.ping", queue="default", state=Job.State.DEAD, owner=other)
    waiting = job_enqueue(task_name="ops.ping", owner=owner)

    assert client.post(f"/api/jobs/{uuid.uuid4()}/retry", **auth).status_code == 404
    assert client.post(f"/api/jobs/{theirs.id}/retry", **auth).status_code == 404
    refused = client.post(f"/api/jobs/{waiting.id}/retry", **auth)
    assert (refused.status_code, refused.json()["code"]) == (409, "conflict")
    retried = client.post(f"/api/jobs/{dead.id}/retry", **auth)
    assert (retried.status_code, retried.json()["state"]) == (202, "queued")
    assert broker.llen("default:5") == 2

    cancelled = client.post(f"/api/jobs/{waiting.id}/cancel", **auth)
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
    assert client.post(f"/api/jobs/{waiting.id}/cancel", **auth).status_code == 409
    assert client.post(f"/api/jobs/{theirs.id}/cancel", **auth).status_code == 404
    assert JobAction.objects.filter(by=owner, via="api").count() == 2


def test_command_retries_every_dead_job(broker):
    dead = [Job.objects.create(task_name="ops.ping", queue="default", state=Job.State.DEAD) for _ in range(3)]
    Job.objects.create(task_name="ops.ping", queue="default", state=Job.State.DEAD, discarded_at=timezone.now())

    call_command("retry_jobs", "--all-dead", stdout=io.StringIO())

    assert set(Job.objects.filter(state=Job.State.QUEUED).values_list("pk", flat=True)) == {j.pk for j in dead}
    assert JobAction.objects.filter(via="command", kind="retried").count() == 3
    with pytest.raises(CommandError):
        call_command("retry_jobs", str(dead[0].pk), stdout=io.StringIO(), stderr=io.StringIO())
