"""Reading orders on a caller's behalf: customers see their own orders, staff in scope see all."""

from __future__ import annotations

from uuid import UUID

from django.db.models import Prefetch, QuerySet
from django.shortcuts import get_object_or_404

from tasks.orders.models import Order, OrderItem, OrderStep
from tasks.platform.permissions import has_staff_scope


def orders_visible_to(user) -> QuerySet[Order]:
    orders = Order.objects.all() if has_staff_scope(user, "order") else Order.objects.filter(customer=user)
    return orders.prefetch_related(
        Prefetch("items", queryset=OrderItem.objects.select_related("product")),
        Prefetch("steps", queryset=OrderStep.objects.select_related("job").order_by("position")),
    )


def order_get_visible(*, user, order_id: UUID) -> Order:
    """The order, or Http404 when it does not exist or ``user`` may not see it (the same answer)."""
    return get_object_or_404(orders_visible_to(user), pk=order_id)
