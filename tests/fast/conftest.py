"""Fixtures and helpers of the fast tier: each engine implementation, jobs as the enqueue service
builds them, and reads of what a transition wrote (rows, attempts, actions, messages)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from tasks.models import Job, JobAction, JobAttempt, JobOutbox
from tasks.platform.engine import Attempt, job_finished
from tasks.platform.engine.orm import OrmEngine
from tasks.platform.engine.postgres import PostgresEngine
from tasks.platform.services.jobs import JobRequest, job_enqueue, job_enqueue_many

#: the hostname a worker would report
WORKER = "fast@test"


@pytest.fixture(params=["orm", "postgres"])
def engine(request: pytest.FixtureRequest) -> OrmEngine:
    """Each implementation: the reference ORM engine on any database, the PostgreSQL one on PostgreSQL.
    Transitions are called on this instance; the enqueue service used to build jobs calls ``engine()``."""
    if request.param == "orm":
        return OrmEngine()
    if connection.vendor != "postgresql":
        pytest.skip("the PostgreSQL engine needs PostgreSQL (DATABASE_URL=postgres://...)")
    return PostgresEngine()


@pytest.fixture
def user():
    """Who an operator's action is recorded as (no password: hashing one costs more than a test here)."""
    return get_user_model().objects.create_user("fast-operator")


@pytest.fixture
def finished() -> Iterator[list[tuple[str, str]]]:
    """(job id, state) of each ``job_finished`` signal sent during the test."""
    sent: list[tuple[str, str]] = []

    def receiver(sender, *, job_id, state, error, **kwargs) -> None:
        sent.append((str(job_id), state))

    job_finished.connect(receiver, weak=False, dispatch_uid="fast-tier")
    yield sent
    job_finished.disconnect(dispatch_uid="fast-tier")


