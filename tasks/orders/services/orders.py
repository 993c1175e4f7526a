"""Order fulfillment: place an order, then validate payment -> reserve inventory -> send confirmation.

``order_place`` saves the order as pending and enqueues the three steps as one workflow (each
starts only when the one before succeeded, see tasks.platform.engine.workflows) on the critical queue.
Each step's service is idempotent, since a step may run again (redelivery after a lost worker,
a retry): it does nothing when the order is already past it.

A step that ends without succeeding (declined, retries exhausted, out of stock, cancelled) fails
the order through ``job_finished``. Retrying that step's job (API, admin, Flower) re-opens the
order: the step runs again and, on success, the workflow resumes.

Every status change goes out as a webhook event (order.paid, ...) in the same transaction.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.db.models import F
from django.dispatch import receiver
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from tasks.notifications.services import webhook_event_dispatch
from tasks.orders.models import Order, OrderItem, OrderStep, Product
from tasks.orders.services.payments import payment_charge
from tasks.platform.engine import job_finished
from tasks.platform.errors import PermanentError
from tasks.platform.models import Job
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import JobRequest, job_enqueue_chain
from tasks.platform.services.recovery import ActionRefused, job_cancel

logger = logging.getLogger(__name__)

#: the workflow, in order: step name -> task
WORKFLOW = [
    (OrderStep.Name.VALIDATE_PAYMENT, "orders.validate_payment"),
    (OrderStep.Name.RESERVE_INVENTORY, "orders.reserve_inventory"),
    (OrderStep.Name.SEND_CONFIRMATION, "orders.send_confirmation"),
]
STEP_TASKS = frozenset(task for _, task in WORKFLOW)
#: most lines one order may have
MAX_ORDER_LINES = 100
#: an order in one of these is settled: no step changes it any more
SETTLED = frozenset({Order.Status.CONFIRMED, Order.Status.CANCELLED})


class OrderRejected(Exception):
    """The order cannot be placed as asked; nothing was saved. ``errors`` name the bad fields."""

    def __init__(self, message: str, *, code: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.code, self.errors = code, errors


class OrderUnavailable(OrderRejected):
    """The catalogue cannot serve the order as it stands now (an unknown sku, not enough stock):
    the request is well formed, the shop's state refuses it (HTTP 409)."""


class OutOfStock(PermanentError):
    """Not enough stock left to reserve the order (it was there when the order was placed)."""


@dataclass(frozen=True)
class OrderLine:
    sku: str
    quantity: int


# --- placing an order ---------------------------------------------------------------------------


def order_place(*, customer, lines: Sequence[OrderLine], payment_token: str, email: str) -> Order:
    """Save the order as pending and start its fulfillment workflow, all or nothing.

    Raises OrderRejected for no line or a quantity below 1, and OrderUnavailable (one) for an
    unknown SKU or more than is in stock now.
    The order's jobs are on ``order.step_jobs`` (in workflow order).
    """
    wanted = _lines_merged(lines)
    products = Product.objects.in_bulk(list(wanted), field_name="sku")
    errors = []
    for index, (sku, quantity) in enumerate(wanted.items()):
        product = products.get(sku)
        if product is None:
            errors.append({"field": f"items.{index}.sku", "message": f"unknown sku {sku!r}", "code": "unknown_sku"})
        elif quantity > product.stock:
            errors.append(
                {
                    "field": f"items.{index}.quantity",
                    "message": f"only {product.stock} of {sku!r} in stock, {quantity} asked",
                    "code": "insufficient_stock",
                }
            )
    if errors:
        raise OrderUnavailable("; ".join(e["message"] for e in errors), code=errors[0]["code"], errors=errors)

    with transaction.atomic():
        order = Order.objects.create(customer=customer, email=email, payment_token=payment_token)
        items = [
            OrderItem(order=order, product=products[sku], quantity=quantity, unit_price=products[sku].price)
            for sku, quantity in wanted.items()
        ]
        OrderItem.objects.bulk_create(items)
        order.total = sum((item.unit_price * item.quantity for item in items), Decimal("0"))
        order.save(update_fields=["total"])
        payload = {"order_id": str(order.pk)}
        jobs = job_enqueue_chain(
            steps=[JobRequest(task_name=task, payload=payload, queue=QueueName.CRITICAL) for _, task in WORKFLOW],
            owner=customer,
            origin=f"order:{order.pk}",
        )
        OrderStep.objects.bulk_create(
            OrderStep(order=order, name=name, position=position, job=job)
            for position, ((name, _), job) in enumerate(zip(WORKFLOW, jobs, strict=True), start=1)
        )
    order.step_jobs = jobs
    return order


