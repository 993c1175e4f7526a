"""Transitions racing on two connections: each session is a thread with its own database
connection. Where the order matters, one session holds its transaction (and the row locks it took)
open while the other is seen waiting for them (PostgreSQL tells; SQLite, whose writers queue for
one lock, gets a pause), then lets go: both orders are run, not left to chance. A free-running race
started by a barrier follows each."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from tasks.models import Job
from tasks.platform.engine import ActionRefused
from tests.fast.conftest import actions, attempts, built, claim, enqueue, ids, noops, owe, row, run

pytestmark = pytest.mark.django_db(transaction=True)

State = Job.State
#: seconds any session may take; a session still waiting after it is a failure (a lock never freed)
TIMEOUT = 10


def needs_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks (SKIP LOCKED, lock order) are PostgreSQL's; SQLite runs one writer at a time")


class Session:
    """``call`` on a connection of its own, in a thread of its own. ``hold``: inside a transaction
    kept open after the call until ``release``, then ``then`` runs in it before the commit."""

    def __init__(self, call: Callable[[], Any], *, hold: bool = False, then: Callable[[], Any] | None = None):
        self.pid: int | None = None
        self.held = threading.Event()
        self._release = threading.Event()
        self._pool = ThreadPoolExecutor(1)
        self.future = self._pool.submit(self._run, call, hold, then)
        if hold:
            assert self.held.wait(TIMEOUT), "the holding session never got its locks"
            if self.future.done():
                self.future.result()  # the call failed: raise its error here

    def _run(self, call: Callable[[], Any], hold: bool, then: Callable[[], Any] | None) -> Any:
        try:
            connection.ensure_connection()
            if connection.vendor == "postgresql":
                self.pid = connection.connection.info.backend_pid
            if not hold:
                return call()
            with transaction.atomic():
                result = call()
                self.held.set()
                self._release.wait(TIMEOUT)
                return then() if then else result
        finally:
            self.held.set()
            connection.close()

    def wait_blocked(self) -> None:
        """Until this session waits for a lock another session holds."""
        deadline = time.monotonic() + TIMEOUT
        while self.pid is None and not self.future.done() and connection.vendor == "postgresql":
            time.sleep(0.01)  # connecting
        if connection.vendor != "postgresql":
            time.sleep(0.3)  # SQLite cannot tell: its writer waits in the busy handler
            return
        with connection.cursor() as cursor:
            while time.monotonic() < deadline and not self.future.done():
                cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [self.pid])
                if cursor.fetchone()[0] == "Lock":
                    return
                time.sleep(0.01)
        raise AssertionError(f"the session never waited for a lock (done: {self.future.done()})")

    def release(self) -> None:
        self._release.set()

    def result(self, timeout: float = TIMEOUT) -> Any:
        try:
            return self.future.result(timeout)
        finally:
            self._release.set()
            self._pool.shutdown(wait=False)


def hold(call: Callable[[], Any], then: Callable[[], Any] | None = None) -> Session:
    return Session(call, hold=True, then=then)


def at_once(*calls: Callable[[], Any]) -> list[Any]:
    """The calls started together (a barrier), each on its own connection; their results."""
    barrier = threading.Barrier(len(calls))

    def started(call: Callable[[], Any]) -> Callable[[], Any]:
        def go() -> Any:
            barrier.wait(TIMEOUT)
            return call()

        return go

    sessions = [Session(started(call)) for call in calls]
    return [session.result() for session in sessions]


# -- the relay's claim --------------------------------------------------------------------------


def test_a_relay_skips_the_jobs_another_relay_is_claiming(engine):
    needs_postgres()
    jobs = engine.insert([built() for _ in range(10)])
    for job in jobs:
        owe(job, claimed_at=None)
    first = hold(lambda: engine.claim_due(limit=4))

    others = Session(lambda: engine.claim_due(limit=100)).result(timeout=5)  # not waiting for the first's locks
    first.release()
    mine = first.result()

    assert (len(mine), len(others)) == (4, 6)
    assert ids(*mine, *others) == ids(*jobs)
    assert engine.claim_due(limit=100) == []


def test_relays_claiming_at_once_never_take_one_job_twice(engine):
    needs_postgres()
    jobs = engine.insert([built() for _ in range(60)])
    for job in jobs:
        owe(job, claimed_at=None)

    def relay() -> list[Job]:
        taken: list[Job] = []
        while batch := engine.claim_due(limit=5):
            taken += batch
        return taken

    first, second = at_once(relay, relay)

    assert not set(ids(*first)) & set(ids(*second))
    assert ids(*first, *second) == ids(*jobs)


# -- an operator's cancel against the worker's success ------------------------------------------


def cancel(engine, job: Job) -> Callable[[], Any]:
    def call() -> Any:
        try:
            return engine.cancel(job_id=job.pk, via="api")[1]  # whether it was running
        except ActionRefused:
            return "refused"

    return call


def succeed(engine, job: Job, attempt) -> Callable[[], None]:
    return lambda: engine.succeed(job_id=str(job.pk), attempt=attempt, result={"ok": True})


def one_outcome(job: Job, cancelled: Any) -> str:
    """The job ended succeeded with the cancel refused, or cancelled with the success ignored."""
    stored = row(job)
    if stored.state == State.SUCCEEDED:
        assert cancelled == "refused"
        assert (stored.result, attempts(job), actions(job)) == ({"ok": True}, [(1, "succeeded")], [])
    else:
        assert (stored.state, cancelled) == (State.CANCELLED, True)
        assert (stored.result, stored.progress, attempts(job)) == (None, 0, [(1, "failed")])
        assert actions(job) == [("cancelled", State.STARTED, "api", None)]
    return stored.state


@pytest.mark.parametrize("first", ["succeed", "cancel"])
def test_a_cancel_and_a_success_of_one_run_end_in_one_outcome(engine, broker, first):
    job = enqueue()
    attempt = run(engine, job)
    calls = {"succeed": succeed(engine, job, attempt), "cancel": cancel(engine, job)}
    second = "cancel" if first == "succeed" else "succeed"
    holder = hold(calls[first])  # done, not yet committed
    waiter = Session(calls[second])
    waiter.wait_blocked()
    holder.release()
    results = {first: holder.result(), second: waiter.result()}

    assert one_outcome(job, results["cancel"]) == (State.SUCCEEDED if first == "succeed" else State.CANCELLED)


def test_a_cancel_racing_a_success_never_ends_in_both(engine, broker):
    for _ in range(4):
        job = enqueue()
        attempt = run(engine, job)
        _, cancelled = at_once(succeed(engine, job, attempt), cancel(engine, job))
        one_outcome(job, cancelled)


# -- batches over the same jobs in opposite orders ----------------------------------------------


def lock(job: Job) -> Callable[[], None]:
    return lambda: list(Job.objects.select_for_update().filter(pk=job.pk))


def lock_at_once(job: Job) -> Callable[[], str]:
    """Lock the job's row if it is free, without waiting: "locked", or "busy"."""

    def call() -> str:
        try:
            with transaction.atomic():
                list(Job.objects.select_for_update(nowait=True).filter(pk=job.pk))
        except DatabaseError:
            return "busy"
        return "locked"

    return call


