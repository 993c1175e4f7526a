"""A warm shutdown loses nothing and runs nothing twice; nor does a delay longer than the
visibility timeout (delayed jobs wait in the ledger, not in Redis)."""

import signal
import time

import pytest

from tasks.models import Job, JobAttempt
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = QueueName.DEFAULT.value


def in_redis(broker, job_id) -> bool:
    """Whether a message for ``job_id`` waits in one of the queue's priority lists."""
    needle = str(job_id).encode()
    return any(
        broker.type(key) == b"list" and any(needle in item for item in broker.lrange(key, 0, -1))
        for key in broker.scan_iter(f"{QUEUE}*")
    )


def test_sigterm_finishes_the_running_job_and_leaves_the_waiting_ones_queued(start_worker, broker, wait_for_job):
    worker = start_worker(QUEUE, name="shutdown-first")
    running = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 3})
    wait_for_job(running.id, Job.State.STARTED, timeout=15)
    waiting = [job_enqueue(task_name="ops.ping", payload={}) for _ in range(2)]
    wait_until(lambda: all(in_redis(broker, job.id) for job in waiting), timeout=5, what="the waiting messages")

    assert Job.objects.get(pk=running.id).state == Job.State.STARTED  # the signal lands mid-run
    worker.send_signal(signal.SIGTERM)  # the main process only, as a supervisor does
    worker.popen.wait(timeout=20)

    done = Job.objects.get(pk=running.id)
    assert done.state == Job.State.SUCCEEDED
    assert done.attempts == 1
    assert JobAttempt.objects.filter(job=done).count() == 1
    assert "Warm shutdown" in worker.log()
    for job in waiting:
        job.refresh_from_db()
        assert job.state == Job.State.QUEUED
        assert job.attempts == 0
        assert in_redis(broker, job.id), f"the message of waiting job {job.id} was lost"
    assert broker.hlen("unacked") == 0

    start_worker(QUEUE, name="shutdown-second")

    for job in waiting:
        ran = wait_for_job(job.id, Job.State.SUCCEEDED, timeout=15)
        assert ran.attempts == 1
        assert JobAttempt.objects.filter(job=ran).count() == 1
        assert ran.worker.startswith("shutdown-second@")


SHORT_VISIBILITY = {"BROKER_VISIBILITY_TIMEOUT": "3", "TASK_TIME_LIMIT": "2", "TASK_SOFT_TIME_LIMIT": "1"}


def test_a_delay_longer_than_the_visibility_timeout_runs_exactly_once(start_worker, start_relay, broker, wait_for_job):
    start_worker(QUEUE, env=SHORT_VISIBILITY)
    start_relay(env=SHORT_VISIBILITY)
    started = time.monotonic()

    job = job_enqueue(task_name="ops.ping", payload={}, delay=6)

    assert job.state == Job.State.SCHEDULED
    time.sleep(max(0, 4.5 - (time.monotonic() - started)))
    job.refresh_from_db()
    assert job.state == Job.State.SCHEDULED  # still in the ledger, not yet in Redis
    assert job.attempts == 0
    assert not in_redis(broker, job.id)

    ran = wait_for_job(job.id, Job.State.SUCCEEDED, timeout=15)
    assert time.monotonic() - started >= 5.5
    assert ran.attempts == 1

    time.sleep(5)  # longer than the visibility timeout: an unacked copy would be back by now
    ran.refresh_from_db()
    assert ran.state == Job.State.SUCCEEDED
    assert ran.attempts == 1
    assert JobAttempt.objects.filter(job=ran).count() == 1
    assert not in_redis(broker, job.id)
    assert broker.hlen("unacked") == 0
