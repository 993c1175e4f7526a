"""An enqueue outside a transaction publishes while its rows are written: a single job's INSERT
(job_row_insert_while), or the end of an enqueue_many's COPY, before its COMMIT (job_rows_insert_while).

A message may reach a worker before its rows are visible: the worker waits for them, and if they
never come (the insert or commit failed, and the caller was told so) the jobs are cancelled, not run.
"""

import json
import time
import uuid
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connections, transaction
from django.utils import timezone

from project.celery import app
from tasks.models import Job, JobAttempt, PublishLease
from tasks.registry import LEDGER_TASKS
from tasks.services.batches import BATCH_TASK
from tasks.services.job_rows import ROW_IN_FLIGHT_HEADER, job_row_insert, job_rows_insert
from tasks.services.jobs import JobRequest, job_enqueue, job_enqueue_many, task_queue
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

TASK = "ops.ping"
#: a task whose first attempts travel many to a message
BATCHED = "ops.noop"


@pytest.fixture
def queue() -> str:
    return task_queue(TASK)


def publish_in_flight(job: Job) -> None:
    """The message job_enqueue sends for a job whose row may not be committed yet."""
    LEDGER_TASKS[TASK].apply_async(
        kwargs=job.payload, task_id=str(job.pk), queue=job.queue, headers={ROW_IN_FLIGHT_HEADER: True}
    )


def new_job(queue: str, owner=None, task_name: str = TASK) -> Job:
    now = timezone.now()
    return Job(
        id=uuid.uuid4(),
        task_name=task_name,
        queue=queue,
        owner=owner,
        state=Job.State.QUEUED,
        queued_at=now,
        created_at=now,
    )


def publish_batch_in_flight(jobs: list[Job]) -> None:
    """The message job_enqueue_many sends for short jobs whose rows may not be committed yet."""
    app.send_task(
        BATCH_TASK,
        kwargs={"task": BATCHED, "jobs": [[str(job.pk), job.payload] for job in jobs]},
        queue=jobs[0].queue,
        headers={ROW_IN_FLIGHT_HEADER: True},
    )


def committed_states(ids: list) -> list[str]:
    """The states of these jobs as another connection sees them: only what is committed."""
    other = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        with other.cursor() as cursor:
            cursor.execute(f"SELECT state FROM {Job._meta.db_table} WHERE id = ANY(%s)", [ids])  # noqa: S608
            return [state for (state,) in cursor.fetchall()]
    finally:
        other.close()


def queued_messages(broker, queue: str) -> list[bytes]:
    lists = [key for key in broker.scan_iter(f"{queue}*") if broker.type(key) == b"list"]
    return [message for key in lists for message in broker.lrange(key, 0, -1)]


def test_a_single_enqueue_returns_its_row_committed_and_its_message_marked(broker, queue):
    job = job_enqueue(task_name=TASK)

    assert (job.state, job.publish_error) == (Job.State.QUEUED, "")
    assert committed_states([job.pk]) == [Job.State.QUEUED]
    messages = queued_messages(broker, queue)
    assert len(messages) == 1 and str(job.pk).encode() in messages[0]
    assert f'"{ROW_IN_FLIGHT_HEADER}": true'.encode() in messages[0]
    wait_until(lambda: not PublishLease.objects.exists(), timeout=5, what="the lease released")


def test_an_enqueue_many_returns_its_rows_committed_and_its_messages_marked(broker):
    requests = [JobRequest(BATCHED)] * 250 + [JobRequest(TASK)] * 2 + [JobRequest(TASK, delay=60)]

    jobs = job_enqueue_many(requests=requests)

    assert [job.state for job in jobs] == [Job.State.QUEUED] * 252 + [Job.State.SCHEDULED]
    assert sorted(committed_states([job.pk for job in jobs])) == sorted(job.state for job in jobs)
    assert not PublishLease.objects.exists()  # published before the COMMIT: no lease needed
    queues = {task_queue(BATCHED), task_queue(TASK)}
    headers = [json.loads(message)["headers"] for queue in queues for message in queued_messages(broker, queue)]
    # 250 short jobs in three messages, two alone; the delayed one waits for the relay.
    assert sorted(header["task"] for header in headers) == sorted([BATCH_TASK] * 3 + [TASK] * 2)
    assert all(header[ROW_IN_FLIGHT_HEADER] is True for header in headers)


def test_a_failed_write_of_many_raises_after_the_publish_and_writes_nothing(broker):
    ghost = get_user_model()(pk=10**9, username="ghost")  # no such user: the owner check fails at the COPY's end

    with pytest.raises(IntegrityError):
        job_enqueue_many(requests=[JobRequest(BATCHED)] * 3, owner=ghost)

    assert not Job.objects.exists() and not PublishLease.objects.exists()
    assert len(queued_messages(broker, task_queue(BATCHED))) == 1  # out already: a worker cancels its jobs
    assert job_enqueue_many(requests=[JobRequest(BATCHED)] * 2)[0].publish_error == ""


def test_a_failed_insert_raises_after_the_publish_and_leaves_the_connection_usable(broker):
    taken = job_enqueue(task_name=TASK)

    with mock.patch("tasks.services.jobs.uuid7", return_value=taken.pk), pytest.raises(IntegrityError):
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


@pytest.mark.parametrize("insert_first", [True, False], ids=["rows-uncommitted", "rows-not-yet-written"])
def test_a_worker_that_gets_a_batch_first_waits_for_its_rows(insert_first, start_worker, wait_for_job, broker):
    queue = task_queue(BATCHED)
    start_worker(queue)
    jobs = [new_job(queue, task_name=BATCHED) for _ in range(3)]

    with transaction.atomic():
        if insert_first:
            job_rows_insert(jobs)
        publish_batch_in_flight(jobs)
        wait_until(lambda: broker.hlen("unacked"), timeout=10, what="the worker to take the message")
        time.sleep(0.5)  # the worker is looking for the rows meanwhile
        if not insert_first:
            job_rows_insert(jobs)

    for job in jobs:
        assert wait_for_job(job.pk, Job.State.SUCCEEDED).attempts == 1
    assert JobAttempt.objects.filter(job__in=jobs).count() == 3


def test_a_batch_whose_rows_never_come_is_cancelled_not_run(start_worker, wait_for_job, broker):
    queue = task_queue(BATCHED)
    start_worker(queue)
    jobs = [new_job(queue, task_name=BATCHED) for _ in range(3)]

    publish_batch_in_flight(jobs)

    for job in jobs:
        tombstone = wait_for_job(job.pk, Job.State.CANCELLED, timeout=30)
        assert tombstone.attempts == 0 and "enqueue did not complete" in tombstone.error
    assert not JobAttempt.objects.exists()
    wait_until(lambda: not broker.hlen("unacked"), timeout=10, what="the message acknowledged")
    with pytest.raises(IntegrityError), transaction.atomic():
        job_rows_insert(jobs)  # the COPY that was late fails, so its caller is told
