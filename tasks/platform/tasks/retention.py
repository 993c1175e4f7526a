"""The platform's housekeeping task run by beat (not public: clients cannot enqueue it)."""

from datetime import timedelta

from celery.utils.log import get_task_logger
from django.conf import settings
from pydantic import BaseModel, ConfigDict

from tasks.platform.registry import LedgerTask, ledger_task
from tasks.platform.services.retention import jobs_prune_finished

logger = get_task_logger(__name__)


# A ledger task (with a payload schema, not public) rather than a bare shared task: the relay and the
# retry service publish a job again through the ledger registry, so a run that failed on a database
# hiccup is retried like any other job.


class NoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


@ledger_task(name="jobs.prune_finished", payload=NoPayload, schedulable=True)
def jobs_prune_finished_task(task: LedgerTask, payload: NoPayload) -> dict:
    """Succeeded jobs past JOB_RETENTION_DAYS, failed, dead and cancelled ones past JOB_FAILED_RETENTION_DAYS."""
    kept, kept_failed = settings.JOB_RETENTION_DAYS, settings.JOB_FAILED_RETENTION_DAYS
    deleted = jobs_prune_finished(
        succeeded_older_than=timedelta(days=kept), failed_older_than=timedelta(days=kept_failed)
    )
    logger.info("job %s: pruned finished jobs %s", task.request.id, deleted)
    return {
        "deleted": sum(deleted.values()),
        "deleted_by_state": deleted,
        "retention_days": kept,
        "failed_retention_days": kept_failed,
    }
