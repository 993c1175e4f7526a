"""The demo catalogue a local run starts with, so that a newcomer can place an order at once."""

from __future__ import annotations

from decimal import Decimal

from tasks.orders.models import Product

#: sku, name, price (EUR), stock
DEMO_PRODUCTS = [
    ("LAMP", "Desk lamp", Decimal("39.00"), 25),
    ("KETTLE", "Electric kettle", Decimal("29.90"), 20),
    ("MUG", "Stoneware mug", Decimal("8.50"), 100),
    ("TEAPOT", "Cast-iron teapot", Decimal("45.00"), 10),
    ("NOTEBOOK", "Dotted notebook A5", Decimal("12.00"), 60),
    ("CANDLE", "Beeswax candle", Decimal("6.75"), 80),
    ("BLANKET", "Wool blanket", Decimal("89.00"), 8),
]


def catalogue_seed_demo() -> dict[str, bool]:
    """Create the demo products that are missing, looked up by sku; an existing product is never
    changed (its name, price and stock are the shop's). Returns sku -> whether it was created."""
    outcome = {}
    for sku, name, price, stock in DEMO_PRODUCTS:
        _, created = Product.objects.get_or_create(sku=sku, defaults={"name": name, "price": price, "stock": stock})
        outcome[sku] = created
    return outcome
