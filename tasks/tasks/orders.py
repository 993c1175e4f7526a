"""The order-fulfillment workflow steps (critical queue): thin wrappers around tasks.services.orders."""

from uuid import UUID

from django.conf import settings
from pydantic import BaseModel, ConfigDict

from tasks.registry import LedgerTask, ledger_task
from tasks.services.orders import order_reserve_inventory, order_send_confirmation, order_validate_payment


class OrderStepPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    order_id: UUID


# A timeout or 5xx of the gateway is retried PAYMENT_MAX_RETRIES times with exponential backoff
# from PAYMENT_RETRY_BACKOFF_SECONDS; a decline (PaymentDeclined, a PermanentError) is not.
@ledger_task(
    name="orders.validate_payment",
    payload=OrderStepPayload,
    max_attempts=settings.PAYMENT_MAX_RETRIES + 1,
    backoff_base=settings.PAYMENT_RETRY_BACKOFF_SECONDS,
)
def orders_validate_payment(task: LedgerTask, payload: OrderStepPayload) -> dict:
    return order_validate_payment(order_id=payload.order_id)


@ledger_task(name="orders.reserve_inventory", payload=OrderStepPayload)
def orders_reserve_inventory(task: LedgerTask, payload: OrderStepPayload) -> dict:
    return order_reserve_inventory(order_id=payload.order_id)


@ledger_task(name="orders.send_confirmation", payload=OrderStepPayload)
def orders_send_confirmation(task: LedgerTask, payload: OrderStepPayload) -> dict:
    return order_send_confirmation(order_id=payload.order_id)
