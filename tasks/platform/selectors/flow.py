"""Why a job that is not running is not running: one code and one sentence, for the API, the job
page and Flower. Flow control's reasons are the ledger's (the engine writes them with the held
state); the others follow from the job's state, and whether any worker consumes its queue."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import timedelta
from functools import cache

import redis
from django.conf import settings
from django.db.models import Q

from tasks.platform.concurrency import CONCURRENCY, RATES, parse_rate
from tasks.platform.models import ConcurrencyOverride, Job, Pause, PauseScope, RateOverride
from tasks.platform.models.jobs import IN_QUEUE_STATES, SLOT_STATES, HeldReason
from tasks.platform.queues import QueueName, consumer_key, redis_client

#: slot holders named in a concurrency reason
HOLDERS_SHOWN = 10


@dataclass(frozen=True)
class Blocked:
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def job_blocked(job: Job) -> Blocked | None:
    """Why the job does not run now; None when it runs, ran, or nothing holds it."""
    if job.state == Job.State.HELD and job.held_reason == HeldReason.CONCURRENCY:
        return _at_limit(job)
    if (
        job.state in (Job.State.HELD, Job.State.QUEUED)
        and (pause := paused_by(queue=job.queue, task_name=job.task_name)) is not None
    ):
        by = pause.by.get_username() if pause.by else "the system"
        since = f"{pause.at:%Y-%m-%d %H:%M:%S} UTC"
        return Blocked("paused", f"its {pause.scope} {pause.name} is paused, by {by} via {pause.via} since {since}")
    if job.state == Job.State.HELD and job.held_reason == HeldReason.FAIR_SHARE:
        return _awaiting_turn(job)
    if job.state == Job.State.SCHEDULED and job.held_reason == HeldReason.RATE:
        rate = rate_for(job.task_name, job.flow_key)
        return Blocked("rate", f"{job.task_name} starts at most {rate}; its turn comes at {job.run_at:%H:%M:%S.%f} UTC")
    if job.state == Job.State.SCHEDULED:
        return Blocked("scheduled", f"scheduled for {job.run_at:%Y-%m-%d %H:%M:%S} UTC")
    if job.state == Job.State.RETRYING:
        return Blocked("scheduled", f"retrying at {job.run_at:%Y-%m-%d %H:%M:%S} UTC, after attempt {job.attempts}")
    if job.state == Job.State.WAITING:
        if job.after_id is not None:
            return Blocked("workflow", f"waiting for the step before it ({job.after_id}) to succeed")
        return Blocked("workflow", f"waiting for {job.waiting_for} member(s) of its group to succeed")
    if job.state == Job.State.PENDING:
        return Blocked("unpublished", "its message could not be sent; the relay sends it when Redis answers")
    if job.state == Job.State.QUEUED and (consumers := queues_consumed()) is not None and job.queue not in consumers:
        return Blocked("no_worker", f"no worker consumes queue {job.queue!r}")
    return None


def paused_by(*, queue: str, task_name: str) -> Pause | None:
    """The pause that holds a job of this queue and task now (read from the database), if any."""
    return (
        Pause.objects.select_related("by")
        .filter(Q(scope=PauseScope.QUEUE, name=queue) | Q(scope=PauseScope.TASK, name=task_name))
        .order_by("scope")
        .first()
    )


def limit_for(task_name: str, key: str) -> int | None:
    """The task's concurrency limit for this key: an admin's override for the key, else for every
    key, else the declared one (None: the task has none)."""
    declared = CONCURRENCY.get(task_name)
    if declared is None:
        return None
    overrides = dict(
        ConcurrencyOverride.objects.filter(task_name=task_name, key__in=[key, ""]).values_list("key", "running")
    )
    return overrides.get(key, overrides.get("", declared.running))


def rate_for(task_name: str, key: str) -> str | None:
    """The task's rate for this key ("10/s"): an admin's override for the key, else for every key,
    else the declared one (None: the task has none)."""
    declared = RATES.get(task_name)
    if declared is None:
        return None
    overrides = dict(RateOverride.objects.filter(task_name=task_name, key__in=[key, ""]).values_list("key", "rate"))
    return overrides.get(key, overrides.get("", declared.rate))


def interval_for(task_name: str, key: str) -> timedelta | None:
    """The time between two starts of the task's jobs of this key (None: no rate)."""
    rate = rate_for(task_name, key)
    return None if rate is None else parse_rate(rate)


def _at_limit(job: Job) -> Blocked:
    declared = CONCURRENCY.get(job.task_name)
    holders = list(
        Job.objects.filter(task_name=job.task_name, flow_key=job.flow_key, state__in=SLOT_STATES)
        .order_by("created_at")
        .values_list("pk", flat=True)[:HOLDERS_SHOWN]
    )
    key = "" if declared is None or declared.key is None else f" for {declared.key} {job.flow_key}"
    held_by = ", ".join(map(str, holders)) or "jobs that just ended"
    limit = limit_for(job.task_name, job.flow_key)
    return Blocked("concurrency", f"{job.task_name} runs at most {limit} at once{key}; its slots are held by {held_by}")


def _awaiting_turn(job: Job) -> Blocked:
    share = Job.objects.filter(queue=job.queue, share_key=job.share_key)
    ahead = (
        share.filter(state__in=IN_QUEUE_STATES).count()
        + share.filter(
            Q(priority__lt=job.priority)
            | Q(priority=job.priority, created_at__lt=job.created_at)
            | Q(priority=job.priority, created_at=job.created_at, pk__lt=job.pk),
            state=Job.State.HELD,
            held_reason=HeldReason.FAIR_SHARE,
        ).count()
    )
    kind, _, value = job.share_key.partition(":")
    whose = "its owner's" if kind == "owner" else f"{kind} {value}'s"
    return Blocked(
        "fair_share",
        f"owners take turns on queue {job.queue}, {settings.FAIR_SHARE_DEPTH} job(s) each in the queue at once; "
        f"{ahead} of {whose} jobs are ahead of it",
    )


@cache
def _redis() -> redis.Redis:
    return redis_client(socket_connect_timeout=1, socket_timeout=1)


def queues_consumed() -> frozenset[str] | None:
    """Queues some live worker consumes (each worker renews a key per queue at its heartbeat,
    tasks.platform.signals); None when Redis cannot be asked."""
    try:
        alive = _redis().mget([consumer_key(queue) for queue in QueueName.values])
    except redis.RedisError:
        return None
    return frozenset(queue for queue, key in zip(QueueName.values, alive, strict=True) if key is not None)
