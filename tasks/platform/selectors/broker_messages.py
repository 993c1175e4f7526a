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
    """The broker's mark (``new``, written now, when it was absent) and its server's run id.
    Raises redis.RedisError when Redis does not answer."""
    client = broker_redis()
    pipe = client.pipeline(transaction=True)
    pipe.set(MARK_KEY, new, nx=True)
    pipe.get(MARK_KEY)
    _, mark = pipe.execute()
    return BrokerMark(mark.decode(), str(client.info("server")["run_id"]))


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
