"""Tasks of the reports domain (bulk queue): CPU-heavy, so only the bulk workers (prefork) run them."""

import os
import resource
from datetime import timedelta
from uuid import UUID

from celery.utils.log import get_task_logger
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field

from tasks.platform.errors import PermanentError
from tasks.platform.queues import QueueName
from tasks.platform.registry import LedgerTask, ledger_task
from tasks.reports.retention import reports_prune
from tasks.reports.services import BUILD_SALES_TASK, ReportMissing, report_build

logger = get_task_logger(__name__)


class BuildSalesPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    report_id: UUID = Field(description="The Report to build.")


@ledger_task(
    name=BUILD_SALES_TASK,
    payload=BuildSalesPayload,
    max_attempts=3,
    backoff_base=5,
    permanent_errors=(ReportMissing,),
)
def reports_build_sales(task: LedgerTask, payload: BuildSalesPayload) -> dict:
    """Build a report's PDF; refused anywhere but the bulk queue, so heavy work never delays the
    critical and default pools (a job enqueued with another queue goes dead instead of running)."""
    queue = (task.request.delivery_info or {}).get("routing_key", "")
    if queue != QueueName.BULK.value:
        raise PermanentError(f"{BUILD_SALES_TASK} runs only on the {QueueName.BULK.value} queue, not {queue!r}")
    logger.info("job %s: building report %s on %s", task.request.id, payload.report_id, task.request.hostname)
    summary = report_build(report_id=payload.report_id, progress=task.report_progress)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    logger.info("job %s: report %s done, peak RSS %s KiB", task.request.id, payload.report_id, usage.ru_maxrss)
    return {
        **summary,
        "worker": task.request.hostname,
        "queue": queue,
        # Which process ran it (a prefork child) and its peak resident memory so far (Linux: KiB).
        "pid": os.getpid(),
        "peak_rss_kib": usage.ru_maxrss,
    }


class NoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


@ledger_task(name="reports.prune", payload=NoPayload, schedulable=True)
def reports_prune_task(task: LedgerTask, payload: NoPayload) -> dict:
    """Reports, with their PDFs, past REPORT_RETENTION_DAYS."""
    retention = settings.REPORT_RETENTION_DAYS
    deleted = reports_prune(older_than=timedelta(days=retention))
    logger.info("job %s: pruned reports older than %d days: %s", task.request.id, retention, deleted)
    return {**deleted, "retention_days": retention}
