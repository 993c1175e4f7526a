"""What the broker holds: the ids of the jobs whose messages are in Redis, and a mark of its data.

A job's message is in Redis in one of two places: a list of its queue (waiting), or kombu's
``unacked`` hash (taken by a worker, not yet acknowledged). Both are read in one MULTI, so a
message moving from one to the other is seen in exactly one of them. The only moment it is in
neither is inside a worker, between the pop and the write to ``unacked``.

The mark is a key the platform keeps in the broker's database, with Redis's ``run_id``: a missing
mark means the database lost its keys (FLUSHDB, an empty replica promoted, a restart without
persistence); a new ``run_id`` means a restart or a failover, after which the last writes may be
gone even if the mark is still there.
"""

from __future__ import annotations

import base64
import json
import math
import uuid
from typing import NamedTuple

from tasks.platform.selectors.queues import broker_redis, queue_list_keys, transport_options

#: the broker's mark: written when absent, so its absence says the database lost its keys
MARK_KEY = "platform:broker:mark"
#: the Celery task that carries a batch of jobs (tasks.platform.engine.publish)
_BATCH_TASK = "jobs.run_batch"


class BrokerMark(NamedTuple):
    mark: str
    run_id: str


def broker_mark(*, new: str) -> BrokerMark:
    """The broker's mark (``new``, written now with Redis's time, when it was absent) and its
    server's run id. Raises redis.RedisError when Redis does not answer."""
    client = broker_redis()
    seconds, _ = client.time()
    pipe = client.pipeline(transaction=True)
    pipe.set(MARK_KEY, f"{seconds}:{new}", nx=True)
    pipe.get(MARK_KEY)
    _, mark = pipe.execute()
    return BrokerMark(mark.decode(), str(client.info("server")["run_id"]))


def broker_mark_age() -> float | None:
    """Seconds since the broker's mark was written, by Redis's clock; None when there is none
    (Redis lost its keys since a relay last looked, or no relay ever ran). A mark written before
    marks carried their time counts as old. Raises redis.RedisError when Redis does not answer."""
    pipe = broker_redis().pipeline(transaction=True)
    pipe.get(MARK_KEY)
    pipe.time()
    mark, (seconds, microseconds) = pipe.execute()
    if mark is None:
        return None
    written, _, _ = mark.decode().partition(":")
    try:
        return seconds + microseconds / 1e6 - int(written)
    except ValueError:
        return math.inf


def job_ids_in_broker() -> set[str]:
    """The ids of every job whose message waits in a queue's list or is held unacknowledged by a
    worker, read in one MULTI. Raises redis.RedisError when Redis does not answer."""
    prefix = transport_options().get("global_keyprefix", "")
    pipe = broker_redis().pipeline(transaction=True)
    for keys in queue_list_keys().values():
        for key in keys:
            pipe.lrange(key, 0, -1)
    pipe.hvals(f"{prefix}unacked")
    *lists, unacked = pipe.execute()
    ids: set[str] = set()
    for raw in (message for messages in lists for message in messages):
        ids.update(_job_ids(raw))
    for entry in unacked:  # kombu keeps [message, exchange, routing key]
        ids.update(_job_ids(json.loads(entry)[0]))
    return ids


def jobs_taken_before(cutoff: float) -> dict[str, str]:
    """Job id -> delivery tag, for each job sent alone whose message a worker took before
    ``cutoff`` (Redis's clock, Unix time) and holds unacknowledged still: kombu's ``unacked`` hash,
    through its index of delivery times. A message with an ETA (Celery holds it until then) and a
    batch's (its members rightly wait their turn) are left out. Raises redis.RedisError."""
    prefix = transport_options().get("global_keyprefix", "")
    client = broker_redis()
    tags = client.zrangebyscore(f"{prefix}unacked_index", "-inf", cutoff)
    if not tags:
        return {}
    taken: dict[str, str] = {}
    for tag, entry in zip(tags, client.hmget(f"{prefix}unacked", tags), strict=True):
        message = json.loads(entry)[0] if entry else {}
        headers = (message.get("headers") or {}) if isinstance(message, dict) else {}
        if headers.get("task") != _BATCH_TASK and not headers.get("eta") and _is_uuid(headers.get("id")):
            taken[str(headers["id"])] = tag.decode()
    return taken


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def taken_forget(tags: list[str]) -> None:
    """Drop these unacknowledged messages from kombu's ``unacked`` hash and index, so that Redis
    does not give them back after the visibility timeout: their jobs were sent again. (kombu has no
    public call that gives up another, dead consumer's delivery.) Raises redis.RedisError."""
    prefix = transport_options().get("global_keyprefix", "")
    pipe = broker_redis().pipeline(transaction=True)
    pipe.hdel(f"{prefix}unacked", *tags)
    pipe.zrem(f"{prefix}unacked_index", *tags)
    pipe.execute()


def broker_time() -> float:
    """Redis's clock, as Unix time: kombu stamps deliveries by the workers' clocks, which agree
    with it (NTP) far within WORKER_LOST_AFTER."""
    seconds, microseconds = broker_redis().time()
    return seconds + microseconds / 1e6


def _job_ids(raw: bytes | str | dict) -> list[str]:
    """The job ids a kombu message carries: its task id, or the members of a batch."""
    try:
        message = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        headers = message.get("headers") or {}
        if headers.get("task") != _BATCH_TASK:
            return [headers["id"]] if headers.get("id") else []
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _, kwargs, _ = json.loads(body)
        return [str(job_id) for job_id, _ in kwargs["jobs"]]
    except (ValueError, KeyError, TypeError):
        return []  # not a message of this platform's (protocol 2, JSON): it names no job
