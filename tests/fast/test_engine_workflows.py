"""Workflow links followed inside the transition that ends a job: a chain's next step released on
success, a group's callback counted down, the steps after a job that did not succeed cancelled, and
put back to waiting by its retry."""

import pytest

from tasks.models import Job
from tasks.platform.engine import ActionRefused
from tasks.platform.services.jobs import JobRequest, job_enqueue_chain, job_enqueue_group
from tests.fast.conftest import NOT_OWED, actions, ago, claim, claimed, clock, fail, row, run, sent

pytestmark = pytest.mark.django_db

State = Job.State


def chain(steps: int = 3) -> list[Job]:
    return job_enqueue_chain(steps=[JobRequest("ops.ping", {"hold_seconds": n}) for n in range(steps)], origin="fast")


def group(members: int = 3) -> tuple[list[Job], Job]:
    return job_enqueue_group(
        requests=[JobRequest("ops.ping")] * members, callback=JobRequest("ops.ping"), origin="fast"
    )


def succeed(engine, job: Job) -> None:
    engine.succeed(job_id=str(job.pk), attempt=run(engine, job), result={"done": str(job.pk)})


def test_a_chains_next_step_is_released_on_success_and_published_after_commit(
    engine, broker, django_capture_on_commit_callbacks
):
    first, second, third = chain()
    assert [row(job).state for job in (first, second, third)] == [State.QUEUED, State.WAITING, State.WAITING]
    attempt = run(engine, first)
    assert attempt.has_next and attempt.in_workflow

    with django_capture_on_commit_callbacks(execute=True):
        with clock() as during:
            engine.succeed(job_id=str(first.pk), attempt=attempt, result=1)
        released = row(second)
        assert (released.state, claimed(released) in during) == (State.QUEUED, True)
        assert sent(broker) == []

    assert (row(first).state, row(second).state, row(third).state) == (State.SUCCEEDED, State.QUEUED, State.WAITING)
    assert sent(broker) == [("ops.ping", str(second.pk))]
    assert run(engine, second).has_next


def test_a_groups_callback_counts_down_to_its_release(engine, broker, django_capture_on_commit_callbacks):
    members, callback = group(3)
    assert (row(callback).state, row(callback).waiting_for) == (State.WAITING, 3)
    attempts = [run(engine, member) for member in members]
    assert {attempt.then_id for attempt in attempts} == {callback.pk}

    for member, attempt in list(zip(members, attempts, strict=True))[:2]:
        engine.succeed(job_id=str(member.pk), attempt=attempt, result=None)
    assert (row(callback).state, row(callback).waiting_for) == (State.WAITING, 1)

    with django_capture_on_commit_callbacks(execute=True):
        engine.succeed(job_id=str(members[2].pk), attempt=attempts[2], result=None)
        assert (row(callback).state, row(callback).waiting_for) == (State.QUEUED, 0)
        assert claimed(callback) is not None

    assert row(callback).state == State.QUEUED
    assert sent(broker) == [("ops.ping", str(callback.pk))]


def test_a_batch_of_a_groups_members_releases_its_callback_once(engine, broker, django_capture_on_commit_callbacks):
    members, callback = group(3)
    with django_capture_on_commit_callbacks(execute=True):
        engine.succeed_many(results={str(member.pk): None for member in members}, attempts=claim(engine, members))
    assert (row(callback).state, row(callback).waiting_for) == (State.QUEUED, 0)
    assert sent(broker) == [("ops.ping", str(callback.pk))]


@pytest.mark.parametrize("end", ["dead", "failed", "cancel", "undeliverable"])
def test_the_steps_after_a_job_that_did_not_succeed_are_cancelled(engine, finished, end):
    first, second, third = chain()
    with clock() as during:
        if end == "cancel":
            engine.cancel(job_id=first.pk, via="api")
        elif end == "undeliverable":
            engine.mark_undeliverable(job_id=str(first.pk), reason="unknown task")
        else:
            fail(engine, first, run(engine, first), end)

    ended = {"cancel": State.CANCELLED, "undeliverable": State.DEAD}.get(end, end)
    reason = f"not run: an earlier step ({first.pk}) ended {ended}"
    for step in (second, third):
        stored = row(step)
        assert (stored.state, stored.error) == (State.CANCELLED, reason)
        assert stored.finished_at in during
        assert actions(step) == [("step_cancelled", State.WAITING, "workflow", None)]
    assert finished == [(str(first.pk), ended), (str(second.pk), State.CANCELLED), (str(third.pk), State.CANCELLED)]


