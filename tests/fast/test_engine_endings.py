"""How a run ends: succeed, succeed_many, fail, abandon_batch and mark_undeliverable, each with
its precondition and outcome (state, result, attempt rows, timestamps, the publisher's claim)."""

import json
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from tasks.models import Job
from tests.fast.conftest import (
    ago,
    attempt_row,
    attempts,
    claim,
    claimed,
    clock,
    enqueue,
    fail,
    ids,
    noops,
    owe,
    row,
    run,
    sent,
)

pytestmark = pytest.mark.django_db

State = Job.State


# -- succeed, succeed_many ----------------------------------------------------------------------


def test_succeed_closes_the_attempt_and_stores_the_result(engine):
    job = enqueue()
    fail(engine, job, run(engine, job), State.RETRYING, retry_at=timezone.now())
    attempt = run(engine, job)
    with clock() as during:
        engine.succeed(
            job_id=str(job.pk), attempt=attempt, result={"n": 1.5, "text": "naïve ☃", "ok": True, "no": None}
        )

    stored = row(job)
    assert (stored.state, stored.result, stored.progress) == (
        State.SUCCEEDED,
        {"n": 1.5, "text": "naïve ☃", "ok": True, "no": None},
        100,
    )
    assert (stored.error, stored.traceback) == ("", "")
    assert stored.finished_at in during
    assert attempts(job) == [(1, "failed"), (2, "succeeded")]
    assert attempt_row(job, 2).finished_at == stored.finished_at


def test_succeed_of_a_result_the_ledger_can_store_returns(engine):
    job = enqueue()
    attempt = run(engine, job)
    result = {"amount": Decimal("1.50"), "at": timezone.now()}
    engine.succeed(job_id=str(job.pk), attempt=attempt, result=result)
    assert row(job).result == json.loads(json.dumps(result, cls=DjangoJSONEncoder))


def test_succeed_of_a_job_cancelled_while_it_ran_leaves_it_cancelled(engine):
    job = enqueue()
    attempt = run(engine, job)
    engine.cancel(job_id=job.pk, via="api")
    cancelled = row(job)

    engine.succeed(job_id=str(job.pk), attempt=attempt, result={"late": True})

    stored = row(job)
    assert (stored.state, stored.result, stored.finished_at, stored.error) == (
        State.CANCELLED,
        None,
        cancelled.finished_at,
        "cancelled via api",
    )
    assert attempts(job) == [(1, "failed")]
    assert attempt_row(job, 1).error == "cancelled"


def test_succeed_many_stores_each_jobs_result(engine):
    jobs = noops(4)
    claimed = claim(engine, jobs)
    engine.cancel(job_id=jobs[3].pk, via="api")
    results = {str(jobs[0].pk): {"n": 1}, str(jobs[1].pk): [1, "two"], str(jobs[2].pk): "three", str(jobs[3].pk): 4}

    with clock() as during:
        engine.succeed_many(results=results, attempts=claimed)

    for job in jobs[:3]:
        stored = row(job)
        assert (stored.state, stored.result, stored.progress) == (State.SUCCEEDED, results[str(job.pk)], 100)
        assert stored.finished_at in during
        assert attempts(job) == [(1, "succeeded")]
    assert (row(jobs[3]).state, row(jobs[3]).result, attempts(jobs[3])) == (State.CANCELLED, None, [(1, "failed")])


def test_succeed_many_of_one_result_for_all(engine):
    jobs = noops(2)
    engine.succeed_many(results={str(job.pk): {"same": True} for job in jobs}, attempts=claim(engine, jobs))
    assert [(row(job).state, row(job).result) for job in jobs] == [(State.SUCCEEDED, {"same": True})] * 2


def test_succeed_many_closes_each_jobs_own_attempt_whatever_its_number(engine):
    again, first = noops(2)
    claim(engine, [again])
    assert claim(engine, [again]) == {}  # delivered again while started: its attempt 1 is lost
    claimed = claim(engine, [again, first])
    assert (claimed[str(again.pk)].number, claimed[str(first.pk)].number) == (2, 1)

    engine.succeed_many(results={str(job.pk): None for job in (again, first)}, attempts=claimed)

    assert attempts(again) == [(1, "lost"), (2, "succeeded")]
    assert attempts(first) == [(1, "succeeded")]
    assert row(again).state == row(first).state == State.SUCCEEDED


def test_succeed_many_of_nothing_does_nothing(engine):
    engine.succeed_many(results={}, attempts={})


# -- fail ---------------------------------------------------------------------------------------


def test_fail_to_retrying_sets_when_it_runs_again(engine):
    job = enqueue()
    retry_at = timezone.now() + timedelta(minutes=1)
    with clock() as during:
        fail(engine, job, run(engine, job), State.RETRYING, retry_at=retry_at)

    stored = row(job)
    assert (stored.state, stored.run_at, stored.finished_at) == (State.RETRYING, retry_at, None)
    assert (stored.error, stored.traceback) == ("E: boom", "tb")
    closed = attempt_row(job, 1)
    assert (closed.outcome, closed.error) == ("failed", "E: boom")
    assert closed.finished_at in during
    owe(job, claimed_at=ago(60))  # a row its publisher left behind
    assert engine.claim_due(limit=10) == []  # not due yet, and a retry needs no message now


