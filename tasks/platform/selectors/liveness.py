"""Whether a started job's run goes on, from the heartbeats workers write to Redis.

Each worker's main process writes its heartbeat every WORKER_HEARTBEAT_SECONDS
(tasks.platform.heartbeats): one key per worker, gone WORKER_LOST_AFTER seconds after the last one,
holding each job it runs with the pid of the process running it. A run goes on while its worker's
heartbeat lists it. A run's process can die while its worker lives (a pool child killed): its
worker's next heartbeat no longer lists it, and the message comes back to be run again at once.
A heartbeat's age is read from the key's remaining time to live, by Redis's clock alone.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import redis
from django.conf import settings

from tasks.platform.models import Job
from tasks.platform.queues import WORKER_HEARTBEAT_SECONDS, platform_redis, worker_key
from tasks.platform.selectors.broker_messages import broker_mark_age

logger = logging.getLogger(__name__)

#: a worker whose latest heartbeat is older than this missed one at least: it is silent
SILENT_AFTER_SECONDS = 2.5 * WORKER_HEARTBEAT_SECONDS
#: how long a message of a started job waits at most for the next heartbeat of the job's worker:
#: a worker that sends none falls silent before
NEXT_HEARTBEAT_WAIT = SILENT_AFTER_SECONDS + 0.5
#: how often it looks
_POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Heartbeat:
    beat: int
    #: (job id, pid of the process running it)
    runs: frozenset[tuple[str, int | None]]
    #: seconds since it was written or renewed
    age: float

    def runs_job(self, job_id: str, *, besides_pid: int | None = None) -> bool:
        """Whether the worker runs the job in a process other than ``besides_pid``."""
        return any(job == job_id and pid != besides_pid for job, pid in self.runs)

    @property
    def silent(self) -> bool:
        return self.age > SILENT_AFTER_SECONDS


@dataclass(frozen=True)
class LostRun:
    """A started job's attempt whose run stopped without its worker's word."""

    worker: str
    attempt: int
    reason: str


def heartbeats(workers: Iterable[str]) -> dict[str, Heartbeat | None]:
    """Each worker's latest heartbeat, None for one that stopped answering (one round trip).
    Raises redis.RedisError when Redis does not answer."""
    workers = sorted(set(workers))
    if not workers:
        return {}
    with platform_redis().pipeline(transaction=False) as pipeline:
        for worker in workers:
            pipeline.get(worker_key(worker))
            pipeline.pttl(worker_key(worker))
        replies = pipeline.execute()
    return {
        worker: _decoded(value, ttl_ms)
        for worker, value, ttl_ms in zip(workers, replies[::2], replies[1::2], strict=True)
    }


def _decoded(value: bytes | None, ttl_ms: int) -> Heartbeat | None:
    if value is None or ttl_ms < 0:
        return None
    heartbeat = json.loads(value)
    return Heartbeat(
        beat=heartbeat["beat"],
        runs=frozenset((job, pid) for job, pid in heartbeat["runs"]),
        age=heartbeat["ttl"] - ttl_ms / 1000,
    )


def runs_going_on(runs: dict[str, str], *, here: str) -> set[str]:
    """Of started jobs (id -> the worker that started their attempt), those whose run goes on: a
    message of one of them is a duplicate. Asked by a process of the worker ``here`` about to run
    them, after their messages reached it. A worker that stopped answering or is silent runs
    nothing (its message came back, as after its death). Any other is asked for its next heartbeat
    (waited for, up to NEXT_HEARTBEAT_WAIT), written after the message came: its latest may
    still list a run lost just before (a pool child killed, its message back at once) or not yet
    one that just began. This process (which runs the message) is not the earlier run. When Redis
    does not answer, no run is taken to go on."""
    own = os.getpid()

    def listed(heartbeat: Heartbeat | None, job_id: str, worker: str) -> bool:
        return (
            heartbeat is not None
            and not heartbeat.silent
            and heartbeat.runs_job(job_id, besides_pid=own if worker == here else None)
        )

    try:
        first = heartbeats(runs.values())
        latest = _next_heartbeats({worker: beat for worker, beat in first.items() if beat and not beat.silent})
    except redis.RedisError as exc:
        logger.warning("worker heartbeats unknown, runs taken as lost: %s", exc)
        return set()
    return {job_id for job_id, worker in runs.items() if listed(latest.get(worker), job_id, worker)}


def _next_heartbeats(first: dict[str, Heartbeat]) -> dict[str, Heartbeat | None]:
    """Each worker's first heartbeat after ``first``, or its latest once it fell silent; for one
    whose heartbeat a run's progress reports kept renewing while its main process did not answer,
    its latest after NEXT_HEARTBEAT_WAIT."""
    latest: dict[str, Heartbeat | None] = {}
    waiting = set(first)
    deadline = time.monotonic() + NEXT_HEARTBEAT_WAIT
    while waiting:
        time.sleep(_POLL_SECONDS)
        overdue = time.monotonic() >= deadline
        for worker, heartbeat in heartbeats(waiting).items():
            if overdue or heartbeat is None or heartbeat.beat != first[worker].beat or heartbeat.silent:
                latest[worker] = heartbeat
                waiting.discard(worker)
    return latest


def runs_lost(*, started_before: datetime, limit: int) -> dict[str, LostRun]:
    """Started jobs whose attempt began before ``started_before`` (older than any heartbeat that
    could still be on its way) and whose run stopped: their worker stopped answering, or answers
    and no longer runs them (the run ended without a word to the ledger). Job id -> the
    lost run; oldest first, up to ``limit``. Raises redis.RedisError when Redis does not answer."""
    started = list(
        Job.objects.filter(state=Job.State.STARTED, started_at__lt=started_before)
        .order_by("started_at")
        .values_list("pk", "worker", "attempts")[:limit]
    )
    if not started:
        return {}
    latest = heartbeats(worker for _, worker, _ in started)
    silence_counts = None not in latest.values() or _heartbeats_kept()
    lost = {}
    for pk, worker, attempt in started:
        heartbeat = latest[worker]
        if heartbeat is None and not silence_counts:
            continue
        if heartbeat is None:
            reason = f"its worker {worker} stopped answering (no heartbeat for {settings.WORKER_LOST_AFTER} s)"
        elif not heartbeat.runs_job(str(pk)):
            reason = f"its worker {worker} answers but no longer runs it"
        else:
            continue
        lost[str(pk)] = LostRun(worker=worker, attempt=attempt, reason=reason)
    return lost


def _heartbeats_kept() -> bool:
    """Whether a missing heartbeat means a silent worker. Not within WORKER_LOST_AFTER of Redis
    starting, or of it losing its keys (a FLUSHDB, an empty replica promoted: the broker's mark is
    gone or new): every heartbeat went, and a live worker's next had no time to come."""
    mark_age = broker_mark_age()
    return (
        mark_age is not None
        and mark_age >= settings.WORKER_LOST_AFTER
        and _redis_uptime() >= settings.WORKER_LOST_AFTER
    )


def _redis_uptime() -> int:
    """Seconds since the Redis server started."""
    return int(platform_redis().info("server")["uptime_in_seconds"])
