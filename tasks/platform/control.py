"""Worker-side of cancelling a job: a remote control command and a signal handler.

Imported by tasks.platform.worker (the worker's consumer class), so every worker registers them; Celery's
``control_command`` registry is global to the process.

- ``terminate_cancelled_job`` is what ``tasks.platform.services.recovery.job_cancel`` broadcasts instead of
  Celery's ``revoke(terminate=True)``. It terminates this worker's active run of the job only while
  the ledger says the job is cancelled: a cancel's terminate that arrives after a retry already
  started the job again leaves the retry's run alone. It adds nothing to Celery's revoked-id memory,
  which would make every worker drop the retry's message (the same id) for hours.
- A ledger job terminated by Celery's own revoke (``celery control revoke --terminate``, another
  tool) is recorded as cancelled, so it does not stay ``started`` in the ledger forever.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.signals import task_revoked
from celery.worker import state as worker_state
from celery.worker.control import control_command
from django.db import DatabaseError, close_old_connections

from tasks.platform.models import Job
from tasks.platform.registry import LEDGER_TASKS
from tasks.platform.services.recovery import TERMINATE_CANCELLED_JOB, job_cancel_terminated

logger = logging.getLogger(__name__)


@control_command(
    name=TERMINATE_CANCELLED_JOB,
    args=[("job_id", str), ("signal", str)],
    signature="<job_id> [signal]",
)
def terminate_cancelled_job(state: Any, job_id: str, signal: str | None = None, **_: Any) -> dict[str, str]:
    """Terminate this worker's run of a job, if the ledger says the job is cancelled."""
    try:
        job_id = str(uuid.UUID(str(job_id)))
    except ValueError:
        return {"error": f"not a job id: {job_id!r}"}
    running = [request for request in list(worker_state.active_requests) if request.id == job_id]
    if not running:
        return {"ok": "not running here"}
    # The worker's main process has no request cycle to drop a connection the server closed.
    close_old_connections()
    try:
        cancelled = Job.objects.filter(pk=job_id, state=Job.State.CANCELLED).exists()
    except DatabaseError as exc:
        logger.exception("job %s: ledger unreachable, its run is not terminated", job_id)
        return {"error": f"ledger unreachable: {exc}"}
    if not cancelled:
        return {"ok": "not cancelled in the ledger (retried since?): left running"}
    for request in running:
        logger.info("job %s: terminating its cancelled run (pid %s)", job_id, request.worker_pid)
        # As Celery's revoke(terminate=True) does: the pool child is signalled, the message acknowledged.
        request.terminate(state.consumer.pool, signal=signal)
    return {"ok": f"terminated {job_id}"}


@task_revoked.connect
def job_cancelled_when_terminated(sender: Any = None, request: Any = None, terminated: bool = False, **_: Any) -> None:
    """A ledger job's run terminated by a revoke (runs in the worker's main process): the ledger
    records a cancel unless it already has one (the platform's own terminate)."""
    if not terminated or request is None or getattr(sender, "name", None) not in LEDGER_TASKS:
        return
    close_old_connections()
    try:
        job_cancel_terminated(job_id=request.id, via="celery revoke")
    except DatabaseError:
        logger.exception("job %s: terminated by a revoke, but the ledger could not record it", request.id)
