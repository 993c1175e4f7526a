"""The enqueue service: idempotency keys, bulk enqueue, retention of the ledger."""

import json
from contextlib import nullcontext
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from project.celery import app
from tasks.models import Job, Order, OrderStep
from tasks.platform.services.jobs import InvalidOption, InvalidPayload, JobRequest, job_enqueue, job_enqueue_many
from tasks.platform.services.retention import jobs_prune_finished
from tasks.platform.services.schedules import RETENTION_SCHEDULE

pytestmark = pytest.mark.django_db(transaction=True)


def broker_ids(broker, key: str = "default:5") -> list[str]:
    return [json.loads(message)["headers"]["id"] for message in broker.lrange(key, 0, -1)]


def test_same_idempotency_key_returns_the_first_job_and_publishes_once(broker):
    first = job_enqueue(task_name="ops.ping", idempotency_key="order-42")
    again = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 1}, idempotency_key="order-42")
    other_task_same_key = job_enqueue(task_name="ops.ping", idempotency_key="order-43")

    assert first.created and not again.created
    assert again.id == first.id
    assert again.payload == {"hold_seconds": 0, "ignore_soft_limit": False}
    assert other_task_same_key.id != first.id
    assert sorted(broker_ids(broker)) == sorted([str(first.id), str(other_task_same_key.id)])


def test_a_duplicate_key_inside_the_callers_transaction_does_not_spoil_it(broker):
    first = job_enqueue(task_name="ops.ping", idempotency_key="k")
    with transaction.atomic():
        again = job_enqueue(task_name="ops.ping", idempotency_key="k")
        later = job_enqueue(task_name="ops.ping")  # the transaction is still usable
    assert again.id == first.id
    assert Job.objects.filter(pk=later.pk, state=Job.State.QUEUED).exists()


def test_enqueue_many_inserts_and_publishes_thousands_in_order(broker):
    requests = [JobRequest("ops.ping", {"hold_seconds": i % 3}) for i in range(2000)]

    jobs = job_enqueue_many(requests=requests)

    assert [job.payload["hold_seconds"] for job in jobs] == [i % 3 for i in range(2000)]
    assert Job.objects.filter(state=Job.State.QUEUED).count() == 2000
    assert sorted(broker_ids(broker)) == sorted(str(job.id) for job in jobs)


def test_job_ids_are_time_ordered_so_new_rows_extend_the_primary_key(broker):
    first = job_enqueue(task_name="ops.ping")
    batch = job_enqueue_many(requests=[JobRequest("ops.ping")] * 3)
    last = job_enqueue(task_name="ops.ping")

    ids = [first.id, *(job.id for job in batch), last.id]
    assert {job_id.version for job_id in ids} == {7} and Job().id.version == 7
    assert ids == sorted(ids)
    assert list(Job.objects.order_by("pk").values_list("pk", flat=True)) == ids  # as the database orders them


def test_enqueue_many_resolves_repeated_keys_to_one_job_each(broker):
    earlier = job_enqueue(task_name="ops.ping", idempotency_key="a")
    jobs = job_enqueue_many(
        requests=[
            JobRequest("ops.ping", idempotency_key="a"),
            JobRequest("ops.ping", idempotency_key="b"),
            JobRequest("ops.ping", idempotency_key="b"),
            JobRequest("ops.ping"),
        ]
    )

    assert jobs[0].id == earlier.id and not jobs[0].created
    assert jobs[1].id == jobs[2].id
    assert Job.objects.count() == 3
    assert len(broker_ids(broker)) == 3


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (JobRequest("ops.ping", {"hold_seconds": -1}), InvalidPayload),
        (JobRequest("ops.ping", delay=-5), InvalidOption),
        (JobRequest("ops.ping", delay=timedelta(days=31)), InvalidOption),
        (JobRequest("ops.ping", delay=float("nan")), InvalidOption),
        (JobRequest("ops.ping", delay=1e300), InvalidOption),
        (JobRequest("ops.ping", idempotency_key=""), InvalidOption),
    ],
)
def test_enqueue_many_is_all_or_nothing(broker, bad, error):
    with pytest.raises(error) as raised:
        job_enqueue_many(requests=[JobRequest("ops.ping"), bad])

    assert raised.value.details["index"] == 1
    assert not Job.objects.exists()
    assert broker_ids(broker) == []


@pytest.mark.parametrize("in_transaction", [True, False], ids=["callers-transaction", "its-own"])
def test_an_invalid_job_after_rows_already_sent_takes_them_all_back(broker, in_transaction):
    # Rows go to PostgreSQL as they are built: 1,500 of them are on the server (past psycopg's
    # COPY buffer) when the last one fails validation. The connection (and the caller's
    # transaction) stays usable.
    requests = [JobRequest("ops.ping")] * 1500 + [JobRequest("ops.ping", {"hold_seconds": -1})]
    with transaction.atomic() if in_transaction else nullcontext():
        with pytest.raises(InvalidPayload) as raised:
            job_enqueue_many(requests=requests)
        after = job_enqueue(task_name="ops.ping")

    assert raised.value.details["index"] == 1500
    assert list(Job.objects.values_list("pk", flat=True)) == [after.pk]
    assert broker_ids(broker) == [str(after.pk)]


def test_retention_prunes_old_succeeded_jobs_only():
    # Each job created when it finished: a job finishes after it is created (retention relies on it).
    old = timezone.now() - timedelta(days=31)
    recent = timezone.now() - timedelta(days=1)
    kept = [
        Job.objects.create(
            task_name="ops.ping", queue="default", state=Job.State.SUCCEEDED, created_at=recent, finished_at=recent
        ),
        Job.objects.create(
            task_name="ops.ping", queue="default", state=Job.State.FAILED, created_at=old, finished_at=old
        ),
        Job.objects.create(
            task_name="ops.ping", queue="default", state=Job.State.DEAD, created_at=old, finished_at=old
        ),
    ]
    # An order's workflow jobs are its history: they stay while the order does.
    customer = get_user_model().objects.create_user("customer")
    order = Order.objects.create(customer=customer, email="c@example.com", payment_token="tok_ok")
    step_job = Job.objects.create(
        task_name="orders.validate_payment", queue="critical", state="succeeded", created_at=old, finished_at=old
    )
    OrderStep.objects.create(order=order, name="validate_payment", position=1, job=step_job)
    kept.append(step_job)
    for _ in range(3):
        job = Job.objects.create(
            task_name="ops.ping", queue="default", state=Job.State.SUCCEEDED, created_at=old, finished_at=old
        )
        job.attempt_history.create(number=1, started_at=old, outcome="succeeded")

    # Jobs, not their attempts; failed and dead ones have a longer window (tests/integration/test_retention.py).
    deleted = jobs_prune_finished(succeeded_older_than=timedelta(days=30), failed_older_than=timedelta(days=90))
    assert deleted == {"succeeded": 3, "failed": 0, "dead": 0, "cancelled": 0}
    assert set(Job.objects.values_list("pk", flat=True)) == {job.pk for job in kept}


def test_retention_schedule_is_seeded_into_beat():
    schedule = PeriodicTask.objects.get(name=RETENTION_SCHEDULE)

    assert schedule.enabled
    assert schedule.crontab is not None
    assert schedule.task in app.tasks
