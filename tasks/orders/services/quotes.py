"""Price quotes: what a list of products would cost now, without placing an order."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from tasks.orders.models import Product
from tasks.platform.errors import PermanentError


class UnknownProducts(PermanentError):
    """A quote names SKUs the catalogue does not have: no retry can mend it."""


def order_quote(*, lines: Sequence[tuple[str, int]]) -> dict[str, Any]:
    """The price of each line and the total, at today's prices; whether each is in stock now.
    Raises UnknownProducts naming every unknown SKU."""
    products = Product.objects.in_bulk([sku for sku, _ in lines], field_name="sku")
    unknown = sorted({sku for sku, _ in lines if sku not in products})
    if unknown:
        raise UnknownProducts(f"unknown sku(s): {', '.join(unknown)}")
    quoted = [
        {
            "sku": sku,
            "quantity": quantity,
            "unit_price": str(products[sku].price),
            "price": str(products[sku].price * quantity),
            "in_stock": products[sku].stock >= quantity,
        }
        for sku, quantity in lines
    ]
    total = sum((products[sku].price * quantity for sku, quantity in lines), Decimal("0"))
    return {"lines": quoted, "total": str(total)}
