"""Cancel that lasts, retry that runs: a cancel is recorded in the ledger and a retry undoes it,
whatever Celery's workers remember of revoked ids. Real workers, Redis and Flower; nothing mocked.

Celery drops every message whose id it saw revoked (each worker keeps the ids for hours, and a
starting worker copies its peers' set), and a retry publishes the job again under the same id:
before the fix, a retry after a cancel, a Flower revoke or any earlier revoke stayed queued forever.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import requests
from django.contrib.auth import get_user_model

from project.celery import app
from tasks.models import Job, JobAction
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tasks.platform.services.recovery import job_cancel, job_retry
from tests.fixtures import HOSTNAME, bearer, wait_for_worker, worker_argv
from tests.support.flower import FLOWER_AUTH
from tests.support.processes import ManagedProcess, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

#: how long the held ping runs: long enough that a cancel lands mid-run, and that a run which was
#: not terminated would visibly finish
HOLD = 6
#: a retried run must end within the hold plus this margin of the retry
MARGIN = 12
QUEUE = QueueName.CRITICAL


@pytest.fixture
def operator():
    return get_user_model().objects.create_superuser("root", password="unused-pass-123")


def active_on(node: str) -> list[dict]:
    """The tasks a worker is running now (its pool children), as Celery's inspect reports them."""
    replies = app.control.inspect(destination=[node], timeout=2).active() or {}
    assert node in replies, f"worker {node} did not answer"
    return replies[node]


def history(job: Job) -> list[tuple[int, str, str]]:
    return list(job.attempt_history.order_by("number").values_list("number", "outcome", "error"))


def held_ping() -> Job:
    return job_enqueue(task_name="ops.ping", payload={"hold_seconds": HOLD}, queue=QUEUE)


def assert_ran_once_more(job_id, retried_at: float, wait_for_job) -> Job:
    """The retry ran the job exactly once, to success, in time; the cancelled run never finished."""
    done = wait_for_job(job_id, Job.State.SUCCEEDED, timeout=HOLD + MARGIN + 10)
    assert time.monotonic() - retried_at < HOLD + MARGIN
    assert done.attempts == 2
    # Had the cancelled run gone on, it would have closed attempt 1 as succeeded after HOLD seconds.
    assert history(done) == [(1, "failed", "cancelled"), (2, "succeeded", "")]
    assert done.result["held_seconds"] == HOLD
    return done


def test_a_cancelled_running_job_retried_runs_exactly_once_more_and_succeeds(
    client, operator, start_worker, wait_for_job
):
    worker = start_worker(QUEUE, concurrency=2)
    job = held_ping()
    wait_for_job(job.id, Job.State.STARTED)
    auth = bearer(operator)

    cancelled = client.post(f"/api/jobs/{job.id}/cancel", **auth)

    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
    assert active_on(worker.name) == []  # terminated by the time the cancel answered
    retried_at = time.monotonic()
    retried = client.post(f"/api/jobs/{job.id}/retry", **auth)
    assert (retried.status_code, retried.json()["state"]) == (202, "queued")

    assert_ran_once_more(job.id, retried_at, wait_for_job)
    assert list(JobAction.objects.filter(job=job).order_by("at").values_list("kind", "via")) == [
        ("cancelled", "api"),
        ("retried", "api"),
    ]


def test_a_revoke_from_flower_is_a_ledger_cancel_that_a_retry_undoes(start_flower, start_worker, wait_for_job):
    _, flower = start_flower()
    worker = start_worker(QUEUE, concurrency=2)
    unknown = requests.post(f"{flower}/api/task/revoke/{uuid.uuid4()}", auth=FLOWER_AUTH, timeout=10)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "not_found")
    job = held_ping()
    wait_for_job(job.id, Job.State.STARTED)

    # What the task page's Terminate button posts.
    revoked = requests.post(
        f"{flower}/api/task/revoke/{job.id}", data={"terminate": "true"}, auth=FLOWER_AUTH, timeout=10
    )

    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["state"] == "cancelled"
    job.refresh_from_db()
    assert (job.state, job.error) == (Job.State.CANCELLED, "cancelled via flower")
    assert list(JobAction.objects.filter(job=job).values_list("kind", "via")) == [("cancelled", "flower")]
    assert active_on(worker.name) == []
    assert str(job.id) not in (app.control.inspect(destination=[worker.name], timeout=2).revoked() or {}).get(
        worker.name, []
    )

    retried_at = time.monotonic()
    retried = requests.post(f"{flower}/api/task/retry/{job.id}", auth=FLOWER_AUTH, timeout=10)
    assert retried.status_code == 202, retried.text
    assert_ran_once_more(job.id, retried_at, wait_for_job)