@pytest.mark.parametrize("transition", ["claim_batch", "succeed_many"])
def test_a_batch_locks_its_jobs_in_key_order_whatever_its_order(engine, broker, transition):
    """A batch given its jobs newest first still locks them oldest first: stopped at a row another
    transaction holds, it holds none of the rows after it, so that transaction can lock those too."""
    needs_postgres()
    jobs = sorted(noops(6), key=lambda job: job.pk)
    newest_first = list(reversed(jobs[1:]))
    if transition == "claim_batch":
        call = lambda: claim(engine, newest_first)  # noqa: E731
    else:
        claimed = claim(engine, jobs)
        call = lambda: engine.succeed_many(results={str(job.pk): None for job in newest_first}, attempts=claimed)  # noqa: E731
    holder = hold(lock(jobs[2]), then=lock_at_once(jobs[5]))

    batch = Session(call)
    batch.wait_blocked()
    holder.release()

    assert holder.result() == "locked"
    batch.result()
    expected = State.STARTED if transition == "claim_batch" else State.SUCCEEDED
    assert [row(job).state for job in newest_first] == [expected] * 5


def test_claim_batches_over_shared_jobs_in_opposite_orders_do_not_deadlock(engine, broker):
    needs_postgres()
    for _ in range(3):
        jobs = sorted(noops(6), key=lambda job: job.pk)
        at_once(lambda jobs=jobs: claim(engine, jobs[:4]), lambda jobs=jobs: claim(engine, jobs[:1:-1]))
        for job in jobs:  # started once; or published again by the batch that found a member started
            stored = row(job)
            running = [number for number, outcome in attempts(job) if outcome == "running"]
            assert stored.state in (State.STARTED, State.QUEUED)
            assert len(running) == (1 if stored.state == State.STARTED else 0)


def test_succeed_manys_over_shared_jobs_in_opposite_orders_do_not_deadlock(engine, broker):
    needs_postgres()
    for _ in range(3):
        jobs = sorted(noops(6), key=lambda job: job.pk)
        claimed = claim(engine, jobs)

        def succeed_all(members: list[Job], claimed=claimed) -> None:
            engine.succeed_many(results={str(job.pk): str(job.pk) for job in members}, attempts=claimed)

        at_once(lambda jobs=jobs: succeed_all(jobs[:4]), lambda jobs=jobs: succeed_all(jobs[:1:-1]))
        for job in jobs:
            assert (row(job).state, row(job).result, attempts(job)) == (
                State.SUCCEEDED,
                str(job.pk),
                [(1, "succeeded")],
            )


# -- the same idempotency key at once -----------------------------------------------------------


def test_two_inserts_of_one_key_at_once_write_one_job(engine):
    first = hold(lambda: engine.insert([built(idempotency_key="once")])[0])
    second = Session(lambda: engine.insert([built(idempotency_key="once")])[0])
    second.wait_blocked()
    first.release()

    written, returned = first.result(), second.result()

    assert (written.created, returned.created, returned.pk) == (True, False, written.pk)
    assert Job.objects.count() == 1
