"""Live job events on Redis pub/sub: state changes and progress, for the SSE stream.

A transition's events ride with its metric counts, in one round trip (``metric_counts.count``'s
``publish``); ``job_event_publish`` sends an event alone. The ledger stays the record, so a lost
event is only a late update."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from tasks.platform.queues import platform_redis

logger = logging.getLogger(__name__)


def job_channel(job_id: object) -> str:
    return f"jobs:{job_id}:events"


def job_event(*, job_id: object, kind: str, **data: Any) -> tuple[str, str]:
    """The channel and message of an event. Values are encoded as the ledger's JSON columns encode
    them (Decimal, datetime, UUID)."""
    event = {"type": kind, "job": str(job_id), "at": timezone.now().isoformat(), **data}
    return job_channel(job_id), json.dumps(event, cls=DjangoJSONEncoder)


def job_event_publish(*, job_id: object, kind: str, **data: Any) -> None:
    """Tell live watchers of one event, alone."""
    try:
        platform_redis().publish(*job_event(job_id=job_id, kind=kind, **data))
    except redis.RedisError as exc:
        logger.warning("job %s: %s event not published (%s)", job_id, kind, exc)
