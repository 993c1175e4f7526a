"""Per-queue figures: messages waiting in Redis, and the ledger's jobs by state.

``waiting`` comes from the broker, which knows nothing of owners, so it is a global figure. The
ledger counts can be scoped to one owner (what a non-staff caller sees of the platform).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from datetime import timedelta

import redis
from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from tasks.platform.models import Job
from tasks.platform.queues import PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName, redis_client

#: the window of "succeeded" in the overview
SUCCEEDED_WINDOW = timedelta(hours=24)

# Ledger state counted under each figure of the overview.
_STATE_FIGURES = {
    "scheduled": Job.State.SCHEDULED,
    "active": Job.State.STARTED,
    "retrying": Job.State.RETRYING,
    "failed": Job.State.FAILED,
    "dead": Job.State.DEAD,
}


class BrokerUnavailable(Exception):
    """Redis did not answer; the message names it."""


@dataclass(frozen=True)
class QueueCounts:
    queue: str
    waiting: int
    scheduled: int
    active: int
    retrying: int
    failed: int
    dead: int
    succeeded_24h: int

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def queue_overview(*, owner=None) -> list[QueueCounts]:
    """Every queue's figures, in QueueName order; ledger counts of ``owner``'s jobs when given.

    Raises BrokerUnavailable when Redis does not answer.
    """
    waiting = queue_waiting_counts()
    ledger = queue_ledger_counts(owner=owner)
    return [QueueCounts(queue=queue, waiting=waiting[queue], **ledger[queue]) for queue in QueueName.values]


def queue_ledger_counts(*, owner=None) -> dict[str, dict[str, int]]:
    """Jobs per queue and state, in one aggregate query over the ledger."""
    since = timezone.now() - SUCCEEDED_WINDOW
    jobs = Job.objects.filter(
        Q(state__in=_STATE_FIGURES.values()) | Q(state=Job.State.SUCCEEDED, finished_at__gte=since)
    )
    if owner is not None:
        jobs = jobs.filter(owner=owner)
    figures = {name: Count("pk", filter=Q(state=state)) for name, state in _STATE_FIGURES.items()}
    # The dead-letter count: dead jobs nobody has discarded yet.
    figures["dead"] = Count("pk", filter=Q(state=Job.State.DEAD, discarded_at__isnull=True))
    figures["succeeded_24h"] = Count("pk", filter=Q(state=Job.State.SUCCEEDED))
    rows = jobs.order_by().values("queue").annotate(**figures)
    counts = {queue: dict.fromkeys(figures, 0) for queue in QueueName.values}
    for row in rows:
        queue = row.pop("queue")
        if queue in counts:
            counts[queue] = row
    return counts


def queue_waiting_counts() -> dict[str, int]:
    """Messages waiting in the broker per queue: the sum over its priority lists, one pipeline."""
    keys = queue_list_keys()
    try:
        pipe = broker_redis().pipeline(transaction=False)
        for queue_keys in keys.values():
            for key in queue_keys:
                pipe.llen(key)
        lengths = iter(pipe.execute())
    except redis.RedisError as exc:
        raise BrokerUnavailable(f"redis is unavailable ({type(exc).__name__}: {exc})") from exc
    return {queue: sum(next(lengths) for _ in queue_keys) for queue, queue_keys in keys.items()}


def queue_list_keys() -> dict[str, list[str]]:
    """The Redis lists of each queue, most urgent first. With kombu's Redis transport a queue is
    one list per priority step: ``<queue>`` for step 0 and ``<queue><sep><step>`` for the others."""
    options = transport_options()
    steps = options.get("priority_steps") or list(range(PRIORITY_HIGHEST, PRIORITY_LOWEST + 1))
    sep = options.get("sep", ":")
    prefix = options.get("global_keyprefix", "")
    return {
        queue: [f"{prefix}{queue}{sep}{step}" if step else f"{prefix}{queue}" for step in steps]
        for queue in QueueName.values
    }


def transport_options() -> dict:
    from project.celery import app

    return app.conf.broker_transport_options or {}


def broker_redis() -> redis.Redis:
    """A client of the broker's Redis that fails fast: the overview is read by a web request."""
    return _redis(settings.REDIS_URL)


@functools.cache
def _redis(url: str) -> redis.Redis:
    return redis_client(url, socket_connect_timeout=2, socket_timeout=5)
