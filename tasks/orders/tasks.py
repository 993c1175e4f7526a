"""The order-fulfillment workflow steps (critical queue), thin wrappers around tasks.orders.services.orders,
and the price quote any user may ask for (tasks.orders.services.quotes)."""

from uuid import UUID

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field

from tasks.orders.services.orders import order_reserve_inventory, order_send_confirmation, order_validate_payment
from tasks.orders.services.quotes import order_quote
from tasks.platform.json_types import PRINTABLE, JsonInt
from tasks.platform.registry import Audience, LedgerTask, ledger_task, public_task


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


class QuoteLine(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    sku: str = Field(min_length=1, max_length=64, pattern=PRINTABLE, description="A product's SKU.")
    quantity: JsonInt = Field(ge=1, le=10_000, description="Units.")


class QuotePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[QuoteLine] = Field(min_length=1, max_length=100, description="1 to 100 lines.")


# The shop's example of a task any signed-in user may enqueue through POST /api/jobs.
@public_task(name="orders.quote", payload=QuotePayload, audience=Audience.USERS)
def orders_quote(task: LedgerTask, payload: QuotePayload) -> dict:
    """Price a list of products at today's prices (an unknown SKU makes the job dead)."""
    return order_quote(lines=[(line.sku, line.quantity) for line in payload.items])
