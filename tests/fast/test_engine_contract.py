"""The engine's transitions that write new jobs, publish them and start their runs, each with its
precondition and outcome (state, attempts, attempt rows, timestamps, the publisher's claim).
How runs end: test_engine_endings.py; an operator's actions: test_engine_actions.py; workflows:
test_engine_workflows.py; races on two connections: test_engine_races.py."""

import json
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from uuid_utils.compat import uuid7

from tasks.models import Job
from tasks.platform.engine import Attempt, flow
from tasks.platform.engine.orm import PUBLISH_CLAIM
from tasks.platform.engine.postgres import PostgresEngine
from tests.fast.conftest import (
    NOT_OWED,
    WORKER,
    ago,
    attempt_row,
    attempts,
    built,
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
from tests.fixtures import message_keys

pytestmark = pytest.mark.django_db

State = Job.State
#: every column, as the ORM reads it back
FIELDS = [field.attname for field in Job._meta.concrete_fields]


# -- insert -------------------------------------------------------------------------------------


def test_insert_writes_new_jobs_as_built(engine):
    owner = get_user_model().objects.create_user("owner")
    jobs = [  # no key among them: COPY on PostgreSQL
        built(owner=owner, payload={"note": 'naïve ☃ "quoted"\t\\ \n'}, priority=0, max_attempts=7),
        built(queue="critical", state=State.SCHEDULED, run_at=timezone.now() + timedelta(minutes=5)),
        built("ops.noop", payload={}),
    ]
    with clock() as during:
        assert engine.insert(jobs) == jobs
    for job in jobs:
        assert job.created
        stored = row(job)
        assert {f: getattr(stored, f) for f in FIELDS} == {f: getattr(job, f) for f in FIELDS}
    now, later, noop = jobs
    assert (now.state, now.queued_at, claimed(now) in during) == (State.QUEUED, now.created_at, True)
    assert (later.state, later.queued_at, claimed(later)) == (State.SCHEDULED, None, NOT_OWED)
    assert claimed(noop) == claimed(now)


def test_insert_of_one_job_writes_it_queued_with_its_message_owed(engine):
    with clock() as during:
        [job] = engine.insert([built()])
    assert (row(job).state, claimed(job) in during) == (State.QUEUED, True)


def test_insert_returns_the_owners_earlier_job_where_the_key_is_taken(engine):
    alice, bob = (get_user_model().objects.create_user(name) for name in ("alice", "bob"))
    [first] = engine.insert([built(owner=alice, idempotency_key="k")])
    system = engine.insert([built(idempotency_key="k")])[0]

    again, bobs, other_task, system_again = engine.insert(
        [
            built(owner=alice, idempotency_key="k"),
            built(owner=bob, idempotency_key="k"),
            built("ops.noop", owner=alice, idempotency_key="k", payload={}),
            built(idempotency_key="k"),
        ]
    )

    assert (again.pk, again.created, again.publish_error) == (first.pk, False, "")
    assert (system_again.pk, system_again.created) == (system.pk, False)
    assert bobs.created and other_task.created
    assert len({first.pk, bobs.pk, other_task.pk, system.pk}) == 4
    assert Job.objects.count() == 4


def test_insert_of_a_key_twice_in_one_list_returns_the_first(engine):
    first, plain, second = built(idempotency_key="k"), built(), built(idempotency_key="k")
    returned = engine.insert([first, plain, second])
    assert returned[0] is first and returned[1] is plain and returned[2] is first
    assert first.created
    assert ids(*Job.objects.all()) == ids(first, plain)


# -- publish, claim_due ------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2])
def test_publish_sends_the_messages_then_deletes_their_outbox_rows(engine, broker, count):
    with clock() as during:
        jobs = [enqueue(payload={"hold_seconds": n}) for n in range(count)]
    assert all(claimed(job) in during for job in jobs)  # this process's claim

    assert engine.publish(jobs) is True

    assert sent(broker) == sorted(("ops.ping", str(job.pk)) for job in jobs)
    for job in jobs:
        stored = row(job)
        assert (stored.state, claimed(job)) == (State.QUEUED, NOT_OWED)
        assert stored.queued_at in during
        assert (job.state, job.queued_at, job.publish_error) == (State.QUEUED, stored.queued_at, "")


@pytest.mark.django_db(transaction=True)
def test_publish_commits_its_delete_asynchronously_only_in_its_own_transaction(broker):
    """PostgreSQL's engine deletes a sent message's outbox row with synchronous_commit off for
    that statement's transaction only: neither the session nor a caller's transaction keeps it."""
    if connection.vendor != "postgresql":
        pytest.skip("the PostgreSQL engine needs PostgreSQL (DATABASE_URL=postgres://...)")

    def synchronous_commit() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('synchronous_commit')")
            return cursor.fetchone()[0]

    alone = enqueue()  # autocommit: written, then sent and its outbox row deleted
    assert (claimed(alone), synchronous_commit()) == (NOT_OWED, "on")

    with transaction.atomic():
        owe(alone, claimed_at=timezone.now())  # owed again, and published inside this transaction
        PostgresEngine().publish([alone])
        assert (claimed(alone), synchronous_commit()) == (NOT_OWED, "on")
    assert sent(broker) == [("ops.ping", str(alone.pk))] * 2


def test_publish_packs_first_attempts_of_short_tasks_unless_alone(engine, broker):
    jobs = noops(3)
    assert engine.publish(jobs) is True
    [(task, batch_id)] = sent(broker)
    assert task == "jobs.run_batch"

    again = noops(3)
    assert engine.publish(again, alone=True) is True
    singles = [("ops.noop", job_id) for job_id in ids(*again)]
    assert sorted([*singles, ("jobs.run_batch", batch_id)]) == sent(broker)


def test_a_failed_publish_frees_the_claim_for_the_relay(engine, broker, dead_broker):
    job = enqueue()
    assert engine.publish([job]) is False

    stored = row(job)
    assert (stored.state, claimed(job), stored.queued_at) == (State.PENDING, None, None)
    assert job.state == State.PENDING
    assert "refused" in job.publish_error.lower()
    assert [due.pk for due in engine.claim_due(limit=10)] == [job.pk]


def test_a_failed_publish_leaves_a_job_a_worker_started_started(engine, broker, dead_broker):
    job = enqueue()
    run(engine, job)  # its message went out before the broker failed

    assert engine.publish([job]) is False

    assert (row(job).state, attempts(job)) == (State.STARTED, [(1, "running")])
    assert claimed(job) is None
    assert engine.claim_due(limit=10) == []  # a started job needs no message: its outbox row goes
    assert claimed(job) == NOT_OWED


def test_claim_due_takes_unclaimed_expired_and_due_jobs_only(engine):
    now = timezone.now()
    unclaimed, expired, fresh = built(), built(), built()
    scheduled_due = built(state=State.SCHEDULED, run_at=ago(1))
    scheduled_later = built(state=State.SCHEDULED, run_at=now + timedelta(hours=1))
    engine.insert([unclaimed, expired, fresh, scheduled_due, scheduled_later])
    owe(unclaimed, claimed_at=None)  # its publish failed
    owe(expired, claimed_at=now - PUBLISH_CLAIM - timedelta(seconds=1))  # its publisher died
    owe(fresh, claimed_at=now)  # its publisher is at it
    retrying_due, retrying_later, started, published = enqueue(), enqueue(), enqueue(), enqueue()
    fail(engine, retrying_due, run(engine, retrying_due), State.RETRYING, retry_at=ago(1))
    fail(engine, retrying_later, run(engine, retrying_later), State.RETRYING, retry_at=now + timedelta(minutes=1))
    run(engine, started)
    engine.publish([published])
    for job in (retrying_due, retrying_later, started):
        owe(job, claimed_at=ago(60))  # a stale row of a job that needs no message now

    with clock() as during:
        claimed_jobs = engine.claim_due(limit=100)

    assert ids(*claimed_jobs) == ids(unclaimed, expired, scheduled_due, retrying_due)
    for job in claimed_jobs:
        assert claimed(job) in during
        assert (row(job).state, job.state) == (State.QUEUED, State.QUEUED)
        assert job.queued_at == (expired.created_at if job.pk == expired.pk else row(job).queued_at)
        assert job.queued_at in during or job.pk == expired.pk
    assert claimed(fresh) == now
    assert claimed(started) == claimed(retrying_later) == NOT_OWED
    assert (row(retrying_later).state, row(scheduled_later).state) == (State.RETRYING, State.SCHEDULED)
    assert engine.claim_due(limit=100) == []  # claimed now, by this relay


def test_claim_due_takes_the_oldest_first_up_to_its_limit(engine):
    jobs = [built(created_at=ago(seconds)) for seconds in (30, 10, 20)]
    engine.insert(jobs)
    for job in jobs:
        owe(job, claimed_at=None)
    assert [job.pk for job in engine.claim_due(limit=2)] == [jobs[0].pk, jobs[2].pk]


def test_resend_owes_and_sends_again_only_queued_jobs_with_nothing_owed(
    engine, broker, django_capture_on_commit_callbacks
):
    lost, owed, started = enqueue(), enqueue(), enqueue()
    engine.publish([lost, started])
    broker.delete(*message_keys(broker))  # Redis lost their messages
    run(engine, started)
    owed_claim = claimed(owed)  # its publisher is still at it

    with django_capture_on_commit_callbacks(execute=True):
        assert engine.resend(job_ids=ids(lost, owed, started)) == 1

    assert sent(broker) == [("ops.ping", str(lost.pk))]
    assert (row(lost).state, claimed(lost), claimed(owed)) == (State.QUEUED, NOT_OWED, owed_claim)
    assert row(lost).queued_at == lost.queued_at  # its place in the queue's order is kept
    assert row(started).state == State.STARTED


def test_job_ids_in_broker_reads_every_queue_list_and_the_unacknowledged(engine, broker):
    from tasks.platform.selectors.broker_messages import job_ids_in_broker

    single, batch, taken = enqueue(), noops(3), enqueue(payload={"hold_seconds": 1})
    engine.publish([single, *batch, taken])
    # A worker took one: kombu moves its message from the queue's list into the ``unacked`` hash.
    key, raw = next(
        (key, raw)
        for key in message_keys(broker)
        for raw in broker.lrange(key, 0, -1)
        if json.loads(raw)["headers"]["id"] == str(taken.pk)
    )
    broker.lrem(key, 1, raw)
    broker.hset("unacked", "tag", json.dumps([json.loads(raw), "", "default"]))

    assert job_ids_in_broker() == set(ids(single, *batch, taken))


# -- begin_attempt ------------------------------------------------------------------------------


def test_begin_attempt_starts_a_job_and_opens_attempt_one(engine, events):
    job = enqueue(max_attempts=2)
    received = events(job)
    with clock() as during:
        attempt = run(engine, job, queue="critical")

    assert attempt == Attempt(number=1, used=1, allowed=2, then_id=None, has_next=False)
    stored = row(job)
    assert (stored.state, stored.attempts, stored.worker, stored.queue) == (State.STARTED, 1, WORKER, "critical")
    assert stored.started_at in during
    opened = attempt_row(job, 1)
    assert (opened.outcome, opened.worker, opened.started_at, opened.finished_at) == (
        "running",
        WORKER,
        stored.started_at,
        None,
    )
    assert [(event["type"], event["state"], event["worker"]) for event in received()] == [("state", "started", WORKER)]


def test_a_run_tells_redis_its_start_and_its_end_in_one_round_trip_each(engine, events, redis_round_trips):
    job = enqueue()
    received = events(job)
    redis_round_trips.clear()

    attempt = run(engine, job)
    assert len(redis_round_trips) == 1, redis_round_trips  # the "started" event with the started count
    engine.succeed(job_id=str(job.pk), attempt=attempt, result={"ok": True})
    assert len(redis_round_trips) == 2, redis_round_trips

    assert [event["state"] for event in received()] == ["started", "succeeded"]
    assert b"PUBLISH" in redis_round_trips[1] and b"HINCRBY" in redis_round_trips[1]


def test_begin_attempt_without_a_queue_keeps_the_jobs(engine):
    job = enqueue(queue="bulk")
    assert run(engine, job, queue="").number == 1
    assert row(job).queue == "bulk"


@pytest.mark.parametrize("end", ["succeed", "fail", "cancel"])
def test_begin_attempt_of_a_finished_job_is_refused(engine, end):
    job = enqueue()
    if end == "cancel":
        engine.cancel(job_id=job.pk, via="api")
    else:
        attempt = run(engine, job)
        if end == "succeed":
            engine.succeed(job_id=str(job.pk), attempt=attempt, result=None)
        else:
            fail(engine, job, attempt, State.DEAD)
    before = row(job)

    assert run(engine, job) is None

    after = row(job)
    assert (after.state, after.attempts, after.started_at) == (before.state, before.attempts, before.started_at)
    assert len(attempts(job)) == (0 if end == "cancel" else 1)


def test_begin_attempt_of_a_started_job_closes_its_lost_attempt(engine):
    job = enqueue()
    run(engine, job, worker="lost@host")
    with clock() as during:
        attempt = run(engine, job)

    assert (attempt.number, attempt.used) == (2, 2)
    assert attempts(job) == [(1, "lost"), (2, "running")]
    lost = attempt_row(job, 1)
    assert lost.finished_at in during
    assert "lost" in lost.error
    assert (row(job).state, row(job).attempts, row(job).worker) == (State.STARTED, 2, WORKER)


def test_begin_attempt_after_max_worker_losses_kills_the_job(engine, finished):
    job = enqueue()
    assert run(engine, job, max_worker_losses=2).number == 1
    assert run(engine, job, max_worker_losses=2).number == 2
    with clock() as during:
        assert run(engine, job, max_worker_losses=2) is None

    stored = row(job)
    assert (stored.state, stored.attempts) == (State.DEAD, 2)
    assert "lost 2 times" in stored.error
    assert stored.finished_at in during
    assert attempts(job) == [(1, "lost"), (2, "lost")]
    assert finished == [(str(job.pk), State.DEAD)]


def test_begin_attempt_of_a_message_without_a_row_writes_its_row(engine):
    job_id = str(uuid7())
    with clock() as during:
        attempt = engine.begin_attempt(
            job_id=job_id,
            task_name="ops.ping",
            queue="default",
            worker=WORKER,
            payload={"hold_seconds": 0},
            origin="beat:elsewhere",
            max_attempts=3,
            max_worker_losses=3,
        )

    assert attempt == Attempt(number=1, used=1, allowed=3)
    stored = Job.objects.get(pk=job_id)
    assert (stored.task_name, stored.queue, stored.payload, stored.origin) == (
        "ops.ping",
        "default",
        {"hold_seconds": 0},
        "beat:elsewhere",
    )
    assert (stored.state, stored.attempts) == (State.STARTED, 1)
    assert stored.queued_at in during and stored.started_at in during
    assert attempts(stored) == [(1, "running")]


# -- claim_batch --------------------------------------------------------------------------------


def test_claim_batch_starts_the_members_not_finished(engine):
    first, second, cancelled = noops(3)
    engine.cancel(job_id=cancelled.pk, via="api")
    with clock() as during:
        claimed = claim(engine, [first, second, cancelled])

    allowed = settings.TASK_MAX_ATTEMPTS
    assert claimed == {str(job.pk): Attempt(number=1, used=1, allowed=allowed) for job in (first, second)}
    for job in (first, second):
        stored = row(job)
        assert (stored.state, stored.attempts, stored.worker) == (State.STARTED, 1, WORKER)
        assert stored.started_at in during
        assert attempts(job) == [(1, "running")]
    assert (row(cancelled).state, attempts(cancelled)) == (State.CANCELLED, [])


def test_claim_batch_with_a_started_member_claims_none_and_publishes_each_alone(
    engine, broker, django_capture_on_commit_callbacks
):
    started, first, second, cancelled = noops(4)
    claim(engine, [started])  # its worker is lost; the batch is delivered again
    engine.cancel(job_id=cancelled.pk, via="api")

    with django_capture_on_commit_callbacks(execute=True):
        with clock() as during:
            assert claim(engine, [started, first, second, cancelled]) == {}
        for job in (started, first, second):
            assert (row(job).state, claimed(job) in during) == (State.QUEUED, True)
        assert sent(broker) == []  # published once committed

    assert attempts(started) == [(1, "lost")]
    assert (row(started).attempts, attempts(first)) == (1, [])
    assert sent(broker) == [("ops.noop", job_id) for job_id in ids(started, first, second)]
    assert {row(job).state for job in (started, first, second)} == {State.QUEUED}
    assert row(cancelled).state == State.CANCELLED


def test_claim_batch_kills_a_member_lost_too_often_and_publishes_the_others(
    engine, broker, django_capture_on_commit_callbacks
):
    poison, other = noops(2)
    claim(engine, [poison])
    with django_capture_on_commit_callbacks(execute=True):
        assert claim(engine, [poison, other], max_worker_losses=1) == {}

    assert (row(poison).state, attempts(poison)) == (State.DEAD, [(1, "lost")])
    assert sent(broker) == [("ops.noop", str(other.pk))]


# -- the PostgreSQL engine's own paths ----------------------------------------------------------


def test_the_postgres_engine_takes_its_one_statement_paths(engine):
    """So the contract above holds those paths, not only the reference ones they fall back to."""
    if not isinstance(engine, PostgresEngine):
        pytest.skip("the PostgreSQL engine's own paths")
    flow.pauses()  # this process's snapshot of the pauses, read once a second, not per insert
    jobs = [built(), built()]
    with CaptureQueriesContext(connection) as inserted:
        engine.insert(jobs)
    with clock() as during, CaptureQueriesContext(connection) as inserted_one:
        [one] = engine.insert([built()])
    assert (row(one).state, claimed(one) in during) == (State.QUEUED, True)
    with CaptureQueriesContext(connection) as published:
        engine.publish([one])
    with CaptureQueriesContext(connection) as began:
        attempt = run(engine, jobs[0])
    with CaptureQueriesContext(connection) as succeeded:
        engine.succeed(job_id=str(jobs[0].pk), attempt=attempt, result=1)

    assert [query["sql"].split()[0] for query in inserted] == ["COPY", "INSERT"]  # the jobs, their outbox rows
    assert [query["sql"].split()[0] for query in inserted_one] == ["WITH"]  # both rows in one statement
    assert {f: getattr(row(one), f) for f in FIELDS} == {f: getattr(one, f) for f in FIELDS}
    assert ([query["sql"].split()[0] for query in published], claimed(one)) == (["DELETE"], NOT_OWED)
    assert (len(began), len(succeeded)) == (1, 1)
    assert (row(jobs[0]).state, attempts(jobs[0])) == (State.SUCCEEDED, [(1, "succeeded")])