def test_a_failed_member_cancels_its_groups_callback(engine, finished):
    members, callback = group(2)
    fail(engine, members[0], run(engine, members[0]), State.DEAD)
    assert row(callback).state == State.CANCELLED
    assert actions(callback) == [("step_cancelled", State.WAITING, "workflow", None)]
    assert (str(callback.pk), State.CANCELLED) in finished


def test_a_retry_on_the_way_leaves_the_next_steps_waiting(engine, finished):
    first, second, _ = chain()
    fail(engine, first, run(engine, first), State.RETRYING, retry_at=ago(-60))
    assert (row(second).state, actions(second), finished) == (State.WAITING, [], [])


def test_retrying_a_job_puts_the_steps_its_failure_cancelled_back_to_waiting(
    engine, broker, django_capture_on_commit_callbacks
):
    first, second, third = chain()
    fail(engine, first, run(engine, first), State.DEAD)

    engine.retry(job_id=first.pk, via="api")

    assert row(first).state == State.QUEUED
    for step in (second, third):
        stored = row(step)
        assert (stored.state, stored.error, stored.finished_at) == (State.WAITING, "", None)
    with django_capture_on_commit_callbacks(execute=True):
        succeed(engine, first)
    assert (row(second).state, row(third).state) == (State.QUEUED, State.WAITING)


def test_retrying_a_step_whose_earlier_step_did_not_succeed_makes_it_wait(
    engine, broker, django_capture_on_commit_callbacks
):
    first, second, third = chain()
    fail(engine, first, run(engine, first), State.FAILED)

    with django_capture_on_commit_callbacks(execute=True):
        engine.retry(job_id=second.pk, via="api")

    stored = row(second)
    assert (stored.state, claimed(second), stored.attempts_before_retry) == (State.WAITING, NOT_OWED, 0)
    assert [kind for kind, *_ in actions(second)] == ["step_cancelled", "retried"]
    assert (row(first).state, row(third).state) == (State.FAILED, State.WAITING)
    assert sent(broker) == []


def test_a_step_cancelled_by_hand_stays_cancelled_when_an_earlier_step_is_retried(engine):
    first, second = chain(2)
    engine.cancel(job_id=second.pk, via="api")
    fail(engine, first, run(engine, first), State.DEAD)

    engine.retry(job_id=first.pk, via="api")

    assert (row(second).state, [kind for kind, *_ in actions(second)]) == (State.CANCELLED, ["cancelled"])


def test_a_groups_callback_waits_again_once_none_of_its_members_is_stopped(engine):
    members, callback = group(3)
    succeed(engine, members[2])
    for member in members[:2]:
        fail(engine, member, run(engine, member), State.DEAD)
    assert row(callback).state == State.CANCELLED

    engine.retry(job_id=members[0].pk, via="api")
    assert row(callback).state == State.CANCELLED  # the other member is still dead
    engine.retry(job_id=members[1].pk, via="api")
    assert (row(callback).state, row(callback).waiting_for) == (State.WAITING, 2)

    for member in members[:2]:
        succeed(engine, member)
    assert (row(callback).state, row(callback).waiting_for) == (State.QUEUED, 0)


def test_retrying_a_groups_callback_whose_member_did_not_succeed_makes_it_wait(engine):
    members, callback = group(2)
    fail(engine, members[0], run(engine, members[0]), State.DEAD)
    assert row(callback).state == State.CANCELLED

    engine.retry(job_id=callback.pk, via="api")

    assert (row(callback).state, claimed(callback)) == (State.WAITING, NOT_OWED)


def test_retry_of_a_waiting_step_is_refused(engine):
    _, second = chain(2)
    with pytest.raises(ActionRefused):
        engine.retry(job_id=second.pk, via="api")
