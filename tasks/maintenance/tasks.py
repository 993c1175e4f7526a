"""The orders' housekeeping tasks run by beat (not public: clients cannot enqueue them); the
platform's (finished jobs) is in tasks.platform.tasks.retention, the reports' in tasks.reports.tasks."""

from datetime import timedelta

from celery.utils.log import get_task_logger
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field

from tasks.maintenance.services import orders_alert_stuck_pending, orders_prune_cancelled
from tasks.platform.registry import LedgerTask, ledger_task

logger = get_task_logger(__name__)


# Ledger tasks (with a payload schema, not public) rather than bare shared tasks: the relay and the
# retry service publish a job again through the ledger registry, so a run that failed on a database
# hiccup is retried like any other job.


class NoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
