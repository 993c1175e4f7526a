"""Recovery of started jobs whose run stopped, and the duplicate guard: the relay's ``recover_lost``
as tasks.platform.services.relay.jobs_recover drives it, and ``begin_attempt`` / ``claim_batch`` of
a job found started, with workers' heartbeats written to the real Redis as a worker writes them."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.utils import timezone

from tasks.models import Job
from tasks.platform.queues import worker_key
from tasks.platform.selectors.broker_messages import MARK_KEY
from tasks.platform.selectors.liveness import runs_lost
from tests.fast.conftest import (
    WORKER,
    ago,
    attempt_row,
    attempts,
    claim,
    claimed,
    clock,
    enqueue,
    noops,
    row,
    run,
    sent,
)

pytestmark = pytest.mark.django_db

State = Job.State

#: a pid no process of this test has
ELSEWHERE = 2**22 + 1


class Heartbeats:
    """Workers' heartbeats, as tasks.platform.signals writes them."""

    def __init__(self) -> None:
        self.client = redis.Redis.from_url(settings.REDIS_URL)
        self.workers: set[str] = set()

    def send(self, worker: str, runs: list[tuple[str, int]], *, beat: int = 0, age: int = 0) -> None:
        """A heartbeat written ``age`` seconds ago."""
        self.workers.add(worker)
        heartbeat = json.dumps({"beat": beat, "ttl": 60, "runs": runs})
        self.client.set(worker_key(worker), heartbeat, ex=60 - age)

    @contextmanager
    def beating(self, worker: str, runs: list[tuple[str, int]], *, after: float = 0.0) -> Iterator[None]:
        """A live worker: a heartbeat every 50 ms, the first ``after`` seconds from now (at once,
        before the block runs, by default)."""
        stopped = threading.Event()
        if not after:
            self.send(worker, runs)

        def beat() -> None:
            number = 1
            if stopped.wait(after):
                return
            while True:
                self.send(worker, runs, beat=number)
                number += 1
                if stopped.wait(0.05):
                    return

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stopped.set()
            thread.join()

    def forget(self) -> None:
        if self.workers:
            self.client.delete(*(worker_key(worker) for worker in self.workers))


@pytest.fixture
def heartbeats() -> Iterator[Heartbeats]:
    beats = Heartbeats()
    yield beats
    beats.forget()


def started(engine, *, worker: str = "gone@host", seconds_ago: float = 60) -> Job:
    """A job whose attempt 1 ``worker`` began ``seconds_ago``."""
    job = enqueue()
    run(engine, job, worker=worker)
    Job.objects.filter(pk=job.pk).update(started_at=ago(seconds_ago))
    return job


def heartbeats_kept(*, seconds: float = 3600) -> None:
    """Redis has kept its keys ``seconds``: the broker's mark, as a relay writes it, is that old."""
    redis.Redis.from_url(settings.REDIS_URL).set(MARK_KEY, f"{int(time.time() - seconds)}:kept")


def sweep(engine, *, max_worker_losses: int | None = None) -> int:
    """One recovery pass of the relay, on this engine."""
    heartbeats_kept()
    lost = runs_lost(started_before=ago(settings.WORKER_LOST_AFTER), limit=100)
    return engine.recover_lost(runs=lost, max_worker_losses=max_worker_losses or settings.TASK_MAX_WORKER_LOSSES)


# -- recover_lost -------------------------------------------------------------------------------


def test_a_job_whose_worker_stopped_answering_is_published_again_with_its_attempt_lost(
    engine, broker, django_capture_on_commit_callbacks
):
    job = started(engine)
    with django_capture_on_commit_callbacks(execute=True):
        with clock() as during:
            assert sweep(engine) == 1
        assert (row(job).state, claimed(job) in during) == (State.QUEUED, True)
        assert sent(broker) == []  # published once committed

    assert attempts(job) == [(1, "lost")]
    lost = attempt_row(job, 1)
    assert lost.error == f"its worker gone@host stopped answering (no heartbeat for {settings.WORKER_LOST_AFTER} s)"
    assert lost.finished_at in during
    assert sent(broker) == [("ops.ping", str(job.pk))]
    assert run(engine, job).number == 2
    assert attempts(job) == [(1, "lost"), (2, "running")]


def test_a_job_lost_max_worker_losses_times_is_dead(engine, finished):
    job = enqueue()
    run(engine, job, worker="gone@host")
    run(engine, job, worker="gone@host")  # delivered again, its worker silent: attempt 1 lost
    Job.objects.filter(pk=job.pk).update(started_at=ago(60))

    with clock() as during:
        assert sweep(engine, max_worker_losses=2) == 1

    stored = row(job)
    assert (stored.state, stored.attempts) == (State.DEAD, 2)
    assert stored.error == "dead: its worker was lost 2 times while running it (a poison job?)"
    assert stored.finished_at in during
    assert attempts(job) == [(1, "lost"), (2, "lost")]
    assert attempt_row(job, 2).error.startswith("its worker gone@host stopped answering")
    assert finished == [(str(job.pk), State.DEAD)]


def test_a_job_its_live_worker_runs_is_left_alone(engine, heartbeats):
    job = started(engine, worker="alive@host")
    heartbeats.send("alive@host", [(str(job.pk), ELSEWHERE)])

    assert sweep(engine) == 0

    stored = row(job)
    assert (stored.state, stored.attempts, stored.worker) == (State.STARTED, 1, "alive@host")
    assert attempts(job) == [(1, "running")]


