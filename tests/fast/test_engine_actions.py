"""An operator's actions: cancel, cancel_terminated, retry and discard, each with its precondition
and outcome (state, attempt rows, the fresh budget, the recorded action)."""

import pytest
from uuid_utils.compat import uuid7

from tasks.models import Job
from tasks.platform.engine import ActionRefused, Attempt
from tests.fast.conftest import actions, ago, attempt_row, attempts, claimed, clock, enqueue, fail, row, run, sent

pytestmark = pytest.mark.django_db

State = Job.State


# -- an operator's cancel, cancel_terminated, retry, discard ------------------------------------


def test_cancel_of_a_job_not_started(engine, user):
    job = enqueue()
    with clock() as during:
        cancelled, running = engine.cancel(job_id=job.pk, by=user, via="admin")

    assert (cancelled.pk, cancelled.state, running) == (job.pk, State.CANCELLED, False)
    stored = row(job)
    assert (stored.state, stored.error) == (State.CANCELLED, "cancelled via admin")
    assert stored.finished_at in during
    assert actions(job) == [("cancelled", State.QUEUED, "admin", user.pk)]


def test_cancel_of_a_started_job_closes_its_attempt(engine):
    job = enqueue()
    run(engine, job)
    with clock() as during:
        _, running = engine.cancel(job_id=job.pk, via="api")

    assert running is True
    assert attempts(job) == [(1, "failed")]
    assert attempt_row(job, 1).finished_at in during
    assert actions(job) == [("cancelled", State.STARTED, "api", None)]


def test_cancel_of_a_finished_job_is_refused(engine):
    job = enqueue()
    engine.succeed(job_id=str(job.pk), attempt=run(engine, job), result=1)
    with pytest.raises(ActionRefused):
        engine.cancel(job_id=job.pk, via="api")
    assert (row(job).state, actions(job)) == (State.SUCCEEDED, [])


def test_cancel_terminated_records_a_started_job_cancelled(engine):
    started, queued = enqueue(), enqueue()
    run(engine, started)

    assert engine.cancel_terminated(job_id=str(started.pk), via="revoke") is True
    assert engine.cancel_terminated(job_id=str(queued.pk), via="revoke") is False
    assert engine.cancel_terminated(job_id=str(uuid7()), via="revoke") is False

    stored = row(started)
    assert (stored.state, stored.error) == (State.CANCELLED, "terminated via revoke (not the platform's cancel)")
    assert (attempts(started), actions(started)) == ([(1, "failed")], [("cancelled", State.STARTED, "revoke", None)])
    assert (row(queued).state, actions(queued)) == (State.QUEUED, [])


@pytest.mark.parametrize("state", [State.QUEUED, State.STARTED, State.SUCCEEDED])
def test_retry_of_a_job_neither_failed_dead_nor_cancelled_is_refused(engine, state):
    job = enqueue()
    if state != State.QUEUED:
        attempt = run(engine, job)
        if state == State.SUCCEEDED:
            engine.succeed(job_id=str(job.pk), attempt=attempt, result=None)
    with pytest.raises(ActionRefused):
        engine.retry(job_id=job.pk, via="api")
    assert (row(job).state, actions(job)) == (state, [])


def test_retry_runs_a_failed_job_again_with_a_fresh_budget(engine, user, broker, django_capture_on_commit_callbacks):
    job = enqueue(max_attempts=2)
    fail(engine, job, run(engine, job), State.RETRYING, retry_at=ago(1))
    fail(engine, job, run(engine, job), State.DEAD)
    engine.discard(job_id=job.pk, via="api")

    with django_capture_on_commit_callbacks(execute=True):
        with clock() as during:
            retried = engine.retry(job_id=job.pk, by=user, via="api")
        stored = row(job)
        assert (stored.state, stored.attempts, stored.attempts_before_retry) == (State.QUEUED, 2, 2)
        assert claimed(job) in during
        assert (stored.error, stored.traceback, stored.result, stored.progress) == ("", "", None, 0)
        assert (stored.finished_at, stored.run_at, stored.discarded_at) == (None, None, None)
        assert sent(broker) == []

    assert (retried.pk, retried.publish_error) == (job.pk, "")
    assert actions(job)[-1] == ("retried", State.DEAD, "api", user.pk)
    assert (row(job).state, sent(broker)) == (State.QUEUED, [("ops.ping", str(job.pk))])
    assert run(engine, job) == Attempt(number=3, used=1, allowed=2)


def test_worker_losses_before_a_retry_do_not_count_after_it(engine):
    job = enqueue()
    run(engine, job, max_worker_losses=2)
    run(engine, job, max_worker_losses=2)  # attempt 1 lost
    engine.cancel(job_id=job.pk, via="api")
    engine.retry(job_id=job.pk, via="api")
    run(engine, job, max_worker_losses=2)

    assert run(engine, job, max_worker_losses=2).number == 4  # one loss since the retry, not two
    assert attempts(job) == [(1, "lost"), (2, "failed"), (3, "lost"), (4, "running")]


def test_discard_lets_a_dead_job_go_once(engine, user):
    dead, failed = enqueue(), enqueue()
    fail(engine, dead, run(engine, dead), State.DEAD)
    fail(engine, failed, run(engine, failed), State.FAILED)

    with clock() as during:
        discarded = engine.discard(job_id=dead.pk, by=user, via="flower")

    assert discarded.discarded_at in during and row(dead).discarded_at == discarded.discarded_at
    assert actions(dead) == [("discarded", State.DEAD, "flower", user.pk)]
    for job in (dead, failed):
        with pytest.raises(ActionRefused):
            engine.discard(job_id=job.pk, via="api")
    assert (len(actions(dead)), row(failed).discarded_at) == (1, None)
