"""A real worker per queue runs ops.ping, and the ledger records the queue and worker that ran it."""

import pytest

from tasks.models import Job
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.fixtures import HOSTNAME

pytestmark = pytest.mark.django_db(transaction=True)


def test_each_queue_is_consumed_by_its_own_worker(start_worker, wait_for_job):
    for queue in QueueName.values:
        start_worker(queue)

    jobs = {queue: job_enqueue(task_name="ops.ping", queue=queue) for queue in QueueName.values}

    for queue, job in jobs.items():
        done = wait_for_job(job.id, Job.State.SUCCEEDED)
        node = f"{queue}-test@{HOSTNAME}"
        assert done.queue == queue
        assert done.worker == node
        assert done.result == {"worker": node, "queue": queue, "held_seconds": 0}
        assert done.created_at <= done.queued_at <= done.started_at <= done.finished_at


def test_a_job_for_a_queue_without_a_worker_waits_queued(start_worker, wait_for_job):
    start_worker(QueueName.DEFAULT)

    waiting = job_enqueue(task_name="ops.ping", queue=QueueName.BULK)
    ran = job_enqueue(task_name="ops.ping", queue=QueueName.DEFAULT)

    wait_for_job(ran.id, Job.State.SUCCEEDED)
    waiting.refresh_from_db()
    assert waiting.state == Job.State.QUEUED
    assert waiting.started_at is None