def test_a_job_its_live_worker_no_longer_runs_is_recovered(engine, heartbeats):
    job = started(engine, worker="alive@host")
    heartbeats.send("alive@host", [])

    assert sweep(engine) == 1

    assert row(job).state == State.QUEUED
    assert attempts(job) == [(1, "lost")]
    assert attempt_row(job, 1).error == "its worker alive@host answers but no longer runs it"


def test_a_job_started_too_recently_is_not_judged(engine):
    job = started(engine, seconds_ago=settings.WORKER_LOST_AFTER / 2)

    assert sweep(engine) == 0
    assert (row(job).state, attempts(job)) == (State.STARTED, [(1, "running")])


def test_a_job_that_started_again_since_it_was_found_is_left_as_it_is(engine):
    job = started(engine)
    heartbeats_kept()
    lost = runs_lost(started_before=timezone.now() - timedelta(seconds=1), limit=100)
    assert set(lost) == {str(job.pk)}
    run(engine, job)  # its message came back meanwhile: attempt 1 lost, attempt 2 runs

    assert engine.recover_lost(runs=lost, max_worker_losses=3) == 0
    assert (row(job).state, attempts(job)) == (State.STARTED, [(1, "lost"), (2, "running")])


def test_no_worker_is_judged_silent_while_redis_may_just_have_lost_every_heartbeat(engine):
    job = started(engine)
    judged = lambda: set(runs_lost(started_before=ago(settings.WORKER_LOST_AFTER), limit=100))  # noqa: E731

    redis.Redis.from_url(settings.REDIS_URL).delete(MARK_KEY)  # a FLUSHDB took the mark with every heartbeat
    assert judged() == set()
    heartbeats_kept(seconds=settings.WORKER_LOST_AFTER - 5)  # a relay wrote it again since
    assert judged() == set()
    heartbeats_kept(seconds=settings.WORKER_LOST_AFTER + 1)  # long enough for any live worker's heartbeat
    assert judged() == {str(job.pk)}


# -- the duplicate guard ------------------------------------------------------------------------


def test_a_duplicate_message_of_a_job_whose_run_goes_on_is_dropped(engine, heartbeats):
    job = enqueue()
    first = run(engine, job, worker="busy@host")
    with heartbeats.beating("busy@host", [(str(job.pk), ELSEWHERE)]):
        assert run(engine, job) is None  # on another worker
        assert run(engine, job, worker="busy@host") is None  # on another process of its own worker

    stored = row(job)
    assert (stored.state, stored.attempts, stored.worker) == (State.STARTED, 1, "busy@host")
    assert attempts(job) == [(1, "running")]
    engine.succeed(job_id=str(job.pk), attempt=first, result="once")
    assert (row(job).state, attempts(job)) == (State.SUCCEEDED, [(1, "succeeded")])


def test_a_message_back_from_a_lost_process_of_a_live_worker_runs_the_job_again(engine, heartbeats):
    """A pool child killed mid-run: its worker lives, and its next heartbeat lists the job only
    under the process its message went to again (this one)."""
    job = enqueue()
    run(engine, job, worker="alive@host")
    heartbeats.send("alive@host", [(str(job.pk), ELSEWHERE)])  # the heartbeat before the child died
    with heartbeats.beating("alive@host", [(str(job.pk), os.getpid())], after=0.2), clock() as during:
        attempt = run(engine, job, worker="alive@host")

    assert attempt.number == 2
    assert attempts(job) == [(1, "lost"), (2, "running")]
    assert attempt_row(job, 1).error == "the worker was lost during the run"
    assert attempt_row(job, 1).finished_at in during


def test_a_message_of_a_job_whose_worker_fell_silent_runs_it_again_at_once(engine, heartbeats):
    """Its worker was killed or frozen seconds ago: its key has not expired, and its last
    heartbeat lists the run."""
    job = enqueue()
    run(engine, job, worker="silent@host")
    heartbeats.send("silent@host", [(str(job.pk), ELSEWHERE)], age=5)
    asked_at = time.monotonic()

    assert run(engine, job).number == 2

    assert time.monotonic() - asked_at < 1  # no heartbeat is waited for
    assert attempts(job) == [(1, "lost"), (2, "running")]


def test_a_message_of_a_job_a_live_worker_no_longer_runs_runs_it_again(engine, heartbeats):
    job = enqueue()
    run(engine, job, worker="alive@host")
    with heartbeats.beating("alive@host", []):
        assert run(engine, job).number == 2

    assert attempts(job) == [(1, "lost"), (2, "running")]


def test_a_duplicate_batch_leaves_the_runs_that_go_on_and_publishes_the_rest_alone(
    engine, broker, heartbeats, django_capture_on_commit_callbacks
):
    going, lost, waiting = noops(3)
    claim(engine, [going, lost])
    going_on = [(str(going.pk), ELSEWHERE)]
    with django_capture_on_commit_callbacks(execute=True), heartbeats.beating(WORKER, going_on):
        assert claim(engine, [going, lost, waiting]) == {}

    assert (row(going).state, attempts(going)) == (State.STARTED, [(1, "running")])
    assert (row(lost).state, attempts(lost)) == (State.QUEUED, [(1, "lost")])
    assert (row(waiting).state, attempts(waiting)) == (State.QUEUED, [])
    assert sent(broker) == sorted([("ops.noop", str(lost.pk)), ("ops.noop", str(waiting.pk))])
