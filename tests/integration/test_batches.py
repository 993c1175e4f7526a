"""Multi-job messages: short jobs of one enqueue_many travel many to a message, their ledger is
written in bulk, and nothing is lost when the worker running a batch dies."""

import json
import os
import signal
import time

import pytest

from tasks.models import Job, JobAttempt
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import JobRequest, job_enqueue_group, job_enqueue_many
from tasks.platform.services.recovery import job_cancel, job_retry
from tests.integration.test_process_failures import SHORT_VISIBILITY, kill_pool_child
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = QueueName.DEFAULT
FAST_RETRIES = {"TASK_BACKOFF_BASE_SECONDS": "0", "TASK_MAX_ATTEMPTS": "3"}


def noops(count: int, io_ms: float = 0) -> list[JobRequest]:
    return [JobRequest("ops.noop", {"io_ms": io_ms}) for _ in range(count)]


def waiting_messages(broker) -> int:
    """Messages waiting in the default queue (one Redis list per priority step)."""
    return sum(broker.llen(key) for key in broker.scan_iter(f"{QUEUE}*") if broker.type(key) == b"list")


def wait_all(jobs: list[Job], state: str, timeout: float = 60) -> list[Job]:
    ids = [job.pk for job in jobs]
    wait_until(
        lambda: Job.objects.filter(pk__in=ids, state=state).count() == len(ids),
        timeout=timeout,
        what=f"{len(ids)} jobs to be {state}",
    )
    return list(Job.objects.filter(pk__in=ids))


def wait_for_any(jobs: list[Job], state: str, *, what: str) -> None:
    ids = [job.pk for job in jobs]
    wait_until(lambda: Job.objects.filter(pk__in=ids, state=state).exists(), timeout=20, what=what)


def outcomes(job: Job) -> list[str]:
    return list(job.attempt_history.order_by("number").values_list("outcome", flat=True))


def test_short_jobs_travel_a_hundred_to_a_message_and_each_is_recorded(broker, start_worker):
    jobs = job_enqueue_many(requests=noops(250))

    assert waiting_messages(broker) == 3  # 100 + 100 + 50
    assert {job.state for job in Job.objects.filter(pk__in=[job.pk for job in jobs])} == {Job.State.QUEUED}
    start_worker(QUEUE, name="batches")

    done = wait_all(jobs, Job.State.SUCCEEDED)
    assert all(job.attempts == 1 and job.started_at <= job.finished_at for job in done)
    assert all(job.worker.startswith("batches@") for job in done)
    attempts = JobAttempt.objects.filter(job__in=done)
    assert attempts.count() == 250
    assert set(attempts.values_list("outcome", flat=True)) == {JobAttempt.Outcome.SUCCEEDED}


def test_a_batch_message_shows_flower_its_task_size_and_first_and_last_jobs(broker):
    jobs = job_enqueue_many(requests=noops(3))

    (key,) = [key for key in broker.scan_iter(f"{QUEUE}*") if broker.type(key) == b"list"]
    headers = json.loads(broker.lindex(key, 0))["headers"]
    assert headers["kwargsrepr"] == f"{{'task': 'ops.noop', 'jobs': '3 jobs, {jobs[0].pk} ... {jobs[2].pk}'}}"
    assert headers["argsrepr"] == "()"


def test_a_job_cancelled_before_its_batch_ran_is_skipped(start_worker):
    jobs = job_enqueue_many(requests=noops(3))
    job_cancel(job_id=jobs[1].pk, via="api")
    start_worker(QUEUE, name="batches")

    wait_all([jobs[0], jobs[2]], Job.State.SUCCEEDED)
    cancelled = Job.objects.get(pk=jobs[1].pk)
    assert cancelled.state == Job.State.CANCELLED
    assert cancelled.attempts == 0


def test_a_failing_job_in_a_batch_retries_alone_while_the_others_succeed(start_worker, start_relay, wait_for_job):
    start_worker(QUEUE, name="batches", env=FAST_RETRIES)
    start_relay(env=FAST_RETRIES)
    flaky, doomed, fine = job_enqueue_many(
        requests=[
            JobRequest("ops.fail", {"mode": "transient", "succeed_on_attempt": 2}),
            JobRequest("ops.fail", {"mode": "permanent"}),
            JobRequest("ops.fail", {"mode": "transient", "succeed_on_attempt": 1}),
        ]
    )

    assert outcomes(wait_for_job(flaky.pk, Job.State.SUCCEEDED)) == ["failed", "succeeded"]
    assert outcomes(wait_for_job(doomed.pk, Job.State.DEAD)) == ["failed"]
    assert outcomes(wait_for_job(fine.pk, Job.State.SUCCEEDED)) == ["succeeded"]
    assert Job.objects.get(pk=flaky.pk).result == {"succeeded_on_attempt": 2}


