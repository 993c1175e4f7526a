"""Live job events on Redis pub/sub: state changes and progress, for the SSE stream."""

from __future__ import annotations

import json
import logging
from functools import cache
from typing import Any

import redis
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from tasks.platform.queues import redis_client

logger = logging.getLogger(__name__)


def job_channel(job_id: object) -> str:
    return f"jobs:{job_id}:events"


@cache
def _client() -> redis.Redis:
    return redis_client(socket_connect_timeout=2, socket_timeout=2)


def job_event_publish(*, job_id: object, kind: str, **data: Any) -> None:
    """Tell live watchers; the ledger stays the record, so a lost event is only a late update. Values
    are encoded as the ledger's JSON columns encode them (Decimal, datetime, UUID)."""
    event = {"type": kind, "job": str(job_id), "at": timezone.now().isoformat(), **data}
    try:
        _client().publish(job_channel(job_id), json.dumps(event, cls=DjangoJSONEncoder))
    except redis.RedisError as exc:
        logger.warning("job %s: %s event not published (%s)", job_id, kind, exc)


def job_events_publish(events: list[dict[str, Any]]) -> None:
    """Several events (each ``job_id``, ``kind`` and data) in one round trip: a batch's jobs."""
    if not events:
        return
    at = timezone.now().isoformat()
    pipeline = _client().pipeline(transaction=False)
    for event in events:
        job_id, kind = event.pop("job_id"), event.pop("kind")
        pipeline.publish(
            job_channel(job_id),
            json.dumps({"type": kind, "job": str(job_id), "at": at, **event}, cls=DjangoJSONEncoder),
        )
    try:
        pipeline.execute()
    except redis.RedisError as exc:
        logger.warning("%d job event(s) not published (%s)", len(events), exc)