@pytest.fixture
def dead_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis down for this process's publishes: its producers point at a port nothing listens on."""
    from kombu import Connection, pools

    from project.celery import app
    from tests.support.processes import free_port

    dead = Connection(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    monkeypatch.setattr(app.amqp, "_producer_pool", pools.producers[dead])


@pytest.fixture
def events() -> Iterator:
    """``watch(job)`` subscribes to a job's live events on the real Redis and returns a function
    that gives the events published since, as watchers receive them."""
    from tasks.platform.engine.events import job_channel

    pubsub = redis.Redis.from_url(settings.REDIS_URL).pubsub(ignore_subscribe_messages=True)

    def watch(job: Job):
        pubsub.subscribe(job_channel(job.pk))
        pubsub.get_message(timeout=1)  # the subscription is confirmed: later events reach it

        def received() -> list[dict]:
            messages = []
            while (message := pubsub.get_message(timeout=0.2)) is not None:
                messages.append(json.loads(message["data"]))
            return messages

        return received

    yield watch
    pubsub.close()


@pytest.fixture
def redis_round_trips(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What this process sends to Redis from now on: one entry per round trip (a command, or a
    pipeline of them), its packed commands. The platform's client is connected first: a connection's
    handshake is not counted."""
    from redis.connection import AbstractConnection

    from tasks.platform.queues import platform_redis

    platform_redis().ping()
    sent: list[bytes] = []
    send = AbstractConnection.send_packed_command

    def counted(self, command, check_health=True):
        sent.append(b"".join(command) if isinstance(command, list | tuple) else command)
        return send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return sent


# -- building jobs ------------------------------------------------------------------------------


def enqueue(task_name: str = "ops.ping", **options) -> Job:
    """A job through the enqueue service: queued with its message owed and claimed by this process
    (its publish waits for a commit, which never comes in a test that rolls back), or scheduled,
    or waiting."""
    return job_enqueue(task_name=task_name, origin="fast", **options)


def noops(count: int) -> list[Job]:
    """Jobs of a task whose first attempts travel many to a message (ops.noop), in id order."""
    return job_enqueue_many(requests=[JobRequest("ops.noop", {}) for _ in range(count)], origin="fast")


def built(task_name: str = "ops.ping", *, now: datetime | None = None, **fields) -> Job:
    """An unsaved job as the enqueue service builds one (tasks.platform.services.jobs), for
    ``engine.insert``: pending, to run now; ``fields`` override (an owner, a key, a state)."""
    now = now or timezone.now()
    values = {
        "task_name": task_name,
        "payload": {"hold_seconds": 0},
        "queue": "default",
        "priority": 5,
        "origin": "fast",
        "state": Job.State.PENDING,
        "created_at": now,
        **fields,
    }
    job = Job(**values)
    job.created, job.publish_error = True, ""
    return job


def run(engine: OrmEngine, job: Job, *, worker: str = WORKER, queue: str | None = None, **limits) -> Attempt | None:
    """``begin_attempt`` as a worker's delivery of the job's message calls it."""
    return engine.begin_attempt(
        job_id=str(job.pk),
        task_name=job.task_name,
        queue=job.queue if queue is None else queue,
        worker=worker,
        payload=job.payload,
        origin=job.origin,
        max_attempts=limits.get("max_attempts", settings.TASK_MAX_ATTEMPTS),
        max_worker_losses=limits.get("max_worker_losses", settings.TASK_MAX_WORKER_LOSSES),
    )


def claim(engine: OrmEngine, jobs: list[Job], *, max_worker_losses: int | None = None) -> dict[str, Attempt]:
    """``claim_batch`` as a worker's delivery of a batch message calls it."""
    return engine.claim_batch(
        job_ids=[str(job.pk) for job in jobs],
        task_name=jobs[0].task_name,
        worker=WORKER,
        queue="default",
        max_attempts=settings.TASK_MAX_ATTEMPTS,
        max_worker_losses=max_worker_losses or settings.TASK_MAX_WORKER_LOSSES,
    )


def fail(engine: OrmEngine, job: Job, attempt: Attempt | None, state: str, *, retry_at=None, error="E: boom") -> None:
    number = None if attempt is None else attempt.number
    engine.fail(job_id=str(job.pk), number=number, error=error, traceback="tb", state=state, retry_at=retry_at)


# -- reading what a transition wrote ------------------------------------------------------------


def row(job: Job) -> Job:
    return Job.objects.get(pk=job.pk)


#: what ``claimed`` says of a job whose message is not owed
NOT_OWED = "not owed"


def claimed(job: Job) -> datetime | str | None:
    """When the job's owed message was claimed (None: free for the relay), or NOT_OWED."""
    owed = JobOutbox.objects.filter(job_id=job.pk).values_list("claimed_at", flat=True)
    return owed[0] if owed else NOT_OWED


def owe(job: Job, *, claimed_at: datetime | None) -> None:
    """Make the job's message owed with this claim, as a publisher that failed (None: the job is
    pending) or died (an old claim) left it."""
    JobOutbox.objects.update_or_create(job_id=job.pk, defaults={"claimed_at": claimed_at})
    if claimed_at is None:
        Job.objects.filter(pk=job.pk).update(state=Job.State.PENDING, queued_at=None)


def attempts(job: Job) -> list[tuple[int, str]]:
    """(number, outcome) of each attempt of the job."""
    return list(JobAttempt.objects.filter(job_id=job.pk).order_by("number").values_list("number", "outcome"))


def attempt_row(job: Job, number: int) -> JobAttempt:
    return JobAttempt.objects.get(job_id=job.pk, number=number)


def actions(job: Job) -> list[tuple[str, str, str, int | None]]:
    """(kind, from state, via, by) of each action recorded on the job."""
    return list(
        JobAction.objects.filter(job_id=job.pk).order_by("at", "pk").values_list("kind", "from_state", "via", "by")
    )


def sent(broker: redis.Redis) -> list[tuple[str, str]]:
    """(task name, job id) of each message waiting in Redis (a batch's id is its own)."""
    messages = []
    for key in broker.scan_iter():
        if not key.startswith(b"_kombu") and broker.type(key) == b"list":
            for raw in broker.lrange(key, 0, -1):
                headers = json.loads(raw)["headers"]
                messages.append((headers["task"], headers["id"]))
    return sorted(messages)


def ids(*jobs: Job) -> list[str]:
    return sorted(str(job.pk) for job in jobs)


@dataclass
class Window:
    start: datetime
    end: datetime | None = None

    def __contains__(self, at: datetime | None) -> bool:
        return at is not None and self.end is not None and self.start <= at <= self.end


@contextmanager
def clock() -> Iterator[Window]:
    """The time a transition ran in: ``assert row.finished_at in window``."""
    window = Window(timezone.now())
    yield window
    window.end = timezone.now()


def ago(seconds: float) -> datetime:
    return timezone.now() - timedelta(seconds=seconds)