@pytest.mark.parametrize("state", [State.FAILED, State.DEAD])
def test_fail_to_failed_or_dead_finishes_the_job(engine, state, finished, events):
    job = enqueue()
    attempt = run(engine, job)
    received = events(job)
    with clock() as during:
        fail(engine, job, attempt, state)

    stored = row(job)
    assert (stored.state, stored.error, stored.run_at) == (state, "E: boom", None)
    assert stored.finished_at in during
    assert attempts(job) == [(1, "failed")]
    assert finished == [(str(job.pk), state)]
    assert [(event["state"], event["error"]) for event in received()] == [(state, "E: boom")]


def test_fail_without_a_number_closes_the_running_attempt(engine):
    job = enqueue()
    run(engine, job, worker="lost@host")
    run(engine, job)
    fail(engine, job, None, State.FAILED)
    assert attempts(job) == [(1, "lost"), (2, "failed")]
    assert row(job).state == State.FAILED


def test_fail_of_a_job_no_longer_started_leaves_it(engine, finished):
    job = enqueue()
    attempt = run(engine, job)
    engine.cancel(job_id=job.pk, via="api")
    cancelled = row(job)
    finished.clear()

    fail(engine, job, attempt, State.FAILED)

    stored = row(job)
    assert (stored.state, stored.error, stored.finished_at) == (
        State.CANCELLED,
        "cancelled via api",
        cancelled.finished_at,
    )
    assert finished == []


def test_fail_of_a_job_no_longer_started_tells_no_watcher(engine, events):
    job = enqueue()
    attempt = run(engine, job)
    engine.cancel(job_id=job.pk, via="api")
    received = events(job)

    fail(engine, job, attempt, State.FAILED)

    assert received() == []


# -- abandon_batch, mark_undeliverable ----------------------------------------------------------


@pytest.mark.parametrize("ran", [True, False])
def test_abandon_batch_publishes_the_started_members_again_alone(
    engine, broker, django_capture_on_commit_callbacks, ran
):
    first, second, done = noops(3)
    started = claim(engine, [first, second, done])
    engine.succeed_many(results={str(done.pk): None}, attempts=started)

    with django_capture_on_commit_callbacks(execute=True):
        with clock() as during:
            engine.abandon_batch(job_ids=[str(job.pk) for job in (first, second, done)], reason="hard limit", ran=ran)
        for job in (first, second):
            stored = row(job)
            assert (stored.state, stored.attempts) == (State.QUEUED, 1 if ran else 0)
            assert claimed(job) in during
            assert attempts(job) == ([(1, "failed")] if ran else [])
        assert sent(broker) == []

    if ran:
        assert attempt_row(first, 1).error == "hard limit"
        assert attempt_row(first, 1).finished_at in during
    assert sent(broker) == [("ops.noop", job_id) for job_id in ids(first, second)]
    assert (row(done).state, attempts(done)) == (State.SUCCEEDED, [(1, "succeeded")])


def test_mark_undeliverable_kills_a_job_not_finished(engine, finished):
    job = enqueue()
    with clock() as during:
        assert engine.mark_undeliverable(job_id=str(job.pk), reason="undeliverable: unknown task") is True

    stored = row(job)
    assert (stored.state, stored.error) == (State.DEAD, "undeliverable: unknown task")
    assert stored.finished_at in during
    assert finished == [(str(job.pk), State.DEAD)]


def test_mark_undeliverable_leaves_a_finished_job(engine):
    job = enqueue()
    engine.cancel(job_id=job.pk, via="api")
    assert engine.mark_undeliverable(job_id=str(job.pk), reason="unknown task") is False
    assert (row(job).state, row(job).error) == (State.CANCELLED, "cancelled via api")


def test_mark_undeliverable_of_a_started_job_closes_its_attempt(engine):
    job = enqueue()
    run(engine, job)

    assert engine.mark_undeliverable(job_id=str(job.pk), reason="undeliverable: unknown task") is True

    assert row(job).state == State.DEAD
    closed = attempt_row(job, 1)
    assert closed.outcome != "running"
    assert closed.finished_at is not None


def test_a_late_success_of_a_lost_attempt_changes_nothing(engine):
    """Its worker was lost and the job started again: the first worker's late report must neither
    close the running attempt nor finish the job."""
    job = enqueue()
    first = run(engine, job)
    second = run(engine, job)  # delivered again while started: attempt 1 is lost
    assert (first.number, second.number) == (1, 2)

    engine.succeed(job_id=str(job.pk), attempt=first, result="late")

    assert (row(job).state, row(job).result) == (State.STARTED, None)
    assert attempts(job) == [(1, "lost"), (2, "running")]


def test_a_late_failure_of_a_lost_attempt_changes_nothing(engine):
    job = enqueue()
    first = run(engine, job)
    run(engine, job)

    fail(engine, job, first, State.DEAD)

    assert row(job).state == State.STARTED
    assert attempts(job) == [(1, "lost"), (2, "running")]