def _lines_merged(lines: Sequence[OrderLine]) -> dict[str, int]:
    """SKU -> quantity, a SKU named twice counted once; refuses an empty order or a quantity < 1."""
    if not lines:
        raise OrderRejected("an order needs at least one item", code="invalid_items", errors=[])
    if len(lines) > MAX_ORDER_LINES:
        raise OrderRejected(f"at most {MAX_ORDER_LINES} items per order", code="invalid_items", errors=[])
    wanted: dict[str, int] = defaultdict(int)
    for index, line in enumerate(lines):
        if line.quantity < 1:
            error = {"field": f"items.{index}.quantity", "message": "quantity must be at least 1"}
            raise OrderRejected(error["message"], code="invalid_quantity", errors=[error])
        wanted[line.sku] += line.quantity
    return dict(wanted)


# --- the steps ------------------------------------------------------------------------------------


def order_validate_payment(*, order_id) -> dict[str, Any]:
    """Charge the order's payment token; the order is paid. Declined: PaymentDeclined (permanent).
    A gateway timeout or 5xx raises GatewayUnavailable, which the task retries."""
    order = Order.objects.get(pk=order_id)
    if order.paid_at is not None:
        return {"order": str(order.pk), "payment": order.payment_reference, "already": True}
    _check_open(order, "validate its payment")
    # No lock is held during the call: the idempotency key makes a repeated charge one charge.
    charge = payment_charge(
        token=order.payment_token, amount=order.total, idempotency_key=str(order.pk), reference=f"order {order.pk}"
    )
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.paid_at is None:
            _check_open(order, "record its payment")
            order.payment_reference, order.paid_at = charge.reference, timezone.now()
            _set_status(order, Order.Status.PAID, "payment_reference", "paid_at")
    return {"order": str(order.pk), "payment": charge.reference}


