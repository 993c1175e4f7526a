"""The bulk action job (tasks.platform.services.bulk): not public, enqueued by the API's and the
admin's bulk doors after their checks, on the bulk queue."""

from celery.utils.log import get_task_logger
from pydantic import BaseModel, ConfigDict, Field

from tasks.platform.registry import LedgerTask, ledger_task
from tasks.platform.selectors.search import JobSearch
from tasks.platform.services.bulk import BULK_ACTION_TASK, BulkAction, bulk_action_run

logger = get_task_logger(__name__)


class BulkActionPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: BulkAction = Field(description="retry, cancel or discard.")
    filter: JobSearch = Field(description="The jobs to act on: every job this search matches.")


@ledger_task(name=BULK_ACTION_TASK, payload=BulkActionPayload)
def jobs_bulk_action(task: LedgerTask, payload: BulkActionPayload) -> dict:
    """Retry, cancel or discard every job the filter matches, reporting progress as it goes."""
    outcome = bulk_action_run(
        job_id=task.request.id, action=payload.action, search=payload.filter, progress=task.report_progress
    )
    logger.info("job %s: bulk %s", task.request.id, outcome.as_dict())
    return outcome.as_dict()
