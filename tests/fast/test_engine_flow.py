"""Flow control in the engine: pauses hold jobs at the gate and at the start, concurrency limits
admit held jobs into free slots, and every held job says why (tasks.platform.engine.flow,
tasks.platform.selectors.flow)."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from tasks.models import ConcurrencyOverride, FlowEvent, FlowKey, Job, Pause, RateOverride
from tasks.platform.concurrency import SHARE_BY
from tasks.platform.selectors.flow import job_blocked
from tests.fast.conftest import NOT_OWED, ago, attempts, built, claim, claimed, clock, noops, row, run, sent

pytestmark = pytest.mark.django_db

State = Job.State
LIMITED = "ops.account"  # Limit(2, key="account_id")


def account(account_id: str = "a", **fields) -> Job:
    return built(LIMITED, payload={"account_id": account_id, "hold_seconds": 0}, **fields)


def states(*jobs: Job) -> list[str]:
    return [row(job).state for job in jobs]


# -- pause and resume ---------------------------------------------------------------------------


def test_a_job_enqueued_while_its_queue_is_paused_is_held_then_queued_for_the_relay_on_resume(engine, user):
    engine.pause(scope="queue", name="default", by=user, via="api")
    [job] = engine.insert([built()])

    assert (row(job).state, row(job).held_reason, claimed(job)) == (State.HELD, "paused", NOT_OWED)
    assert job_blocked(row(job)).code == "paused"
    assert "fast-operator via api" in job_blocked(row(job)).message

    with clock() as during:
        assert engine.resume(scope="queue", name="default", by=user, via="command") == 1

    assert (row(job).state, row(job).held_reason, claimed(job)) == (State.QUEUED, "", None)  # the relay's
    assert row(job).queued_at in during
    assert list(FlowEvent.objects.order_by("at").values_list("action", "scope", "name", "by", "via")) == [
        ("paused", "queue", "default", user.pk, "api"),
        ("resumed", "queue", "default", user.pk, "command"),
    ]
    assert not Pause.objects.exists()


def test_pausing_twice_keeps_the_first_pause_and_resuming_what_is_not_paused_changes_nothing(engine, user):
    first = engine.pause(scope="task", name="ops.ping", by=user, via="api")
    again = engine.pause(scope="task", name="ops.ping", via="admin")

    assert (again.pk, again.via) == (first.pk, "api")
    assert engine.resume(scope="queue", name="default", via="api") == 0
    assert FlowEvent.objects.count() == 1


def test_a_job_paused_by_its_task_and_its_queue_waits_for_both(engine):
    engine.pause(scope="queue", name="default", via="api")
    engine.pause(scope="task", name="ops.ping", via="api")
    [job] = engine.insert([built()])

    engine.resume(scope="queue", name="default", via="api")
    assert row(job).state == State.HELD
    engine.resume(scope="task", name="ops.ping", via="api")
    assert row(job).state == State.QUEUED


def test_a_worker_holds_a_job_whose_queue_was_paused_after_it_was_sent(engine):
    [job] = engine.insert([built()])  # queued, its message on its way
    engine.pause(scope="queue", name="default", via="flower")

    assert run(engine, job) is None

    stored = row(job)
    assert (stored.state, stored.held_reason, stored.attempts, attempts(job)) == (State.HELD, "paused", 0, [])
    assert run(engine, job) is None  # a second delivery of it: still held, not started


def test_a_worker_holds_a_batch_whose_task_was_paused(engine):
    jobs = noops(3)
    engine.pause(scope="task", name="ops.noop", via="api")

    assert claim(engine, jobs) == {}

    assert set(states(*jobs)) == {State.HELD}
    assert all(attempts(job) == [] for job in jobs)


def test_the_relay_sweeps_jobs_held_by_a_pause_that_is_gone(engine):
    [job] = engine.insert([built()])
    Job.objects.filter(pk=job.pk).update(state=State.HELD, held_reason="paused")  # a start raced the resume

    assert engine.admit_waiting(limit=10) == 1

    assert (row(job).state, claimed(job)) == (State.QUEUED, None)


# -- concurrency limits -------------------------------------------------------------------------


def test_jobs_of_a_limited_task_are_admitted_up_to_its_limit_per_key(
    engine, broker, django_capture_on_commit_callbacks
):
    urgent = account(priority=0, created_at=ago(1))
    a_jobs = [account(created_at=ago(10 - n)) for n in range(3)]
    b_job = account("b")

    with django_capture_on_commit_callbacks(execute=True):
        engine.insert([*a_jobs, b_job, urgent])
        assert set(states(*a_jobs, b_job, urgent)) == {State.HELD}  # admitted after the commit

    assert states(urgent, *a_jobs, b_job) == [State.QUEUED, State.QUEUED, State.HELD, State.HELD, State.QUEUED]
    assert {row(job).flow_key for job in (*a_jobs, urgent)} == {"a"}
    assert sorted(job_id for _, job_id in sent(broker)) == sorted(str(job.pk) for job in (urgent, a_jobs[0], b_job))
    blocked = job_blocked(row(a_jobs[1]))
    assert blocked.code == "concurrency"
    assert str(urgent.pk) in blocked.message and str(a_jobs[0].pk) in blocked.message


def test_a_freed_slot_admits_the_next_job_of_its_key(engine, broker, django_capture_on_commit_callbacks):
    jobs = [account(created_at=ago(10 - n)) for n in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        engine.insert(jobs)
    attempt = run(engine, jobs[0])

    assert engine.admit([(LIMITED, "a")]) == 0  # both slots held: one started, one queued
    engine.succeed(job_id=str(jobs[0].pk), attempt=attempt, result=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert engine.admit([(LIMITED, "a")]) == 1

    assert states(*jobs) == [State.SUCCEEDED, State.QUEUED, State.QUEUED]


def test_an_admins_override_changes_a_keys_limit(engine, django_capture_on_commit_callbacks):
    ConcurrencyOverride.objects.create(task_name=LIMITED, key="a", running=3)
    ConcurrencyOverride.objects.create(task_name=LIMITED, key="", running=1)
    a_jobs, b_jobs = [account("a") for _ in range(4)], [account("b") for _ in range(2)]

    with django_capture_on_commit_callbacks(execute=True):
        engine.insert([*a_jobs, *b_jobs])

    assert states(*a_jobs).count(State.QUEUED) == 3
    assert states(*b_jobs).count(State.QUEUED) == 1


def test_the_relay_admits_held_jobs_whose_slot_freed_without_their_worker(engine, django_capture_on_commit_callbacks):
    jobs = [account() for _ in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        engine.insert(jobs)
    queued = [job for job in jobs if row(job).state == State.QUEUED]
    engine.cancel(job_id=queued[0].pk, via="api")  # no worker ran it, none asks for the next

    with django_capture_on_commit_callbacks(execute=True):
        assert engine.admit_waiting(limit=10) == 1

    assert states(*jobs).count(State.QUEUED) == 2


def test_a_retry_of_a_limited_job_passes_the_gate_again(engine, django_capture_on_commit_callbacks):
    jobs = [account() for _ in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        engine.insert(jobs)
    first, second, third = sorted(jobs, key=lambda job: (row(job).state != State.QUEUED, job.created_at))
    engine.fail(job_id=str(first.pk), number=run(engine, first).number, error="E", traceback="", state=State.DEAD)
    with django_capture_on_commit_callbacks(execute=True):
        engine.admit([(LIMITED, "a")])
    assert states(second, third) == [State.QUEUED, State.QUEUED]

    engine.retry(job_id=first.pk, via="api")

    assert (row(first).state, row(first).held_reason) == (State.HELD, "concurrency")


# -- fair share ---------------------------------------------------------------------------------


def bulk(owner, **fields) -> Job:
    return built(queue="bulk", owner=owner, **fields)


@pytest.fixture(autouse=True)
def share_depth(settings):
    """Two of a share's jobs in the queue at once, whatever the deployment's default."""
    settings.FAIR_SHARE_DEPTH = 2


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("fast-alice")


@pytest.fixture
def bob():
    return get_user_model().objects.create_user("fast-bob")


def test_an_owner_has_at_most_their_share_in_a_fair_queue_and_another_owner_goes_at_once(
    engine, broker, alice, bob, django_capture_on_commit_callbacks
):
    backlog = [bulk(alice, created_at=ago(10 - n)) for n in range(5)]
    with django_capture_on_commit_callbacks(execute=True):
        engine.insert(backlog)
    with django_capture_on_commit_callbacks(execute=True):
        [single] = engine.insert([bulk(bob)])

    assert states(*backlog) == [State.QUEUED] * 2 + [State.HELD] * 3
    assert single.state == row(single).state == State.QUEUED  # as the caller is answered
    assert (row(single).share_key, row(backlog[0]).share_key) == (f"owner:{bob.pk}", f"owner:{alice.pk}")
    assert {job_id for _, job_id in sent(broker)} == {str(job.pk) for job in (*backlog[:2], single)}
    blocked = job_blocked(row(backlog[3]))
    assert blocked.code == "fair_share"
    assert "3 of its owner's jobs are ahead of it" in blocked.message


def test_each_start_of_a_shares_job_admits_its_next_by_priority_then_age(
    engine, alice, django_capture_on_commit_callbacks
):
    backlog = [bulk(alice, created_at=ago(10 - n)) for n in range(4)]
    urgent = bulk(alice, priority=0, created_at=ago(1))
    with django_capture_on_commit_callbacks(execute=True):
        engine.insert([*backlog, urgent])
    assert states(urgent, *backlog) == [State.QUEUED, State.QUEUED, State.HELD, State.HELD, State.HELD]

    with django_capture_on_commit_callbacks(execute=True):
        assert run(engine, urgent) is not None

    assert states(*backlog) == [State.QUEUED, State.QUEUED, State.HELD, State.HELD]
    assert engine.admit_shares([("bulk", f"owner:{alice.pk}")]) == 0  # its places are full again


def test_a_new_job_of_a_share_with_a_backlog_waits_behind_it_and_the_oldest_goes(
    engine, broker, alice, django_capture_on_commit_callbacks
):
    backlog = [bulk(alice, created_at=ago(10 - n)) for n in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        engine.insert(backlog)
    engine.cancel(job_id=backlog[0].pk, via="api")  # a place in the queue freed, no start to admit the next
    broker.delete(*broker.keys("bulk*"))

    with django_capture_on_commit_callbacks(execute=True):
        [later] = engine.insert([bulk(alice)])

    assert states(*backlog, later) == [State.CANCELLED, State.QUEUED, State.QUEUED, State.HELD]
    assert [job_id for _, job_id in sent(broker)] == [str(backlog[2].pk)]


def test_a_task_that_shares_by_a_payload_field_takes_turns_per_value_not_per_owner(
    engine, alice, bob, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setitem(SHARE_BY, "ops.ping", "hold_seconds")  # as share_by="hold_seconds" declares
    tenant = [
        bulk(owner, payload={"hold_seconds": 1}, created_at=ago(10 - n)) for n, owner in enumerate([alice, bob] * 2)
    ]
    other = bulk(None, payload={"hold_seconds": 2})

    with django_capture_on_commit_callbacks(execute=True):
        engine.insert([*tenant, other])

    assert states(*tenant, other) == [State.QUEUED] * 2 + [State.HELD] * 2 + [State.QUEUED]
    assert {row(job).share_key for job in tenant} == {"hold_seconds:1"}
    assert "hold_seconds 1's jobs are ahead" in job_blocked(row(tenant[3])).message


def test_jobs_without_an_owner_and_jobs_off_fair_queues_go_at_once(engine, alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        ownerless = engine.insert([bulk(None) for _ in range(3)])
        elsewhere = engine.insert([built(owner=alice) for _ in range(3)])

    assert set(states(*ownerless, *elsewhere)) == {State.QUEUED}
    assert {row(job).share_key for job in (*ownerless, *elsewhere)} == {""}


def test_the_relay_admits_a_shares_jobs_when_its_queued_ones_went_without_starting(
    engine, alice, django_capture_on_commit_callbacks
):
    backlog = [bulk(alice, created_at=ago(10 - n)) for n in range(3)]
    with django_capture_on_commit_callbacks(execute=True):
        engine.insert(backlog)
    engine.cancel(job_id=backlog[0].pk, via="api")  # left the queue without a start

    with django_capture_on_commit_callbacks(execute=True):
        assert engine.admit_waiting(limit=10) == 1

    assert states(*backlog) == [State.CANCELLED, State.QUEUED, State.QUEUED]


def test_a_queue_that_no_longer_takes_turns_admits_every_held_job(
    engine, alice, settings, django_capture_on_commit_callbacks
):
    backlog = [bulk(alice) for _ in range(4)]
    with django_capture_on_commit_callbacks(execute=True):
        engine.insert(backlog)
    settings.FAIR_SHARE_QUEUES = []

    with django_capture_on_commit_callbacks(execute=True):
        assert engine.admit_waiting(limit=10) == 2

    assert set(states(*backlog)) == {State.QUEUED}


# -- why a job does not run ---------------------------------------------------------------------


def test_every_state_that_waits_says_why(engine):
    scheduled, chained = built(state=State.SCHEDULED, run_at=timezone.now()), built()
    engine.insert([scheduled, chained])
    waiting = built(state=State.WAITING, after=chained)
    pending = built()
    engine.insert([waiting, pending])
    Job.objects.filter(pk=pending.pk).update(state=State.PENDING)

    assert job_blocked(row(scheduled)).code == "scheduled"
    assert job_blocked(row(waiting)).code == "workflow"
    assert job_blocked(row(pending)).code == "unpublished"
    assert job_blocked(row(chained)) is None or job_blocked(row(chained)).code == "no_worker"


# -- rates --------------------------------------------------------------------------------------

PACED = "ops.paced"  # Rate("5/s")


def test_jobs_of_a_rated_task_start_one_interval_apart_without_using_attempts(engine):
    jobs = engine.insert([built(PACED, payload={}) for _ in range(3)])
    with clock() as during:
        assert run(engine, jobs[0]) is not None
        assert run(engine, jobs[1]) is None
        assert run(engine, jobs[2]) is None

    second, third = row(jobs[1]), row(jobs[2])
    assert (second.state, second.held_reason, second.attempts, attempts(second)) == (State.SCHEDULED, "rate", 0, [])
    assert during.start + timedelta(milliseconds=150) <= second.run_at <= during.end + timedelta(milliseconds=200)
    assert third.run_at - second.run_at == timedelta(milliseconds=200)
    assert job_blocked(second).code == "rate"


def test_a_job_sent_at_its_turn_starts_without_taking_another(engine, broker):
    first, second = engine.insert([built(PACED, payload={}) for _ in range(2)])
    run(engine, first)
    run(engine, second)  # its turn: one interval from now
    Job.objects.filter(pk=second.pk).update(run_at=ago(0.01))  # the turn came,
    FlowKey.objects.filter(task_name=PACED).update(last_start_at=ago(1))  # an interval after the first start

    [due] = engine.claim_due(limit=10)
    assert (due.pk, row(second).state, row(second).held_reason) == (second.pk, State.QUEUED, "rate")

    attempt = run(engine, second)
    assert attempt is not None
    assert (row(second).state, row(second).held_reason) == (State.STARTED, "")


def test_turns_that_come_late_together_start_one_interval_apart(engine):
    first, *late = engine.insert([built(PACED, payload={}) for _ in range(3)])
    run(engine, first)
    for job in late:
        run(engine, job)  # each given a turn
    Job.objects.filter(pk__in=[job.pk for job in late]).update(run_at=ago(0.5))  # both turns passed
    FlowKey.objects.filter(task_name=PACED).update(last_start_at=ago(1))

    assert run(engine, late[0]) is not None
    assert run(engine, late[1]) is None  # it would start with the other: it takes the next turn

    assert row(late[1]).state == State.SCHEDULED
    assert row(late[1]).run_at >= row(late[0]).started_at + timedelta(milliseconds=150)


def test_an_admins_rate_override_changes_the_interval(engine):
    RateOverride.objects.create(task_name=PACED, key="", rate="1/s")
    jobs = engine.insert([built(PACED, payload={}) for _ in range(2)])
    run(engine, jobs[0])
    with clock() as during:
        run(engine, jobs[1])
    assert row(jobs[1]).run_at >= during.start + timedelta(milliseconds=950)
