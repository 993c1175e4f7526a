"""Jobs whose messages Redis lost, or a lost worker took, sent again from the ledger.

The guarantee: a job the ledger holds as ``queued`` whose message Redis lost (a FLUSHDB, a restart
or a failover that lost the last writes, an empty replica promoted) is sent again, once, within
RECOVER_EVERY_SECONDS + BROKER_LOSS_GRACE_SECONDS of Redis answering after the loss, plus the time
to read its queues. A job whose message survived is not sent again.

How, once a relay pass (``BrokerWatch.check``): the broker's mark and run id are read, two Redis
commands and no query (tasks.platform.selectors.broker_messages). When either changed since the
last pass, and on a relay's first pass, the ledger's queued jobs (through the state index, never
the whole ledger) are compared with the job ids in Redis: those missing are suspects. A message
being handed to a worker is in neither of Redis's places for a moment, so suspects are judged
again after the grace: those still queued and still missing are sent again (``Engine.resend``).
The judgement and the send hold a Redis lock, so that two relays never send one job twice.

Not seen: a loss that leaves the mark and the run id as they were (a queue's list deleted by
hand, keys evicted under a ``maxmemory`` policy other than noeviction).

Taken by a worker that is gone: a worker takes a message into kombu's ``unacked`` hash, where
Redis keeps it until the worker acknowledges it, or gives it back after the visibility timeout
(an hour). A worker killed, or cut from Redis, after taking a message and before its job began
leaves it there: the job is queued and its message is in Redis, but nobody will deliver it for an
hour. A live worker begins a job at once: it takes no more messages than it has processes (prefetch
multiplier 1, late acknowledgement). So on every pass, a job still queued whose message was taken
WORKER_LOST_AFTER ago is sent again (``Engine.resend``), under the same lock, and that delivery is
dropped from ``unacked`` so that Redis never gives it back. Were its worker alive after all, the
job runs once: a message of a job already started or finished is dropped when it arrives.
"""

from __future__ import annotations

import logging
import time
import uuid

from django.conf import settings

from tasks.platform.engine import engine
from tasks.platform.selectors.broker_messages import (
    BrokerMark,
    broker_mark,
    broker_time,
    job_ids_in_broker,
    jobs_taken_before,
    taken_forget,
)
from tasks.platform.selectors.jobs import jobs_queued_and_sent
from tasks.platform.selectors.queues import broker_redis

logger = logging.getLogger(__name__)

#: held while one relay judges and sends the suspects; longer than a judgement takes
RESEND_LOCK = "platform:broker:resend-lock"
RESEND_LOCK_SECONDS = 60


class BrokerWatch:
    """One relay's watch over the broker's data, from pass to pass."""

    def __init__(self) -> None:
        self._seen: BrokerMark | None = None
        self._suspects: set[str] = set()
        self._suspected_at = 0.0

    def check(self) -> int:
        """Send again the jobs a loss of Redis's data took, once their grace is over, and those
        a gone worker took; how many. Raises redis.RedisError when Redis does not answer."""
        return self._check_lost() + self._check_taken()

    def _check_lost(self) -> int:
        """Look for a loss since the last pass, and send again the jobs it took once their grace
        is over; how many were sent."""
        current = broker_mark(new=uuid.uuid4().hex)
        if current != self._seen:
            if self._seen is not None:
                logger.warning("relay: Redis restarted or lost data (%s, now %s): lost jobs?", self._seen, current)
            self._seen = current
            self._suspects |= jobs_queued_and_sent() - job_ids_in_broker()
            self._suspected_at = time.monotonic()
        if not self._suspects or time.monotonic() - self._suspected_at < settings.BROKER_LOSS_GRACE_SECONDS:
            return 0
        lock = broker_redis().lock(RESEND_LOCK, timeout=RESEND_LOCK_SECONDS, blocking=False)
        if not lock.acquire():
            return 0  # another relay judges now: these are judged again next pass
        try:
            sent = engine().resend(job_ids=self._suspects - job_ids_in_broker())
        finally:
            lock.release()
        self._suspects.clear()
        if sent:
            logger.warning("relay: %d queued job(s) whose messages Redis lost were sent again", sent)
        return sent

    def _check_taken(self) -> int:
        """Send again the queued jobs whose messages a worker took WORKER_LOST_AFTER ago without
        beginning them, and forget those deliveries; how many were sent."""
        taken = jobs_taken_before(broker_time() - settings.WORKER_LOST_AFTER)
        if not taken:
            return 0
        lock = broker_redis().lock(RESEND_LOCK, timeout=RESEND_LOCK_SECONDS, blocking=False)
        if not lock.acquire():
            return 0
        try:
            stuck = jobs_queued_and_sent(among=taken)
            sent = engine().resend(job_ids=stuck) if stuck else 0
            if stuck:
                taken_forget([taken[job_id] for job_id in stuck])
        finally:
            lock.release()
        if sent:
            logger.warning("relay: %d queued job(s) a gone worker had taken were sent again", sent)
        return sent
