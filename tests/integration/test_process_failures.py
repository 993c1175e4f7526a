"""Workers dying and running out of time, with real worker processes killed by real signals.

Each test checks the end state the ledger must reach: a killed run is recorded as lost and the
job runs again, a job that keeps killing its worker ends dead, and time limits end as failed.
"""

import os
import signal
import time

import psutil
import pytest

from tasks.models import Job, JobAttempt
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.support.processes import ManagedProcess, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = QueueName.DEFAULT


def outcomes(job: Job) -> list[str]:
    return list(job.attempt_history.order_by("number").values_list("outcome", flat=True))


def wait_for_running_attempt(job_id, number: int, timeout: float = 20) -> JobAttempt:
    """Attempt ``number`` of the job has begun (the ledger row exists and is still running)."""
    return wait_until(
        lambda: JobAttempt.objects.filter(job_id=job_id, number=number, outcome=JobAttempt.Outcome.RUNNING).first(),
        timeout=timeout,
        what=f"attempt {number} of job {job_id} to start",
    )


def kill_pool_child(worker: ManagedProcess) -> int:
    """SIGKILL the (only) pool child of a concurrency-1 worker; returns its pid."""
    children = psutil.Process(worker.pid).children()
    assert len(children) == 1, f"expected one pool child of {worker.name}, found {children}"
    child = children[0]
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    return child.pid


def test_a_killed_pool_child_loses_the_attempt_and_the_job_runs_again(start_worker, wait_for_job):
    worker = start_worker(QUEUE, name="victim")
    job = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 4})
    wait_for_running_attempt(job.id, 1)

    killed = kill_pool_child(worker)

    done = wait_for_job(job.id, Job.State.SUCCEEDED, timeout=25)
    assert worker.alive(), "the worker's main process must survive the loss of a child"
    assert killed not in [child.pid for child in psutil.Process(worker.pid).children()]
    assert done.attempts == 2
    assert done.error == ""
    assert done.result == {"worker": worker.name, "queue": QUEUE, "held_seconds": 4}
    assert outcomes(done) == ["lost", "succeeded"]
    lost = done.attempt_history.get(number=1)
    assert lost.error == "the worker was lost during the run"
    assert lost.finished_at is not None
    assert "WorkerLostError" in worker.log()


def test_a_job_that_kills_its_worker_every_time_ends_dead_and_is_not_run_again(start_worker, wait_for_job):
    worker = start_worker(QUEUE, name="poisoned", env={"TASK_MAX_WORKER_LOSSES": "2"})
    job = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 20})

    for number in (1, 2):
        wait_for_running_attempt(job.id, number)
        kill_pool_child(worker)

    dead = wait_for_job(job.id, Job.State.DEAD, timeout=20)
    assert dead.attempts == 2
    assert dead.error == "dead: its worker was lost 2 times while running it (a poison job?)"
    assert dead.finished_at is not None
    assert outcomes(dead) == ["lost", "lost"]
    assert set(dead.attempt_history.values_list("error", flat=True)) == {"the worker was lost during the run"}

    # The worker keeps serving, and the poison job's message was acknowledged, not run again.
    after = job_enqueue(task_name="ops.ping", payload={})
    assert wait_for_job(after.id, Job.State.SUCCEEDED, timeout=15).attempts == 1
    time.sleep(1)
    dead.refresh_from_db()
    assert (dead.state, dead.attempts, outcomes(dead)) == (Job.State.DEAD, 2, ["lost", "lost"])
    assert worker.alive()


SHORT_VISIBILITY = {
    "BROKER_VISIBILITY_TIMEOUT": "6",
    "TASK_TIME_LIMIT": "5",
    "TASK_SOFT_TIME_LIMIT": "4",
    "BROKER_UNACKED_RESTORE_INTERVAL": "1",
}


def test_a_whole_worker_killed_mid_task_hands_the_job_to_another_worker(start_worker, wait_for_job):
    workers = {
        w.name: w
        for w in (
            start_worker(QUEUE, name="first", env=SHORT_VISIBILITY),
            start_worker(QUEUE, name="second", env=SHORT_VISIBILITY),
        )
    }
    job = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 2.5})
    running = wait_for_running_attempt(job.id, 1)
    victim = workers.pop(running.worker)
    (survivor,) = workers.values()

    os.killpg(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    done = wait_for_job(job.id, Job.State.SUCCEEDED, timeout=60)
    print(f"job restored and finished {time.monotonic() - killed_at:.1f}s after the kill")
    assert not victim.alive()
    assert done.attempts == 2
    assert done.worker == survivor.name
    assert done.result["worker"] == survivor.name
    assert outcomes(done) == ["lost", "succeeded"]
    assert list(done.attempt_history.order_by("number").values_list("worker", flat=True)) == [
        victim.name,
        survivor.name,
    ]


def test_the_soft_time_limit_fails_the_job(start_worker, wait_for_job):
    start_worker(
        QUEUE,
        name="soft",
        env={"TASK_SOFT_TIME_LIMIT": "1", "TASK_TIME_LIMIT": "3", "BROKER_VISIBILITY_TIMEOUT": "10"},
    )
    # Enqueued from this process (600/660 s limits): the worker's own limits apply, not the publisher's.
    job_id = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 2}).id

    failed = wait_for_job(job_id, Job.State.FAILED, timeout=15)

    assert failed.attempts == 1
    assert failed.error == "time limit exceeded (soft limit): the task was stopped"
    assert "SoftTimeLimitExceeded" in failed.traceback
    assert failed.finished_at is not None
    assert outcomes(failed) == ["failed"]
    assert failed.attempt_history.get().error == failed.error


def test_the_hard_time_limit_replaces_the_child_and_fails_the_job(start_worker, wait_for_job):
    worker = start_worker(
        QUEUE,
        name="hard",
        env={"TASK_SOFT_TIME_LIMIT": "1", "TASK_TIME_LIMIT": "2", "BROKER_VISIBILITY_TIMEOUT": "10"},
    )
    job = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 4, "ignore_soft_limit": True})

    failed = wait_for_job(job.id, Job.State.FAILED, timeout=20)

    assert failed.attempts == 1
    assert failed.error.startswith("time limit exceeded (hard limit")
    assert outcomes(failed) == ["failed"]
    assert worker.alive()
    follow_up = job_enqueue(task_name="ops.ping")
    wait_for_job(follow_up.id, Job.State.SUCCEEDED, timeout=20)  # a new child serves the queue


def test_an_idempotent_side_effect_happens_once_when_the_worker_dies_after_it(start_worker, wait_for_job, broker):
    worker = start_worker(QUEUE, name="marker")
    job = job_enqueue(task_name="ops.mark", payload={"key": "invoice-9", "hold_seconds": 4})
    wait_until(lambda: broker.get("ops:mark:invoice-9"), timeout=20, what="the side effect")  # done, then holding

    kill_pool_child(worker)

    done = wait_for_job(job.id, Job.State.SUCCEEDED, timeout=25)
    assert done.attempts == 2
    assert outcomes(done) == ["lost", "succeeded"]
    assert done.result == {"key": "invoice-9", "marked_now": False}  # the second run found the mark
    assert broker.get("ops:mark:invoice-9:effects") == b"1"
    assert broker.get("ops:mark:invoice-9").decode() == str(job.id)
