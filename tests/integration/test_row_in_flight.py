"""A single enqueue outside a transaction publishes while its row commits (job_row_insert_while).

Its message may reach a worker before the row is visible: the worker waits for the row, and if it
never comes (the INSERT failed, and the caller was told so) the job is cancelled, not run.
"""

import time
import uuid
from unittest import mock

import pytest
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.utils import timezone

from tasks.models import Job, JobAttempt, PublishLease
from tasks.registry import LEDGER_TASKS
from tasks.services.job_rows import ROW_IN_FLIGHT_HEADER, job_row_insert
from tasks.services.jobs import job_enqueue, task_queue
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "ops.ping"


@pytest.fixture
def queue() -> str:
    return task_queue(TASK)


def publish_in_flight(job: Job) -> None:
    """The message job_enqueue sends for a job whose row may not be committed yet."""
    LEDGER_TASKS[TASK].apply_async(
        kwargs=job.payload, task_id=str(job.pk), queue=job.queue, headers={ROW_IN_FLIGHT_HEADER: True}
    )


def new_job(queue: str, owner=None) -> Job:
    now = timezone.now()
    return Job(
        id=uuid.uuid4(), task_name=TASK, queue=queue, owner=owner, state=Job.State.QUEUED, queued_at=now, created_at=now
    )


def test_a_single_enqueue_returns_its_row_committed_and_its_message_marked(broker, queue):
    job = job_enqueue(task_name=TASK)

    assert (job.state, job.publish_error) == (Job.State.QUEUED, "")
    other = connections.create_connection(DEFAULT_DB_ALIAS)  # sees only what is committed
    try:
        with other.cursor() as cursor:
            cursor.execute(f"SELECT state FROM {Job._meta.db_table} WHERE id = %s", [job.pk])  # noqa: S608
            assert cursor.fetchall() == [(Job.State.QUEUED,)]
    finally:
        other.close()
    lists = [key for key in broker.scan_iter(f"{queue}*") if broker.type(key) == b"list"]
    messages = [message for key in lists for message in broker.lrange(key, 0, -1)]
    assert len(messages) == 1 and str(job.pk).encode() in messages[0]
    assert f'"{ROW_IN_FLIGHT_HEADER}": true'.encode() in messages[0]
    wait_until(lambda: not PublishLease.objects.exists(), timeout=5, what="the lease released")


def test_a_failed_insert_raises_after_the_publish_and_leaves_the_connection_usable(broker):
    taken = job_enqueue(task_name=TASK)

    with mock.patch("tasks.services.jobs.uuid.uuid4", return_value=taken.pk), pytest.raises(IntegrityError):
        job_enqueue(task_name=TASK)

    assert Job.objects.count() == 1
    assert job_enqueue(task_name=TASK).publish_error == ""


@pytest.mark.parametrize("insert_first", [True, False], ids=["insert-uncommitted", "insert-not-yet-run"])
def test_a_worker_that_gets_the_message_first_waits_for_the_row(
    insert_first, start_worker, wait_for_job, broker, queue, user
):
    start_worker(queue)
    job = new_job(queue, owner=user)

    with transaction.atomic():
        if insert_first:  # the INSERT ran but is not committed: the worker's own insert waits for it
            job_row_insert(job, leased=False)
        publish_in_flight(job)
        wait_until(lambda: broker.hlen("unacked"), timeout=10, what="the worker to take the message")
        time.sleep(0.5)  # the worker is looking for the row meanwhile
        if not insert_first:  # nothing there yet: the worker polls until it is
            job_row_insert(job, leased=False)

    done = wait_for_job(job.pk, Job.State.SUCCEEDED)
    assert (done.attempts, done.owner_id, done.error) == (1, user.pk, "")
    assert JobAttempt.objects.filter(job=job).count() == 1


def test_a_message_whose_row_never_comes_is_cancelled_not_run(start_worker, wait_for_job, broker, queue):
    start_worker(queue)
    job = new_job(queue)

    publish_in_flight(job)

    tombstone = wait_for_job(job.pk, Job.State.CANCELLED, timeout=30)
    assert tombstone.attempts == 0 and "enqueue did not complete" in tombstone.error
    assert not JobAttempt.objects.filter(job=job).exists()
    wait_until(lambda: not broker.hlen("unacked"), timeout=10, what="the message acknowledged")
    # The INSERT that was late fails, so its caller is told the job was not enqueued.
    with pytest.raises(IntegrityError):
        job_row_insert(job, leased=True)
