"""The relay: publishes what enqueue could not, and delayed jobs and retries when they fall due;
admits held jobs whose key has a free slot or whose pause is gone (tasks.platform.engine.flow);
runs again the started jobs whose worker stopped answering (tasks.platform.selectors.liveness); and
sends again the queued jobs whose messages Redis lost (tasks.platform.services.broker_loss).

It is the only safety net of the engine's publish (tasks.platform.engine.orm): every pending job whose
publish is unclaimed or whose claim expired, and every delayed job or retry that fell due, is
claimed (``SKIP LOCKED``, so two relays never take the same job) and published.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import redis
from django.conf import settings
from django.utils import timezone

from tasks.platform.engine import engine
from tasks.platform.selectors.jobs import jobs_next_due
from tasks.platform.selectors.liveness import runs_lost
from tasks.platform.services.broker_loss import BrokerWatch

logger = logging.getLogger(__name__)

#: jobs claimed and published per pass (one Redis pipeline)
RELAY_BATCH = 500
#: how often a waiting relay looks for a job falling due before its next pass
DUE_CHECK_SECONDS = 0.1
#: the shortest wait between two passes, so that a due job another transaction holds is not spun on
MIN_WAIT_SECONDS = 0.01
#: how often the relay looks for started jobs whose run stopped (a pass may come sooner)
RECOVER_EVERY_SECONDS = 1.0


def jobs_relay(*, limit: int = RELAY_BATCH) -> int:
    """Publish due, unpublished jobs, and admit held ones that may go; how many were published."""
    jobs = engine().claim_due(limit=limit)
    published = len(jobs) if jobs and engine().publish(jobs) else 0
    return published + engine().admit_waiting(limit=limit)


def jobs_recover(*, limit: int = RELAY_BATCH) -> int:
    """Started jobs whose run stopped without their worker's word (no heartbeat for
    WORKER_LOST_AFTER seconds, or its live worker no longer runs them) run again, or are dead after
    TASK_MAX_WORKER_LOSSES such losses; how many. Only attempts begun WORKER_LOST_AFTER ago are
    judged, so a worker that just took a job has sent a heartbeat listing it. Without Redis none is
    judged: a worker's silence then says nothing."""
    started_before = timezone.now() - timedelta(seconds=settings.WORKER_LOST_AFTER)
    try:
        lost = runs_lost(started_before=started_before, limit=limit)
    except redis.RedisError as exc:
        logger.warning("relay: workers' heartbeats unknown, no lost job recovered this pass: %s", exc)
        return 0
    if not lost:
        return 0
    return engine().recover_lost(runs=lost, max_worker_losses=settings.TASK_MAX_WORKER_LOSSES)


def jobs_resend_lost(watch: BrokerWatch) -> int:
    """Queued jobs whose messages Redis lost since the last pass are sent again (once their grace
    is over); how many. Without Redis, none this pass: the loss is seen when it answers again."""
    try:
        return watch.check()
    except redis.RedisError as exc:
        logger.warning("relay: Redis unavailable, lost messages are looked for when it answers: %s", exc)
        return 0


def relay_wait(interval: float) -> float:
    """Seconds until the next pass: ``interval``, or less when a delayed job, a retry or a rate's
    turn falls due sooner, so that it is sent at its time rather than up to an interval late."""
    due = jobs_next_due()
    if due is None:
        return interval
    return min(interval, max(MIN_WAIT_SECONDS, (due - timezone.now()).total_seconds()))
