"""Messages a worker cannot use: logged, never run, never redelivered, and the job dead in the ledger."""

import json
import pickle
import time
import uuid

import pytest
from django.utils import timezone

from project.celery import app
from tasks.models import Job, JobAttempt
from tasks.queues import QueueName
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = QueueName.DEFAULT.value


@pytest.fixture
def worker(start_worker):
    return start_worker(QUEUE)


def queued_job(task_name: str = "ops.ping") -> Job:
    """A ledger row as enqueue leaves it once the message is in Redis."""
    now = timezone.now()
    return Job.objects.create(id=uuid.uuid4(), task_name=task_name, queue=QUEUE, state=Job.State.QUEUED, queued_at=now)


def publish(job_id: str, task_name: str, *, body: bytes, content_type: str, content_encoding: str) -> None:
    """Publish a message with valid protocol-2 headers for ``job_id`` and the given raw body."""
    message = app.amqp.as_task_v2(job_id, task_name, args=(), kwargs={})
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange=QUEUE,
            routing_key=QUEUE,
            content_type=content_type,
            content_encoding=content_encoding,
            headers=message.headers,
            **message.properties,
        )


def messages_holding(broker, job_id: str) -> list[str]:
    """Where Redis still has a message for ``job_id``: the queue's priority lists and the unacked hash."""
    needle = str(job_id).encode()
    places = []
    for key in broker.scan_iter(f"{QUEUE}*"):
        if broker.type(key) == b"list" and any(needle in item for item in broker.lrange(key, 0, -1)):
            places.append(key.decode())
    if any(needle in value for value in broker.hvals("unacked")):
        places.append("unacked")
    return places


def assert_gone_for_good(broker, job_id: str, seconds: float = 4) -> None:
    """Not in Redis now, and still not after a few seconds (no redelivery)."""
    wait_until(lambda: not messages_holding(broker, job_id), timeout=10, what=f"message {job_id} to leave Redis")
    time.sleep(seconds)
    assert messages_holding(broker, job_id) == []


def assert_never_ran(job_id) -> None:
    assert Job.objects.get(pk=job_id).attempts == 0
    assert not JobAttempt.objects.filter(job_id=job_id).exists()


def test_a_pickled_message_is_refused_and_its_job_is_dead(worker, broker, wait_for_job):
    job = queued_job()
    body = pickle.dumps(((), {"hold_seconds": 0}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}))

    publish(
        str(job.id), "ops.ping", body=body, content_type="application/x-python-serialize", content_encoding="binary"
    )

    dead = wait_for_job(job.id, Job.State.DEAD, timeout=15)
    assert "undeliverable" in dead.error
    assert "ContentDisallowed" in dead.error
    assert "application/x-python-serialize" in dead.error
    assert_gone_for_good(broker, str(job.id))
    assert_never_ran(job.id)
    log = worker.log()
    assert "ContentDisallowed" in log
    assert "ping on" not in log


def test_an_unknown_task_is_refused_and_its_job_is_dead(worker, broker, wait_for_job):
    job = queued_job("ops.no_such_task")
    body = json.dumps([[], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()

    publish(str(job.id), "ops.no_such_task", body=body, content_type="application/json", content_encoding="utf-8")

    dead = wait_for_job(job.id, Job.State.DEAD, timeout=15)
    assert "unknown task 'ops.no_such_task'" in dead.error
    assert_gone_for_good(broker, str(job.id))
    assert_never_ran(job.id)
    assert "Received unregistered task of type 'ops.no_such_task'" in worker.log()


def test_an_undecodable_body_is_dropped_logged_and_its_job_is_dead(worker, broker, wait_for_job):
    job = queued_job()

    publish(str(job.id), "ops.ping", body=b"{not json", content_type="application/json", content_encoding="utf-8")

    wait_until(lambda: "Can't decode message body" in worker.log(), timeout=15, what="the decode error in the log")
    assert_gone_for_good(broker, str(job.id))
    assert_never_ran(job.id)
    dead = wait_for_job(job.id, Job.State.DEAD, timeout=15)
    assert dead.error.startswith("undeliverable: the message body could not be decoded")


def test_a_finished_job_is_not_touched_by_a_refused_copy(worker, broker, wait_for_job):
    job = queued_job("ops.no_such_task")
    Job.objects.filter(pk=job.id).update(state=Job.State.SUCCEEDED, finished_at=timezone.now())
    body = json.dumps([[], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()

    publish(str(job.id), "ops.no_such_task", body=body, content_type="application/json", content_encoding="utf-8")

    wait_until(lambda: "Received unregistered task" in worker.log(), timeout=15, what="the unknown task in the log")
    assert_gone_for_good(broker, str(job.id), seconds=1)
    job.refresh_from_db()
    assert job.state == Job.State.SUCCEEDED
    assert job.error == ""
