"""The shop's housekeeping tasks run by beat (not public: clients cannot enqueue them); the
platform's (finished jobs) is in tasks.tasks.retention."""

from datetime import timedelta

from celery.utils.log import get_task_logger
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field

from tasks.registry import LedgerTask, ledger_task
from tasks.services.maintenance import orders_alert_stuck_pending, orders_prune_cancelled
from tasks.services.retention import reports_prune

logger = get_task_logger(__name__)


# Ledger tasks (with a payload schema, not public) rather than bare shared tasks: the relay and the
# retry service publish a job again through the ledger registry, so a run that failed on a database
# hiccup is retried like any other job.


class NoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


@ledger_task(name="reports.prune", payload=NoPayload, schedulable=True)
def reports_prune_task(task: LedgerTask, payload: NoPayload) -> dict:
    """Reports, with their PDFs, past REPORT_RETENTION_DAYS."""
    retention = settings.REPORT_RETENTION_DAYS
    deleted = reports_prune(older_than=timedelta(days=retention))
    logger.info("job %s: pruned reports older than %d days: %s", task.request.id, retention, deleted)
    return {**deleted, "retention_days": retention}


class PruneCancelledPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(1000, ge=1, le=10_000, description="Orders deleted per transaction.")


@ledger_task(name="orders.prune_cancelled", payload=PruneCancelledPayload, schedulable=True)
def orders_prune_cancelled_task(task: LedgerTask, payload: PruneCancelledPayload) -> dict:
    retention = settings.CANCELLED_ORDER_RETENTION_DAYS
    deleted = orders_prune_cancelled(older_than=timedelta(days=retention), batch_size=payload.batch_size)
    logger.info("job %s: pruned %d cancelled orders older than %d days", task.request.id, deleted, retention)
    return {"deleted": deleted, "retention_days": retention}


@ledger_task(name="orders.alert_stuck_pending", payload=NoPayload, schedulable=True)
def orders_alert_stuck_pending_task(task: LedgerTask, payload: NoPayload) -> dict:
    minutes = settings.PENDING_ORDER_ALERT_MINUTES
    raised = orders_alert_stuck_pending(older_than=timedelta(minutes=minutes))
    return {"raised": len(raised), "alert_after_minutes": minutes}
