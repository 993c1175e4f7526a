"""Retries with backoff, dead letters and attempt history, with real workers and the relay."""

import pytest

from tasks.models import Job, JobAttempt
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue

pytestmark = pytest.mark.django_db(transaction=True)

FAST_RETRIES = {"TASK_BACKOFF_BASE_SECONDS": "0", "TASK_MAX_ATTEMPTS": "3"}


@pytest.fixture
def platform(start_worker, start_relay):
    start_worker(QueueName.DEFAULT, env=FAST_RETRIES)
    start_relay(env=FAST_RETRIES)


def outcomes(job: Job) -> list[str]:
    return list(job.attempt_history.order_by("number").values_list("outcome", flat=True))


def test_transient_errors_retry_until_the_job_succeeds(platform, wait_for_job):
    job = job_enqueue(task_name="ops.fail", payload={"mode": "transient", "succeed_on_attempt": 3})

    done = wait_for_job(job.id, Job.State.SUCCEEDED)

    assert done.attempts == 3
    assert done.result == {"succeeded_on_attempt": 3}
    assert done.error == ""
    assert outcomes(done) == ["failed", "failed", "succeeded"]
    failed = done.attempt_history.first()
    assert "transient failure on attempt 1" in failed.error
    assert failed.worker.startswith("default-test@")


def test_a_permanent_error_goes_straight_to_dead(platform, wait_for_job):
    job = job_enqueue(task_name="ops.fail", payload={"mode": "permanent"})

    dead = wait_for_job(job.id, Job.State.DEAD)

    assert dead.attempts == 1
    assert dead.error.startswith("PermanentError: ops.fail: permanent failure requested")
    assert "Traceback" in dead.traceback
    assert outcomes(dead) == ["failed"]


def test_exhausted_retries_leave_a_dead_job_with_its_history(platform, wait_for_job):
    job = job_enqueue(task_name="ops.fail", payload={"mode": "transient"})

    dead = wait_for_job(job.id, Job.State.DEAD)

    assert dead.attempts == 3
    assert "gave up after 3 attempts" in dead.error
    assert outcomes(dead) == ["failed", "failed", "failed"]
    assert all(a.finished_at and a.started_at <= a.finished_at for a in JobAttempt.objects.filter(job=dead))


def test_max_attempts_set_at_enqueue_overrides_the_default(platform, wait_for_job):
    job = job_enqueue(task_name="ops.fail", payload={"mode": "transient"}, max_attempts=2)

    dead = wait_for_job(job.id, Job.State.DEAD)

    assert dead.attempts == 2
    assert "gave up after 2 attempts" in dead.error