def assert_every_job_succeeded_once_recorded(jobs: list[Job]) -> list[list[str]]:
    """All succeeded; each job's history is one success, after at most one lost attempt."""
    done = wait_all(jobs, Job.State.SUCCEEDED, timeout=90)
    histories = [outcomes(job) for job in done]
    assert {tuple(history) for history in histories} <= {("succeeded",), ("lost", "succeeded")}
    assert not JobAttempt.objects.filter(job__in=done, outcome=JobAttempt.Outcome.RUNNING).exists()
    return histories


def test_a_pool_child_killed_mid_batch_loses_no_job(start_worker):
    # 2 batches of 100 jobs of 30 ms: the first is killed after about 2 s, after its first flush.
    worker = start_worker(QUEUE, name="victim")
    jobs = job_enqueue_many(requests=noops(200, io_ms=30))
    wait_for_any(jobs, Job.State.SUCCEEDED, what="the first batch's first successes")
    time.sleep(0.5)

    kill_pool_child(worker)

    histories = assert_every_job_succeeded_once_recorded(jobs)
    assert ["succeeded"] in histories, "successes written before the kill stay written"
    assert ["lost", "succeeded"] in histories, "jobs the killed batch had started run again"


def test_a_whole_worker_killed_mid_batch_hands_its_jobs_to_another_worker(start_worker):
    victim = start_worker(QUEUE, name="first", env=SHORT_VISIBILITY)
    jobs = job_enqueue_many(requests=noops(100, io_ms=50))
    wait_for_any(jobs, Job.State.STARTED, what="the batch to start")
    time.sleep(1.5)
    os.killpg(victim.pid, signal.SIGKILL)
    start_worker(QUEUE, name="second", env=SHORT_VISIBILITY)

    assert_every_job_succeeded_once_recorded(jobs)
    assert Job.objects.filter(pk__in=[job.pk for job in jobs], worker__startswith="second@").exists()


def test_a_group_callback_runs_once_every_member_succeeded(start_worker):
    members, callback = job_enqueue_group(requests=noops(150), callback=JobRequest("ops.noop", {}))
    assert Job.objects.get(pk=callback.pk).state == Job.State.WAITING
    start_worker(QUEUE, name="batches")

    done = wait_all([callback], Job.State.SUCCEEDED)[0]
    finished = wait_all(members, Job.State.SUCCEEDED)
    assert done.started_at >= max(job.finished_at for job in finished)
    assert done.waiting_for == 0


def test_a_member_that_does_not_succeed_cancels_the_callback_until_it_is_retried(start_worker, wait_for_job):
    start_worker(QUEUE, name="batches", env=FAST_RETRIES)
    members, callback = job_enqueue_group(
        requests=[
            *noops(2),
            JobRequest("ops.fail", {"mode": "transient", "succeed_on_attempt": 2}, max_attempts=1),
        ],
        callback=JobRequest("ops.noop", {}),
    )
    wait_for_job(members[2].pk, Job.State.DEAD)
    wait_for_job(callback.pk, Job.State.CANCELLED)

    job_retry(job_id=members[2].pk, via="api")

    assert wait_for_job(members[2].pk, Job.State.SUCCEEDED).attempts == 2
    assert wait_for_job(callback.pk, Job.State.SUCCEEDED).attempts == 1


def test_a_batched_job_costs_a_fraction_of_a_statement_over_its_whole_life(start_worker, broker):
    """Enqueue in this process (counted here), run and finish in the worker (counted by the
    worker's statement counter in Redis): a whole life of a batched no-op job."""
    from django.conf import settings
    from django.db import connection

    from bench.statement_counter import COUNTER_KEY, counted_env

    enqueued: list[str] = []

    def count(execute, sql, params, many, context):
        enqueued.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(count):
        jobs = job_enqueue_many(requests=noops(1000))
    start_worker(QUEUE, name="counted", env=counted_env(settings.REDIS_URL))
    wait_all(jobs, Job.State.SUCCEEDED)

    statements = len(enqueued) + int(broker.get(COUNTER_KEY) or 0)
    print(f"{statements} statements for 1000 jobs ({len(enqueued)} to enqueue)")
    assert statements / len(jobs) <= 0.2  # about 7 a message of 100 jobs, and the bulk insert
