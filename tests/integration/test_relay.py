"""No job is lost between the database and the broker: the relay publishes what enqueue could not."""

import json
from contextlib import nullcontext
from datetime import timedelta

import pytest
import requests
from django.db import transaction
from django.utils import timezone

from tasks.models import ApiToken, Job, JobOutbox
from tasks.platform.engine import engine
from tasks.platform.engine.orm import PUBLISH_CLAIM
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import JobRequest, job_enqueue, job_enqueue_many
from tests.fixtures import create_operator
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def unpublished(queue: str = "default", *, claimed_at=None, **fields) -> Job:
    """A committed job whose message is owed: its publish failed (no claim) or its publisher is at
    it or died (``claimed_at``)."""
    fields.setdefault("state", Job.State.PENDING if claimed_at is None else Job.State.QUEUED)
    job = Job.objects.create(task_name="ops.ping", queue=queue, payload={"hold_seconds": 0}, **fields)
    JobOutbox.objects.create(job=job, claimed_at=claimed_at)
    return job


def owed(*jobs: Job) -> set:
    """Those of the jobs whose messages are still owed."""
    return set(JobOutbox.objects.filter(job__in=jobs).values_list("job_id", flat=True))


def test_job_enqueued_while_redis_is_down_runs_once_redis_is_back(own_redis, start_web, start_relay, start_worker):
    env = {"REDIS_URL": own_redis.url}
    _, token = ApiToken.issue(create_operator("dev", password="unused-pass-123"))
    _, web = start_web(env)
    start_relay(env=env)
    own_redis.stop()

    response = requests.post(
        f"{web}/api/jobs", json={"task": "ops.ping"}, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert response.status_code == 503
    job_id = response.json()["id"]
    assert Job.objects.get(pk=job_id).state == Job.State.PENDING

    own_redis.start_again()
    start_worker(QueueName.DEFAULT, env=env)

    done = wait_until(
        lambda: Job.objects.filter(pk=job_id, state=Job.State.SUCCEEDED).first(), timeout=30, what="the relayed job"
    )
    assert done.attempts == 1
    assert owed(done) == set()


def test_relay_publishes_a_row_whose_publisher_died_and_leaves_a_fresh_lease_alone(start_relay, broker):
    orphan = unpublished(claimed_at=timezone.now() - PUBLISH_CLAIM - timedelta(seconds=1))
    in_flight = unpublished(claimed_at=timezone.now())

    assert start_relay("--once").popen.wait(60) == 0

    orphan.refresh_from_db()
    in_flight.refresh_from_db()
    assert orphan.state == Job.State.QUEUED
    assert owed(orphan, in_flight) == {in_flight.pk}
    assert broker.llen("default:5") == 1


def test_two_relays_publish_each_job_exactly_once(start_relay, broker):
    jobs = [unpublished() for _ in range(300)]

    relays = [start_relay("--once"), start_relay("--once")]
    assert [relay.popen.wait(60) for relay in relays] == [0, 0]

    assert broker.llen("default:5") == len(jobs)
    assert Job.objects.filter(state=Job.State.QUEUED).count() == len(jobs)
    published = {json.loads(message)["headers"]["id"] for message in broker.lrange("default:5", 0, -1)}
    assert published == {str(job.id) for job in jobs}


def test_delayed_job_waits_in_the_ledger_then_runs_when_due(start_relay, start_worker, wait_for_job):
    start_worker(QueueName.CRITICAL)
    start_relay()

    job = job_enqueue(task_name="ops.ping", queue=QueueName.CRITICAL, delay=2)

    assert job.state == Job.State.SCHEDULED
    job.refresh_from_db()
    assert job.state == Job.State.SCHEDULED
    done = wait_for_job(job.id, Job.State.SUCCEEDED)
    assert done.started_at >= done.run_at
    assert done.queued_at >= done.run_at
    assert done.attempts == 1


def test_a_running_relay_sends_a_delayed_job_at_its_time_not_at_its_next_pass(start_relay, broker):
    start_relay(env={"RELAY_INTERVAL_SECONDS": "4"})

    # Due after the relay's next pass, which sees it: sent when due, not at the pass after (up to 4 s late).
    job = job_enqueue(task_name="ops.ping", queue=QueueName.CRITICAL, delay=5)

    wait_until(lambda: Job.objects.get(pk=job.pk).state == Job.State.QUEUED, timeout=15, what="the delayed job sent")
    sent = Job.objects.get(pk=job.pk)
    assert timedelta(0) <= sent.queued_at - sent.run_at < timedelta(seconds=0.5)
    wait_until(lambda: broker.llen("critical:5") == 1, timeout=5, what="its message")


@pytest.mark.parametrize("in_transaction", [False, True], ids=["alone", "in-a-transaction"])
def test_enqueue_returns_its_job_published_and_queued_with_no_claim_left(broker, in_transaction):
    with transaction.atomic() if in_transaction else nullcontext():
        job = job_enqueue(task_name="ops.ping")
        if in_transaction:
            assert broker.llen("default:5") == 0  # nothing is sent before the commit

    row = Job.objects.get(pk=job.pk)
    assert (row.state, owed(row), broker.llen("default:5")) == (Job.State.QUEUED, set(), 1)
    assert job.state == Job.State.QUEUED


@pytest.mark.parametrize("in_transaction", [False, True], ids=["alone", "in-a-transaction"])
def test_enqueue_many_leaves_no_claim_once_it_returns(broker, in_transaction):
    with transaction.atomic() if in_transaction else nullcontext():
        jobs = job_enqueue_many(requests=[JobRequest("ops.ping")] * 3)

    assert broker.llen("default:5") == 3
    rows = Job.objects.filter(pk__in=[job.pk for job in jobs])
    assert set(rows.values_list("state", flat=True)) == {Job.State.QUEUED}
    assert owed(*jobs) == set()


def test_a_rolled_back_enqueue_publishes_nothing(broker):
    with transaction.atomic():
        job = job_enqueue(task_name="ops.ping")
        transaction.set_rollback(True)

    assert broker.llen("default:5") == 0
    assert not Job.objects.filter(pk=job.pk).exists()


@pytest.mark.parametrize("count", [1, 3])
def test_a_publish_leaves_a_job_a_worker_already_failed_back_to_retrying(count, broker):
    """A fast worker can run a relayed retry and fail it again before the relay's publish returns:
    that next retry is not published yet, so the publish must leave it retrying for the relay."""
    retry_at = timezone.now() + timedelta(seconds=5)
    jobs = [unpublished(claimed_at=timezone.now(), state=Job.State.RETRYING, run_at=retry_at) for _ in range(count)]

    assert engine().publish(jobs) is True

    rows = Job.objects.filter(pk__in=[job.pk for job in jobs])
    assert set(rows.values_list("state", "run_at")) == {(Job.State.RETRYING, retry_at)}
    assert owed(*jobs) == set()