def test_a_job_revoked_earlier_through_celery_still_runs_when_retried(start_worker, wait_for_job):
    worker = start_worker(QueueName.DEFAULT)
    job = job_enqueue(task_name="ops.fail", payload={"mode": "transient", "succeed_on_attempt": 2}, max_attempts=1)
    wait_for_job(job.id, Job.State.DEAD)
    # An "earlier revoke": e.g. `celery control revoke <id>` by an operator, the worker now remembers it.
    assert app.control.revoke(str(job.id), destination=[worker.name], reply=True, timeout=2)
    assert str(job.id) in app.control.inspect(destination=[worker.name], timeout=2).revoked()[worker.name]

    job_retry(job_id=job.id, via="admin")

    done = wait_for_job(job.id, Job.State.SUCCEEDED, timeout=20)
    assert (done.attempts, done.result) == (2, {"succeeded_on_attempt": 2})
    assert [outcome for _, outcome, _ in history(done)] == ["failed", "succeeded"]


def test_a_run_terminated_by_celerys_own_revoke_is_recorded_as_cancelled_and_a_retry_runs_it(
    start_worker, wait_for_job
):
    worker = start_worker(QUEUE, concurrency=2)
    job = held_ping()
    wait_for_job(job.id, Job.State.STARTED)

    assert app.control.revoke(str(job.id), terminate=True, destination=[worker.name], reply=True, timeout=2)

    cancelled = wait_for_job(job.id, Job.State.CANCELLED, timeout=10)
    assert cancelled.error == "terminated via celery revoke (not the platform's cancel)"
    assert list(JobAction.objects.filter(job=job).values_list("kind", "via")) == [("cancelled", "celery revoke")]
    retried_at = time.monotonic()
    job_retry(job_id=job.id, via="admin")
    assert_ran_once_more(job.id, retried_at, wait_for_job)


#: the whole worker's message comes back soon after it dies (see test_process_failures)
SHORT_VISIBILITY = {
    "BROKER_VISIBILITY_TIMEOUT": "6",
    "TASK_TIME_LIMIT": "5",
    "TASK_SOFT_TIME_LIMIT": "4",
    "BROKER_UNACKED_RESTORE_INTERVAL": "1",
}


def broker_idle(broker, queue: str) -> bool:
    """No message of the queue waits in Redis, nor is delivered and unacknowledged."""
    waiting = sum(broker.llen(key) for key in broker.scan_iter(f"{queue}*") if broker.type(key) == b"list")
    return waiting == 0 and broker.hlen("unacked") == 0


def start_worker_as_deployed(process_env: dict, queue: str, name: str) -> ManagedProcess:
    """A worker with mingle on, as the Procfile runs it: at start-up it copies its peers' revoked ids."""
    node = f"{name}@{HOSTNAME}"
    argv = [arg for arg in worker_argv(queue, node) if arg != "--without-mingle"]
    process = ManagedProcess(argv, {**process_env, **SHORT_VISIBILITY}, node).start()
    wait_for_worker(node, process_env["REDIS_URL"])
    return process


def test_a_job_cancelled_while_its_worker_is_down_never_runs_and_a_later_retry_runs_it_once(
    process_env, broker, start_worker, wait_for_job
):
    start_worker(QueueName.BULK, name="peer")  # another queue's worker, online throughout
    first = start_worker(QueueName.DEFAULT, name="first", env=SHORT_VISIBILITY)
    job = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 3})
    wait_for_job(job.id, Job.State.STARTED)
    os.killpg(first.pid, signal.SIGKILL)  # the whole worker: its message waits, unacknowledged
    wait_until(lambda: not first.alive(), timeout=10, what="the worker to die")

    job_cancel(job_id=job.id, via="api")  # no worker of the queue is online
    later = start_worker_as_deployed(process_env, QueueName.DEFAULT, "later")
    try:
        # The message is restored after the visibility timeout, delivered, and acknowledged unrun.
        wait_until(lambda: broker_idle(broker, QueueName.DEFAULT), timeout=30, what="the restored message")
        job.refresh_from_db()
        assert (job.state, job.attempts) == (Job.State.CANCELLED, 1)
        assert history(job) == [(1, "failed", "cancelled")]

        job_retry(job_id=job.id, via="admin")

        done = wait_for_job(job.id, Job.State.SUCCEEDED, timeout=20)
        assert done.attempts == 2
        assert done.worker == later.name
        assert history(done) == [(1, "failed", "cancelled"), (2, "succeeded", "")]
    finally:
        later.stop()
