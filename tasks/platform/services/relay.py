"""The relay: publishes what enqueue could not, and delayed jobs and retries when they fall due;
and admits held jobs whose key has a free slot or whose pause is gone (tasks.platform.engine.flow).

It is the only safety net of the engine's publish (tasks.platform.engine.orm): every pending job whose
publish is unclaimed or whose claim expired, and every delayed job or retry that fell due, is
claimed (``SKIP LOCKED``, so two relays never take the same job) and published.
"""

from __future__ import annotations

from django.utils import timezone

from tasks.platform.engine import engine
from tasks.platform.selectors.jobs import jobs_next_due

#: jobs claimed and published per pass (one Redis pipeline)
RELAY_BATCH = 500
#: how often a waiting relay looks for a job falling due before its next pass
DUE_CHECK_SECONDS = 0.1
#: the shortest wait between two passes, so that a due job another transaction holds is not spun on
MIN_WAIT_SECONDS = 0.01


def jobs_relay(*, limit: int = RELAY_BATCH) -> int:
    """Publish due, unpublished jobs, and admit held ones that may go; how many were published."""
    jobs = engine().claim_due(limit=limit)
    published = len(jobs) if jobs and engine().publish(jobs) else 0
    return published + engine().admit_waiting(limit=limit)


def relay_wait(interval: float) -> float:
    """Seconds until the next pass: ``interval``, or less when a delayed job, a retry or a rate's
    turn falls due sooner, so that it is sent at its time rather than up to an interval late."""
    due = jobs_next_due()
    if due is None:
        return interval
    return min(interval, max(MIN_WAIT_SECONDS, (due - timezone.now()).total_seconds()))
