"""Messages a worker cannot use: logged, never run, never redelivered, and the job dead in the ledger.

Workers accept JSON only (``accept_content``): a pickled, YAML or undecodable message, published
or pushed straight into Redis, is refused before anything is deserialised or executed.
"""

import base64
import json
import os
import pickle
import time
import uuid

import pytest
from django.utils import timezone

from project.celery import app
from tasks.models import Job, JobAttempt
from tasks.platform.queues import QueueName
from tasks.platform.tasks.ops import ops_mark_key
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


# --- pushed straight into Redis: what someone with access to the broker could do -----------------


class RunsOnUnpickling:
    """Unpickling this calls os.mkdir(path): proof that a pickle was (or was not) ever loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def push_raw(broker, job_id: str, task_name: str, *, body: bytes, content_type: str, encoding: str = "binary") -> None:
    """LPUSH a message in kombu's Redis envelope onto the queue's list, past every producer."""
    message = app.amqp.as_task_v2(job_id, task_name, args=(), kwargs={})
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": encoding,
        "content-type": content_type,
        "headers": message.headers,
        "properties": {
            **message.properties,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
            "delivery_info": {"exchange": QUEUE, "routing_key": QUEUE},
            "priority": 0,
        },
    }
    broker.lpush(QUEUE, json.dumps(envelope))  # list 0 of the queue, the most urgent one


def task_body(kwargs: dict) -> tuple:
    return ((), kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None})


def test_a_pickle_pushed_into_redis_is_never_loaded_and_its_task_never_runs(worker, broker, wait_for_job, tmp_path):
    job = queued_job("ops.mark")
    marker = tmp_path / "unpickled"
    key = f"pickle-{job.id}"
    body = pickle.dumps(task_body({"key": key, "hold_seconds": 0, "evil": RunsOnUnpickling(str(marker))}))

    push_raw(broker, str(job.id), "ops.mark", body=body, content_type="application/x-python-serialize")

    dead = wait_for_job(job.id, Job.State.DEAD, timeout=15)
    assert "ContentDisallowed" in dead.error
    assert_gone_for_good(broker, str(job.id), seconds=2)
    assert_never_ran(job.id)
    assert not marker.exists(), "the pickle was loaded: its payload ran in the worker"
    assert broker.get(ops_mark_key(key)) is None, "ops.mark ran"
    assert worker.alive()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/x-yaml", b"- []\n- {key: yaml}\n- {}\n"),
        ("application/x-msgpack", b"\x93\x90\x81\xa3key\xa7msgpack\x80"),
    ],
    ids=["yaml", "msgpack"],
)
def test_other_serializers_pushed_into_redis_are_refused(worker, broker, wait_for_job, content_type, body):
    job = queued_job("ops.mark")

    push_raw(broker, str(job.id), "ops.mark", body=body, content_type=content_type)

    dead = wait_for_job(job.id, Job.State.DEAD, timeout=15)
    assert "ContentDisallowed" in dead.error
    assert content_type in dead.error
    assert_gone_for_good(broker, str(job.id), seconds=1)
    assert_never_ran(job.id)
    assert not list(broker.scan_iter("ops:mark:*"))


# An empty body and kombu's raw "application/data" make Celery's task strategy raise a TypeError,
# which would stop the whole worker (and the restored message the next one): LedgerConsumer drops them.
@pytest.mark.parametrize(
    ("content_type", "encoding", "body"),
    [
        ("application/json", "utf-8", b"{not json"),
        ("application/json", "utf-8", pickle.dumps(task_body({"key": "labelled-json"}))),
        ("application/json", "utf-8", b"\xff\xfe\x00"),
        ("application/json", "utf-8", b""),
        ("application/data", "binary", b"raw bytes"),
    ],
    ids=["truncated", "pickle-labelled-json", "not-utf8", "empty", "raw-data"],
)
def test_an_undecodable_body_pushed_into_redis_is_dropped_and_nothing_runs(
    worker, broker, wait_for_job, content_type, encoding, body
):
    job = queued_job("ops.mark")

    push_raw(broker, str(job.id), "ops.mark", body=body, content_type=content_type, encoding=encoding)

    dead = wait_for_job(job.id, Job.State.DEAD, timeout=15)
    assert dead.error.startswith("undeliverable")
    assert_gone_for_good(broker, str(job.id), seconds=1)
    assert_never_ran(job.id)
    assert not list(broker.scan_iter("ops:mark:*"))
    assert worker.alive()


def test_a_json_message_pushed_the_same_way_does_run(worker, broker, wait_for_job):
    """The control: the same raw push with a JSON body is a message the worker runs."""
    job = queued_job("ops.mark")
    body = json.dumps(task_body({"key": "control"})).encode()

    push_raw(broker, str(job.id), "ops.mark", body=body, content_type="application/json", encoding="utf-8")

    wait_for_job(job.id, Job.State.SUCCEEDED, timeout=15)
    assert broker.get(ops_mark_key("control")) == str(job.id).encode()
