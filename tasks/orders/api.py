"""Orders: place one (its fulfillment workflow starts at once), follow it, cancel it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.http import HttpRequest
from django.urls import reverse
from ninja import Field, Schema, Status
from pydantic import ConfigDict, StrictStr

from tasks.orders.models import Order
from tasks.orders.selectors import order_get_visible, orders_visible_to
from tasks.orders.services.orders import (
    MAX_ORDER_LINES,
    WORKFLOW,
    OrderLine,
    OrderRejected,
    OrderUnavailable,
    order_cancel,
    order_place,
)
from tasks.platform.api.base import Error, Forbidden, Unprocessable, api, request_allowance
from tasks.platform.api.pagination import paginated
from tasks.platform.json_types import PRINTABLE, JsonInt
from tasks.platform.permissions import has_staff_scope
from tasks.platform.services.allowances import enqueue_admit, order_admit
from tasks.platform.services.recovery import ActionRefused

#: an e-mail address as SMTP takes it unquoted: ASCII atext and dots, @, dot-separated domain labels
EMAIL = r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$"
#: most units of one line
MAX_QUANTITY = 10_000


class OrderLineIn(Schema):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused: additionalProperties false

    # StrictStr: a number is not a sku; JsonInt: "2" or true is not a quantity (the schema says so).
    sku: StrictStr = Field(min_length=1, max_length=64, pattern=PRINTABLE, description="A product's SKU.")
    quantity: JsonInt = Field(ge=1, le=MAX_QUANTITY, description=f"Units, 1 to {MAX_QUANTITY:,}.")


class OrderIn(Schema):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused: additionalProperties false

    items: list[OrderLineIn] = Field(
        min_length=1, max_length=MAX_ORDER_LINES, description=f"1 to {MAX_ORDER_LINES} lines; a SKU twice adds up."
    )
    payment_token: StrictStr = Field(
        min_length=1,
        max_length=100,
        pattern=PRINTABLE,
        description="The card token to charge. With the sandbox gateway: tok_ok, tok_decline, tok_flaky, tok_slow.",
    )
    email: StrictStr | None = Field(
        None,
        max_length=254,
        pattern=EMAIL,
        description="Where the confirmation goes; your account's address when left out (409 email_required "
        "when it has none).",
    )


class StepOut(Schema):
    step: str
    job_id: UUID
    state: str
    attempts: int
    error: str
    url: str


class OrderItemOut(Schema):
    sku: str
    name: str
    quantity: int
    unit_price: Decimal


class OrderOut(Schema):
    """An order read from the model (items and steps prefetched by the selector)."""

    id: UUID
    status: str
    total: Decimal
    email: str
    failure_reason: str
    items: list[OrderItemOut]
    steps: list[StepOut]
    url: str
    page_url: str
    created_at: datetime
    paid_at: datetime | None
    reserved_at: datetime | None
    confirmed_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_items(order: Order) -> list[dict[str, Any]]:
        return [
            {"sku": i.product.sku, "name": i.product.name, "quantity": i.quantity, "unit_price": i.unit_price}
            for i in order.items.all()
        ]

    @staticmethod
    def resolve_steps(order: Order) -> list[dict[str, Any]]:
        return _steps(order)

    @staticmethod
    def resolve_url(order: Order) -> str:
        return _links(order)["url"]

    @staticmethod
    def resolve_page_url(order: Order) -> str:
        return _links(order)["page_url"]


class OrderAccepted(Schema):
    id: UUID
    status: str
    url: str
    page_url: str
    jobs: list[StepOut]


@api.exception_handler(OrderRejected)
def _order_rejected(request: HttpRequest, exc: OrderRejected):
    # An unknown sku or short stock is the catalogue's state, which no schema states: 409, not 422.
    status = 409 if isinstance(exc, OrderUnavailable) else 422
    return api.create_response(request, {"detail": str(exc), "code": exc.code, "errors": exc.errors}, status=status)


def _steps(order: Order) -> list[dict[str, Any]]:
    return [
        {
            "step": step.name,
            "job_id": step.job_id,
            "state": step.job.state,
            "attempts": step.job.attempts,
            "error": step.job.error,
            "url": reverse("api:job_get", kwargs={"job_id": step.job_id}),
        }
        for step in order.steps.all()
    ]


def _links(order: Order) -> dict[str, str]:
    return {
        "url": reverse("api:order_get", kwargs={"order_id": order.pk}),
        "page_url": reverse("order_page", kwargs={"order_id": order.pk}),
    }


@api.post(
    "/orders",
    response={
        202: OrderAccepted,
        400: Error,
        401: Error,
        403: Error,
        409: Unprocessable,
        413: Error,
        422: Unprocessable,
        429: Error,
    },
    url_name="order_create",
)
def order_create(request: HttpRequest, body: OrderIn):
    """Place an order: saved as pending, and its workflow (validate payment -> reserve inventory ->
    send confirmation) starts at once; answers 202 with the order id and the three jobs. 409 names
    the items when a sku is unknown (``unknown_sku``) or more is asked than is in stock now
    (``insufficient_stock``), or when no e-mail is given and the account has none (``email_required``);
    nothing is saved then."""
    order_admit(user=request.user)
    enqueue_admit(user=request.user, allowance=request_allowance(request), jobs=len(WORKFLOW))
    email = body.email or request.user.email
    if not email:
        return Status(
            409,
            {
                "detail": "no e-mail for the confirmation: give one, or add one to your account",
                "code": "email_required",
                "errors": [{"field": "email", "message": "required: your account has no e-mail address"}],
            },
        )
    order = order_place(
        customer=request.user,
        lines=[OrderLine(item.sku, item.quantity) for item in body.items],
        payment_token=body.payment_token,
        email=email,
    )
    order = orders_visible_to(request.user).get(pk=order.pk)
    return Status(202, {"id": order.pk, "status": order.status, "jobs": _steps(order), **_links(order)})


@api.get("/orders", response={200: list[OrderOut], 401: Error, 422: Unprocessable}, url_name="order_list")
@paginated
def order_list(request: HttpRequest):
    """The caller's orders (every order for staff), newest first; paginated as /api/jobs."""
    return orders_visible_to(request.user).order_by("-created_at", "-pk")


@api.get("/orders/{order_id}", response={200: OrderOut, 401: Error, 404: Error}, url_name="order_get")
def order_get(request: HttpRequest, order_id: UUID):
    """The order's status and each step's job state; another customer's order answers 404."""
    return order_get_visible(user=request.user, order_id=order_id)


@api.post(
    "/orders/{order_id}/cancel",
    response={200: OrderOut, 401: Error, 403: Error, 404: Error, 409: Error},
    url_name="order_cancel",
)
def order_cancel_view(request: HttpRequest, order_id: UUID):
    """Cancel an order that is not yet confirmed: its remaining steps do not run and reserved stock
    goes back; 409 ``not_cancellable`` once it is confirmed or cancelled."""
    order = order_get_visible(user=request.user, order_id=order_id)
    if order.customer_id != request.user.pk and not has_staff_scope(request.user, "order", to_change=True):
        raise Forbidden(
            "cancelling another user's order needs the permission to change orders", code="permission_required"
        )
    try:
        order_cancel(order_id=order.pk, by=request.user, via="api")
    except ActionRefused as exc:
        return Status(409, {"detail": str(exc), "code": "not_cancellable"})
    return order_get_visible(user=request.user, order_id=order_id)
