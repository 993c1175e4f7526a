"""What a job sent alone costs the database over its whole life: the issue's goal is at most four
statements (its insert with its outbox row, and that row's deletion once the message is out, on
the enqueue's side; its start and its finish on the worker's). A process also reads the pauses at
most once a second (tasks.platform.engine.flow): not a cost of any one job."""

import time

import pytest
from django.conf import settings
from django.db import connection

from bench.statement_counter import COUNTER_KEY, counted_env
from tasks.models import Job
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = 200


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="the goal is PostgreSQL's: on SQLite the ledger takes the ORM's longer path",
)
def test_a_job_sent_alone_costs_at_most_four_statements_over_its_whole_life(start_worker, broker):
    """Enqueue here (counted by an execute wrapper), run and finish in the worker (counted by its
    statement counter in Redis)."""
    enqueued: list[str] = []

    def count(execute, sql, params, many, context):
        enqueued.append(sql)
        return execute(sql, params, many, context)

    started = time.monotonic()
    with connection.execute_wrapper(count):
        jobs = [job_enqueue(task_name="ops.noop") for _ in range(JOBS)]
    pauses_read = sum(1 for sql in enqueued if '"tasks_pause"' in sql)
    assert pauses_read <= 1 + time.monotonic() - started
    start_worker(QueueName.DEFAULT, name="counted", env=counted_env(settings.REDIS_URL))
    ids = [job.pk for job in jobs]
    done = Job.objects.filter(pk__in=ids, state=Job.State.SUCCEEDED)
    wait_until(lambda: done.count() == JOBS, timeout=60, what=f"{JOBS} jobs to succeed")

    enqueued_per_job = len(enqueued) - pauses_read
    statements = enqueued_per_job + int(broker.get(COUNTER_KEY) or 0)
    print(f"{statements} statements for {JOBS} jobs ({enqueued_per_job} to enqueue, {pauses_read} pause reads)")
    assert statements / JOBS <= 4
    assert enqueued_per_job == 2 * JOBS  # the insert with its outbox row, and that row's deletion
