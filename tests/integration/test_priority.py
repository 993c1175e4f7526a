"""Queues keep urgent work moving: separate pools per queue, priorities within a queue."""

from datetime import timedelta

import pytest

from tasks.models import Job
from tasks.platform.queues import PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName
from tasks.platform.services.jobs import job_enqueue

pytestmark = pytest.mark.django_db(transaction=True)


def test_critical_job_starts_promptly_behind_a_bulk_backlog(start_worker, wait_for_job):
    start_worker(QueueName.BULK)
    start_worker(QueueName.CRITICAL)
    backlog = [job_enqueue(task_name="ops.ping", payload={"hold_seconds": 1}, queue=QueueName.BULK) for _ in range(20)]
    wait_for_job(backlog[0].id, Job.State.STARTED, Job.State.SUCCEEDED)

    urgent = job_enqueue(task_name="ops.ping", queue=QueueName.CRITICAL)
    done = wait_for_job(urgent.id, Job.State.SUCCEEDED)

    # Generous bound for a loaded CI machine; the real figure is in bench/scenarios/latency.py.
    assert done.started_at - done.created_at < timedelta(seconds=5)
    still_waiting = Job.objects.filter(pk__in=[j.id for j in backlog], state=Job.State.QUEUED).count()
    assert still_waiting >= 10


def test_within_a_queue_the_most_urgent_priority_runs_first(start_worker, wait_for_job):
    lowest = [job_enqueue(task_name="ops.ping", priority=PRIORITY_LOWEST) for _ in range(4)]
    default = [job_enqueue(task_name="ops.ping") for _ in range(4)]
    highest = job_enqueue(task_name="ops.ping", priority=PRIORITY_HIGHEST)

    start_worker(QueueName.DEFAULT)
    for job in [*lowest, *default, highest]:
        wait_for_job(job.id, Job.State.SUCCEEDED)

    order = list(Job.objects.order_by("started_at").values_list("priority", flat=True))
    assert order == [PRIORITY_HIGHEST] + [5] * 4 + [PRIORITY_LOWEST] * 4
