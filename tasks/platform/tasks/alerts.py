"""The alert tasks: the evaluation beat fires every 30 s, and one alert's e-mail (not public)."""

from typing import Literal

from celery.utils.log import get_task_logger
from pydantic import BaseModel, ConfigDict, Field

from tasks.platform.registry import LedgerTask, ledger_task
from tasks.platform.services.alerts import EVALUATE_TASK, MAIL_TASK, alert_mail, alerts_evaluate

logger = get_task_logger(__name__)


class NoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AlertMailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alert_id: int = Field(ge=1)
    event: Literal["opened", "resolved"]


# Two attempts: a run that failed on a database hiccup is tried once more; the next scheduled run
# comes 30 s later anyway, and overlapping runs are safe (tasks.platform.services.alerts).
@ledger_task(name=EVALUATE_TASK, payload=NoPayload, schedulable=True, max_attempts=2)
def alerts_evaluate_task(task: LedgerTask, payload: NoPayload) -> dict:
    """Evaluate every alert rule once: open, keep and resolve alerts."""
    outcome = alerts_evaluate()
    if outcome.opened or outcome.resolved:
        logger.info("job %s: alerts %s", task.request.id, outcome.as_dict())
    return outcome.as_dict()


# An SMTP error is retried with the platform's backoff and attempt budget.
@ledger_task(name=MAIL_TASK, payload=AlertMailPayload)
def alerts_mail_task(task: LedgerTask, payload: AlertMailPayload) -> dict:
    return alert_mail(alert_id=payload.alert_id, event=payload.event)