def order_reserve_inventory(*, order_id) -> dict[str, Any]:
    """Take the order's units from stock, all or none, under row locks: stock never goes negative,
    and an order is reserved once however often this runs."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.reserved_at is not None:
            return {"order": str(order.pk), "reserved": True, "already": True}
        _check_open(order, "reserve its stock")
        if order.paid_at is None:
            raise PermanentError(f"order {order.pk} is not paid")
        items = list(order.items.all())
        # Locked in one order (by id), so two orders sharing products cannot deadlock. NO KEY: new
        # orders may still insert items referring to these products meanwhile (PostgreSQL).
        products = Product.objects.select_for_update(no_key=True).in_bulk(sorted(item.product_id for item in items))
        short = [
            f"{products[item.product_id].sku} ({products[item.product_id].stock} left, {item.quantity} needed)"
            for item in items
            if products[item.product_id].stock < item.quantity
        ]
        if short:
            raise OutOfStock("out of stock: " + ", ".join(short))
        for item in items:
            Product.objects.filter(pk=item.product_id).update(stock=F("stock") - item.quantity)
        order.reserved_at = timezone.now()
        _set_status(order, Order.Status.RESERVED, "reserved_at")
    return {"order": str(order.pk), "reserved": True, "units": sum(item.quantity for item in items)}


def order_send_confirmation(*, order_id) -> dict[str, Any]:
    """E-mail the customer; the order is confirmed. A redelivery after the mail went but before the
    order was marked may send it twice: the Message-ID is the same, so mail clients show one."""
    order = Order.objects.get(pk=order_id)
    if order.confirmed_at is not None:
        return {"order": str(order.pk), "confirmed": True, "already": True}
    _check_open(order, "confirm it")
    if order.reserved_at is None:
        raise PermanentError(f"order {order.pk} is not reserved")
    _confirmation_email(order).send()
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.confirmed_at is None:
            order.confirmed_at = order.finished_at = timezone.now()
            _set_status(order, Order.Status.CONFIRMED, "confirmed_at", "finished_at")
    return {"order": str(order.pk), "confirmed": True, "to": order.email}


def _confirmation_email(order: Order) -> EmailMessage:
    context = {
        "order": order,
        "items": order.items.select_related("product"),
        "url": settings.SITE_URL.rstrip("/") + reverse("order_page", kwargs={"order_id": order.pk}),
    }
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    return EmailMessage(
        subject=f"Your order {str(order.pk)[:8]} is confirmed",
        body=render_to_string("tasks/emails/order_confirmation.txt", context),
        to=[order.email],
        headers={"Message-ID": f"<order-{order.pk}-confirmation@{domain}>"},
    )


def _check_open(order: Order, doing: str) -> None:
    """A step may run on a pending order, or on a failed one whose failed step was retried."""
    if order.status == Order.Status.CANCELLED:
        raise PermanentError(f"order {order.pk} is cancelled: not going to {doing}")


# --- failing and cancelling -------------------------------------------------------------------------


@receiver(job_finished, dispatch_uid="order_step_stopped")
def order_step_stopped(*, job_id, state: str, error: str, **_kwargs) -> None:
    """A workflow step ended failed, dead or cancelled: the order fails (in the same transaction)."""
    step = OrderStep.objects.filter(job_id=job_id).first()
    if step is None:
        return
    order = Order.objects.select_for_update().get(pk=step.order_id)
    if order.status in SETTLED or order.status == Order.Status.FAILED:
        return
    order.failure_reason = f"{step.get_name_display()}: {error}" if error else f"{step.get_name_display()}: {state}"
    order.finished_at = timezone.now()
    _set_status(order, Order.Status.FAILED, "failure_reason", "finished_at")
    logger.info("order %s failed at %s: %s", order.pk, step.name, error)


def order_cancel(*, order_id, by=None, via: str) -> Order:
    """Cancel an order that is not confirmed: its unfinished steps are cancelled and reserved
    stock goes back. Raises ActionRefused for a confirmed or already cancelled order."""
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status in SETTLED:
            raise ActionRefused(f"a {order.status} order cannot be cancelled")
        if order.reserved_at is not None:
            for item in order.items.order_by("product_id"):
                Product.objects.filter(pk=item.product_id).update(stock=F("stock") + item.quantity)
            order.reserved_at = None
        order.finished_at = timezone.now()
        _set_status(order, Order.Status.CANCELLED, "reserved_at", "finished_at")
        for step in order.steps.select_related("job").order_by("position"):
            step.job.refresh_from_db(fields=["state"])
            if not step.job.finished:
                job_cancel(job_id=step.job_id, by=by, via=via)
    return order


# --- shared ------------------------------------------------------------------------------------------


def _set_status(order: Order, status: str, *fields: str) -> None:
    """Save the new status (and ``fields``) and announce it to webhooks, in the caller's transaction."""
    if order.status == Order.Status.FAILED and status != Order.Status.FAILED:
        # A retried step succeeded: the order is open again.
        order.failure_reason, fields = "", (*fields, "failure_reason")
        if "finished_at" not in fields:
            order.finished_at, fields = None, (*fields, "finished_at")
    order.status = status
    order.save(update_fields=["status", "updated_at", *fields])
    webhook_event_dispatch(event=f"order.{status}", data=order_event_data(order))


def order_event_data(order: Order) -> dict[str, Any]:
    """What a webhook receiver is told about an order."""
    return {
        "id": str(order.pk),
        "status": order.status,
        "total": str(order.total),
        "items": [
            {"sku": sku, "quantity": quantity, "unit_price": str(price)}
            for sku, quantity, price in order.items.values_list("product__sku", "quantity", "unit_price")
        ],
        "failure_reason": order.failure_reason,
        "updated_at": order.updated_at.isoformat() if order.updated_at else None,
    }


def order_jobs(order: Order) -> list[tuple[str, Job]]:
    """The order's steps and their jobs, in workflow order."""
    return [(step.name, step.job) for step in order.steps.select_related("job").order_by("position")]
