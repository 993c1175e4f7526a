"""Heartbeats and recovery in seconds, with real workers, a real relay and real signals.

A worker killed whole (main process and pool) or frozen leaves its jobs started: the relay sees
that its heartbeat stopped and runs them again, long before Redis's visibility timeout would bring
their messages back. A job whose worker is alive runs once, however slow, and a duplicate message
of it is dropped.
"""

import json
import os
import signal
import time

import pytest
import redis
from django.conf import settings

from project.celery import app
from tasks.models import Job, JobAttempt
from tasks.platform.engine import engine
from tasks.platform.queues import QueueName, worker_key
from tasks.platform.services.jobs import job_enqueue
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = QueueName.DEFAULT
#: a worker is lost after 3 s without a heartbeat: the tests that do not time the default
LOST_AFTER_3S = {"WORKER_LOST_AFTER": "3"}


def outcomes(job: Job) -> list[tuple[int, str, str]]:
    """(number, outcome, worker) of each attempt."""
    return list(job.attempt_history.order_by("number").values_list("number", "outcome", "worker"))


def wait_for_running_attempt(job_id, number: int, timeout: float = 20) -> JobAttempt:
    return wait_until(
        lambda: JobAttempt.objects.filter(job_id=job_id, number=number, outcome=JobAttempt.Outcome.RUNNING).first(),
        timeout=timeout,
        what=f"attempt {number} of job {job_id} to start",
    )


def test_a_worker_killed_whole_has_its_jobs_run_again_within_a_minute(start_worker, start_relay, wait_for_job):
    """Default settings: WORKER_LOST_AFTER 30 s, and the visibility timeout left at 3600 s."""
    victim = start_worker(QUEUE, name="victim", concurrency=2)
    assert "BROKER_VISIBILITY_TIMEOUT" not in victim.env
    assert app.conf.broker_transport_options["visibility_timeout"] == 3600
    jobs = [job_enqueue(task_name="ops.ping", payload={"hold_seconds": 5}).id for _ in range(2)]
    for job_id in jobs:
        wait_for_running_attempt(job_id, 1)
    start_relay()

    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = start_worker(QUEUE, name="survivor", concurrency=2)

    for job_id in jobs:
        done = wait_for_job(job_id, Job.State.SUCCEEDED, timeout=max(1.0, 60 - (time.monotonic() - killed_at)))
        assert done.worker == survivor.name
        assert outcomes(done) == [(1, "lost", victim.name), (2, "succeeded", survivor.name)]
        lost = done.attempt_history.get(number=1)
        assert lost.error == f"its worker {victim.name} stopped answering (no heartbeat for 30 s)"
    print(f"both jobs ran again and succeeded {time.monotonic() - killed_at:.1f}s after the kill")


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_slow_job_of_a_live_worker_runs_once(pool, start_worker, start_relay, wait_for_job):
    worker = start_worker(QUEUE, name=f"slow-{pool}", pool=pool, env=LOST_AFTER_3S)
    start_relay(env=LOST_AFTER_3S)
    job_id = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 8}).id
    wait_for_running_attempt(job_id, 1)

    # The heartbeat goes on while the task holds the worker (a solo pool's only thread runs it).
    client = redis.Redis.from_url(settings.REDIS_URL)
    first = json.loads(client.get(worker_key(worker.name)))
    time.sleep(2.5)
    later = json.loads(client.get(worker_key(worker.name)))
    assert later["beat"] > first["beat"]
    assert [job for job, _ in later["runs"]] == [str(job_id)]

    done = wait_for_job(job_id, Job.State.SUCCEEDED, timeout=30)
    assert done.attempts == 1
    assert outcomes(done) == [(1, "succeeded", worker.name)]


def test_a_duplicate_message_of_a_running_job_is_dropped(start_worker, wait_for_job):
    workers = {w.name: w for w in (start_worker(QUEUE, name="first"), start_worker(QUEUE, name="second"))}
    job_id = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 6}).id
    running = wait_for_running_attempt(job_id, 1)

    engine().publish([Job.objects.get(pk=job_id)])  # a second message, as a repeated publish sends one
    idle = next(w for name, w in workers.items() if name != running.worker)
    wait_until(lambda: f"ops.ping[{job_id}] received" in idle.log(), timeout=5, what="the duplicate's delivery")

    done = wait_for_job(job_id, Job.State.SUCCEEDED, timeout=20)
    assert done.attempts == 1
    assert outcomes(done) == [(1, "succeeded", running.worker)]


def test_a_frozen_worker_has_its_job_run_again_and_the_lost_attempt_recorded(start_worker, start_relay, wait_for_job):
    frozen = start_worker(QUEUE, name="frozen", env=LOST_AFTER_3S)
    job_id = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 4}).id
    wait_for_running_attempt(job_id, 1)

    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        start_relay(env=LOST_AFTER_3S)
        survivor = start_worker(QUEUE, name="survivor", env=LOST_AFTER_3S)
        done = wait_for_job(job_id, Job.State.SUCCEEDED, timeout=30)
    finally:
        os.killpg(frozen.pid, signal.SIGKILL)

    assert outcomes(done) == [(1, "lost", frozen.name), (2, "succeeded", survivor.name)]
    lost = done.attempt_history.get(number=1)
    assert lost.error == f"its worker {frozen.name} stopped answering (no heartbeat for 3 s)"
    assert lost.finished_at is not None
