"""Retry, cancel and discard: one service behind every door (API, Django admin, command, Flower).

The engine changes the ledger; this service adds what lies outside it: terminating the run of a
cancelled job on its worker."""

from __future__ import annotations

import logging
from functools import partial

from django.db import transaction

from tasks.platform.engine import ActionRefused, engine
from tasks.platform.models import Job

logger = logging.getLogger(__name__)

__all__ = [
    "TERMINATE_CANCELLED_JOB",
    "ActionRefused",
    "job_cancel",
    "job_cancel_terminated",
    "job_discard",
    "job_retry",
    "job_terminate_cancelled",
]

#: the worker's remote control command that terminates a cancelled job's run (tasks.platform.control)
TERMINATE_CANCELLED_JOB = "terminate_cancelled_job"
#: how long a cancel waits for the worker running the job to confirm the terminate (seconds)
TERMINATE_REPLY_TIMEOUT = 1.0


def job_retry(*, job_id, by=None, via: str) -> Job:
    """Run a failed, dead or cancelled job again (tasks.platform.engine's ``retry``): the same job and
    arguments, the same idempotency key, a fresh attempt budget; recorded as who retried it."""
    return engine().retry(job_id=job_id, by=by, via=via)


def job_cancel(*, job_id, by=None, via: str) -> Job:
    """Cancel a job that has not finished. The ledger is the record: a waiting job never runs (the
    worker checks the ledger before each run, whichever worker gets it and however late), and a
    retry undoes the cancel. A running one is terminated once the cancel is committed
    (``job_terminate_cancelled``); nothing goes into Celery's revoked-id memory."""
    with transaction.atomic():
        job, running = engine().cancel(job_id=job_id, by=by, via=via)
        if running:
            # After the commit, also of a caller's transaction (an order's cancel): the worker reads
            # the ledger before it terminates.
            transaction.on_commit(partial(job_terminate_cancelled, job_id=job.pk, worker=job.worker))
    return job


def job_terminate_cancelled(*, job_id, worker: str = "") -> None:
    """Ask the worker running a cancelled job to terminate that run (tasks.platform.control's command, which
    acts only while the ledger still says cancelled, so it never kills the run of a later retry).

    Sent to the worker the ledger names, and waited for (at most TERMINATE_REPLY_TIMEOUT s), so the
    run is gone when the cancel returns and a retry made right after cannot overlap it."""
    from project.celery import app

    arguments = {"job_id": str(job_id)}
    try:
        if worker:
            replies = app.control.broadcast(
                TERMINATE_CANCELLED_JOB,
                arguments=arguments,
                destination=[worker],
                reply=True,
                timeout=TERMINATE_REPLY_TIMEOUT,
                limit=1,
            )
            if not replies:
                logger.warning("job %s: worker %s did not answer the terminate of its cancelled run", job_id, worker)
        else:
            app.control.broadcast(TERMINATE_CANCELLED_JOB, arguments=arguments)
    except Exception:
        # The cancel stands in the ledger; an unterminated run ends unrecorded (its job stays cancelled).
        logger.exception("job %s: could not send the terminate of its cancelled run", job_id)


def job_cancel_terminated(*, job_id, via: str) -> bool:
    """Record a run terminated from outside the platform (Celery's own revoke with terminate, e.g.
    ``celery control revoke --terminate``) as a cancel, so the job does not stay started forever.
    Only a started job changes; True if it did."""
    if not engine().cancel_terminated(job_id=job_id, via=via):
        return False
    logger.warning("job %s was terminated via %s: recorded as cancelled", job_id, via)
    return True


def job_discard(*, job_id, by=None, via: str) -> Job:
    """Let a dead job go: it leaves the dead-letter counts, and who did it is recorded."""
    return engine().discard(job_id=job_id, by=by, via=via)
