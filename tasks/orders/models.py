"""The shop: products, orders and their items, each order's fulfillment steps, and ops alerts."""

import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models

from tasks.platform.models.jobs import Job


class Product(models.Model):
    sku = models.CharField("SKU", max_length=64, unique=True, help_text="The stock-keeping unit orders refer to.")
    name = models.CharField("name", max_length=200)
    price = models.DecimalField("price", max_digits=10, decimal_places=2, validators=[MinValueValidator(Decimal("0"))])
    stock = models.PositiveIntegerField(
        "stock", default=0, help_text="Units on hand; reserving an order takes its units from here."
    )

    class Meta:
        verbose_name = "product"
        ordering = ["sku"]
        constraints = [
            models.CheckConstraint(condition=models.Q(price__gte=0), name="product_price_not_negative"),
            # PositiveIntegerField is only checked by some databases; the promise is the database's.
            models.CheckConstraint(condition=models.Q(stock__gte=0), name="product_stock_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"


class OrderStatus(models.TextChoices):
    PENDING = "pending", "Pending (payment not yet validated)"
    PAID = "paid", "Paid"
    RESERVED = "reserved", "Reserved (stock set aside)"
    CONFIRMED = "confirmed", "Confirmed (customer told)"
    CANCELLED = "cancelled", "Cancelled"
    FAILED = "failed", "Failed"


class Order(models.Model):
    Status = OrderStatus

    id = models.UUIDField("id", primary_key=True, default=uuid.uuid4, editable=False)
    customer = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name="customer", on_delete=models.PROTECT, related_name="orders"
    )
    email = models.EmailField("e-mail", help_text="Where the confirmation goes.")
    status = models.CharField("status", max_length=16, choices=OrderStatus.choices, default=OrderStatus.PENDING)
    payment_token = models.CharField(
        "payment token", max_length=100, help_text="The card token the gateway charges (never the card itself)."
    )
    payment_reference = models.CharField(
        "payment reference", max_length=100, blank=True, help_text="The gateway's id of the approved charge."
    )
    total = models.DecimalField("total", max_digits=12, decimal_places=2, default=Decimal("0"))
    failure_reason = models.TextField("failure reason", blank=True)
    created_at = models.DateTimeField("created at", auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField("updated at", auto_now=True)
    paid_at = models.DateTimeField("paid at", null=True, blank=True)
    reserved_at = models.DateTimeField("reserved at", null=True, blank=True)
    confirmed_at = models.DateTimeField("confirmed at", null=True, blank=True)
    finished_at = models.DateTimeField(
        "finished at", null=True, blank=True, help_text="When it was confirmed, cancelled or failed."
    )

    class Meta:
        verbose_name = "order"
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="order_status_created"),
            models.Index(fields=["customer", "-created_at"], name="order_customer_created"),
        ]
        constraints = [
            models.CheckConstraint(condition=models.Q(status__in=OrderStatus.values), name="order_status_valid"),
        ]

    def __str__(self) -> str:
        return f"order {self.id} ({self.status})"


class OrderItem(models.Model):
    order = models.ForeignKey(Order, verbose_name="order", on_delete=models.CASCADE, related_name="items")
    product = models.ForeignKey(Product, verbose_name="product", on_delete=models.PROTECT, related_name="+")
    quantity = models.PositiveIntegerField("quantity", validators=[MinValueValidator(1)])
    unit_price = models.DecimalField("unit price", max_digits=10, decimal_places=2, help_text="At ordering time.")

    class Meta:
        verbose_name = "order item"
        ordering = ["order", "id"]
        constraints = [
            models.CheckConstraint(condition=models.Q(quantity__gte=1), name="orderitem_quantity_positive"),
            models.UniqueConstraint(fields=["order", "product"], name="orderitem_order_product_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.quantity} x {self.product_id}"


class OrderStep(models.Model):
    """One step of an order's fulfillment workflow and the job that runs it."""

    class Name(models.TextChoices):
        VALIDATE_PAYMENT = "validate_payment", "Validate payment"
        RESERVE_INVENTORY = "reserve_inventory", "Reserve inventory"
        SEND_CONFIRMATION = "send_confirmation", "Send confirmation"

    order = models.ForeignKey(Order, verbose_name="order", on_delete=models.CASCADE, related_name="steps")
    name = models.CharField("step", max_length=32, choices=Name.choices)
    position = models.PositiveSmallIntegerField("position")
    job = models.OneToOneField(Job, verbose_name="job", on_delete=models.PROTECT, related_name="order_step")

    class Meta:
        verbose_name = "order step"
        ordering = ["order", "position"]
        constraints = [models.UniqueConstraint(fields=["order", "name"], name="orderstep_order_name_unique")]

    def __str__(self) -> str:
        return f"{self.order_id} {self.name}"


class OpsAlert(models.Model):
    """Something ops should look at, raised once per subject by a maintenance task."""

    class Kind(models.TextChoices):
        ORDER_STUCK_PENDING = "order_stuck_pending", "Order stuck in pending"

    kind = models.CharField("kind", max_length=32, choices=Kind.choices)
    subject = models.CharField("subject", max_length=200, help_text="What it is about, e.g. the order id.")
    message = models.TextField("message")
    raised_at = models.DateTimeField("raised at", auto_now_add=True)
    resolved_at = models.DateTimeField("resolved at", null=True, blank=True)

    class Meta:
        verbose_name = "ops alert"
        ordering = ["-raised_at"]
        constraints = [models.UniqueConstraint(fields=["kind", "subject"], name="opsalert_kind_subject_unique")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.subject}"
