"""Tasks of the notifications domain (default queue): welcome e-mails and webhook deliveries."""

from uuid import UUID

from celery.utils.log import get_task_logger
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field

from tasks.accounts.services import WELCOME_TASK, user_send_welcome_email
from tasks.notifications.services import DELIVER_TASK, webhook_deliver
from tasks.platform.registry import LedgerTask, ledger_task

logger = get_task_logger(__name__)


class WelcomeEmailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1)


class WebhookDeliveryPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    delivery_id: UUID


# An SMTP error (server down, 4xx) is retried with the platform's backoff and attempt budget.
@ledger_task(name=WELCOME_TASK, payload=WelcomeEmailPayload)
def notifications_send_welcome_email(task: LedgerTask, payload: WelcomeEmailPayload) -> dict:
    logger.info("job %s: welcome e-mail for user %s", task.request.id, payload.user_id)
    return user_send_welcome_email(user_id=payload.user_id)


# A timeout, connection error or 5xx is retried WEBHOOK_MAX_ATTEMPTS times in all, backing off from
# WEBHOOK_BACKOFF_BASE_SECONDS; a 4xx (WebhookRejected, a PermanentError) is dead at once.
@ledger_task(
    name=DELIVER_TASK,
    payload=WebhookDeliveryPayload,
    max_attempts=settings.WEBHOOK_MAX_ATTEMPTS,
    backoff_base=settings.WEBHOOK_BACKOFF_BASE_SECONDS,
)
def webhooks_deliver(task: LedgerTask, payload: WebhookDeliveryPayload) -> dict:
    logger.info("job %s: webhook delivery %s, attempt %s", task.request.id, payload.delivery_id, task.request.attempt)
    return webhook_deliver(delivery_id=payload.delivery_id, attempt=task.request.attempt)
