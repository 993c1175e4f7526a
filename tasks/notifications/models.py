"""Webhooks: the endpoints admins register, each event delivery to one of them, and every attempt."""

import secrets
import uuid

from django.core.exceptions import ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.core.validators import URLValidator
from django.db import models

from tasks.platform.models.jobs import Job


class WebhookEvent(models.TextChoices):
    """The events a webhook endpoint may subscribe to: one per order status change, and the
    platform's alerts opening and resolving (tasks.platform.services.alerts)."""

    ORDER_PAID = "order.paid", "Order paid"
    ORDER_RESERVED = "order.reserved", "Order reserved"
    ORDER_CONFIRMED = "order.confirmed", "Order confirmed"
    ORDER_FAILED = "order.failed", "Order failed"
    ORDER_CANCELLED = "order.cancelled", "Order cancelled"
    ALERT_OPENED = "alert.opened", "Alert opened"
    ALERT_RESOLVED = "alert.resolved", "Alert resolved"


#: bytes of randomness in a generated signing secret
SECRET_BYTES = 32


def webhook_secret_generate() -> str:
    return secrets.token_urlsafe(SECRET_BYTES)


def validate_event_types(value) -> None:
    """A non-empty JSON list of known event names; the error names the first bad one."""
    if not isinstance(value, list) or not value:
        raise ValidationError("Subscribe to at least one event, as a list of event names.", code="invalid")
    for name in value:
        if name not in WebhookEvent.values:
            raise ValidationError(
                "Unknown event %(event)r; choose from %(known)s.",
                code="unknown_event",
                params={"event": name, "known": ", ".join(WebhookEvent.values)},
            )


class WebhookEndpoint(models.Model):
    name = models.CharField("name", max_length=100, unique=True)
    url = models.URLField(
        "URL",
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="Where events are POSTed (http or https; redirects are not followed).",
    )
    secret = models.CharField(
        "signing secret",
        max_length=200,
        blank=True,
        help_text="Signs every delivery (HMAC-SHA256); share it with the receiver. Left blank, one is generated.",
    )
    event_types = models.JSONField(
        "events",
        default=list,
        validators=[validate_event_types],
        help_text="The events this endpoint receives.",
    )
    active = models.BooleanField("active", default=True, help_text="Inactive endpoints receive nothing new.")
    created_at = models.DateTimeField("created at", auto_now_add=True)

    class Meta:
        verbose_name = "webhook endpoint"
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(url__istartswith="http://") | models.Q(url__istartswith="https://"),
                name="webhookendpoint_url_http",
            ),
            models.CheckConstraint(condition=~models.Q(secret=""), name="webhookendpoint_secret_set"),
        ]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs) -> None:
        if not self.secret:
            self.secret = webhook_secret_generate()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        # Before the constraints are checked, so a blank secret in the admin form is filled, not refused.
        if not self.secret:
            self.secret = webhook_secret_generate()

    def rotate_secret(self) -> str:
        """Replace the signing secret with a new random one; returns it (it is shown once)."""
        self.secret = webhook_secret_generate()
        self.save(update_fields=["secret"])
        return self.secret

    def subscribed_to(self, event: str) -> bool:
        return isinstance(self.event_types, list) and event in self.event_types


class WebhookDelivery(models.Model):
    """One event sent to one endpoint; its id is the delivery id receivers see (X-Webhook-Id)."""

    id = models.UUIDField(
        "delivery id",
        primary_key=True,
        default=uuid.uuid4,
        editable=False,
        help_text="Sent as X-Webhook-Id and in the body, the same on every attempt: receivers de-duplicate on it.",
    )
    endpoint = models.ForeignKey(
        WebhookEndpoint, verbose_name="endpoint", on_delete=models.CASCADE, related_name="deliveries"
    )
    event = models.CharField("event", max_length=32, choices=WebhookEvent.choices)
    payload = models.JSONField(
        "data", encoder=DjangoJSONEncoder, help_text="The event's data, sent as the body's \"data\"."
    )
    job = models.OneToOneField(
        Job,
        verbose_name="job",
        null=True,
        blank=True,
        # Succeeded jobs are pruned from the ledger; the delivery and its attempts stay.
        on_delete=models.SET_NULL,
        related_name="webhook_delivery",
    )
    created_at = models.DateTimeField("created at", auto_now_add=True, db_index=True)
    delivered_at = models.DateTimeField(
        "delivered at", null=True, blank=True, help_text="When the receiver answered 2xx."
    )

    class Meta:
        verbose_name = "webhook delivery"
        verbose_name_plural = "webhook deliveries"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["endpoint", "-created_at"], name="webhookdelivery_endpoint")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(event__in=WebhookEvent.values), name="webhookdelivery_event_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} to {self.endpoint_id} ({self.id})"


class WebhookAttempt(models.Model):
    """One POST of a delivery: what the receiver answered (or why it did not) and how long it took."""

    delivery = models.ForeignKey(
        WebhookDelivery, verbose_name="delivery", on_delete=models.CASCADE, related_name="attempts"
    )
    number = models.PositiveIntegerField("attempt", help_text="The job's attempt that made it.")
    status_code = models.PositiveSmallIntegerField(
        "status code", null=True, blank=True, help_text="Empty when no answer came (timeout, connection error)."
    )
    duration_ms = models.PositiveIntegerField("duration (ms)")
    error = models.TextField("error", blank=True)
    at = models.DateTimeField("at", help_text="When the request was sent.")

    class Meta:
        verbose_name = "webhook attempt"
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhookattempt_delivery_number_unique"),
            models.CheckConstraint(
                condition=models.Q(status_code__isnull=True) | models.Q(status_code__gte=100, status_code__lte=599),
                name="webhookattempt_status_code_http",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.delivery_id} attempt {self.number} ({self.status_code or self.error[:40]})"
