"""Webhooks: order events and the platform's alerts, delivered signed to the endpoints admins
registered, with retries.

``webhook_event_dispatch`` runs in the caller's transaction (an order's status change): one
``WebhookDelivery`` and one ``webhooks.deliver`` job per active endpoint subscribed to the event,
so a rolled-back change announces nothing. The job POSTs the delivery (``webhook_deliver``):

    POST <endpoint url>            (redirects are not followed; WEBHOOK_TIMEOUT_SECONDS per request)
    Content-Type: application/json
    X-Webhook-Id: <delivery id>    (the same on every attempt: receivers de-duplicate on it)
    X-Webhook-Event: order.paid
    X-Webhook-Timestamp: <unix seconds of this attempt>
    X-Webhook-Signature: sha256=<hex HMAC-SHA256, keyed with the endpoint's secret, of "<timestamp>.<body>">

    {"id": "<delivery id>", "event": "order.paid", "created_at": "<ISO 8601>", "data": {...}}

A receiver recomputes the HMAC over the timestamp header, a dot and the raw body bytes, compares
with ``hmac.compare_digest``, and refuses a timestamp too far from its clock (replays).

Every attempt is recorded (``WebhookAttempt``: status code, duration, error) before its outcome
is acted on. A 2xx delivers; a timeout, a connection error or a 5xx is retried with exponential
backoff (WEBHOOK_MAX_ATTEMPTS, WEBHOOK_BACKOFF_BASE_SECONDS); any other answer (4xx, or a 3xx
redirect) is permanent: the job is dead, shown in admin, and may be retried from there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from typing import Any

import requests
from django.conf import settings
from django.db import transaction
from django.dispatch import receiver
from django.utils import timezone

from tasks.notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from tasks.platform.errors import PermanentError
from tasks.platform.models import Alert
from tasks.platform.services.alerts import alert_opened, alert_resolved
from tasks.platform.services.jobs import job_enqueue

logger = logging.getLogger(__name__)

DELIVER_TASK = "webhooks.deliver"
SIGNATURE_PREFIX = "sha256="
USER_AGENT = "task-platform-webhooks/1"
#: most characters of a refusing receiver's answer kept in the attempt's error
ERROR_BODY_CHARS = 200


class WebhookDeliveryFailed(Exception):
    """No answer, or a 5xx: the receiver may be back later, so the job retries."""


class WebhookRejected(PermanentError):
    """The receiver refused the delivery (4xx, a redirect): retrying the same request cannot help."""


def webhook_event_dispatch(*, event: str, data: dict[str, Any]) -> int:
    """Queue a delivery of ``event`` to every active endpoint subscribed to it, in the caller's
    transaction; returns how many were queued."""
    if event not in WebhookEvent.values:
        raise ValueError(f"unknown webhook event {event!r}; known: {', '.join(WebhookEvent.values)}")
    # Few endpoints, and JSON containment is not portable to SQLite: filter the list here.
    endpoints = [e for e in WebhookEndpoint.objects.filter(active=True).order_by("pk") if e.subscribed_to(event)]
    # A savepoint in the caller's transaction, or one of our own: the jobs publish only on commit,
    # once their deliveries exist.
    with transaction.atomic():
        for endpoint in endpoints:
            delivery_id = uuid.uuid4()
            job = job_enqueue(
                task_name=DELIVER_TASK, payload={"delivery_id": str(delivery_id)}, origin=f"webhook:{event}"
            )
            WebhookDelivery.objects.create(id=delivery_id, endpoint=endpoint, event=event, payload=data, job=job)
    if endpoints:
        logger.info("event %s: %d webhook delivery(ies) queued", event, len(endpoints))
    return len(endpoints)


def webhook_body(delivery: WebhookDelivery) -> bytes:
    """The JSON body of a delivery, byte for byte the same on every attempt."""
    document = {
        "id": str(delivery.id),
        "event": delivery.event,
        "created_at": delivery.created_at.isoformat(),
        "data": delivery.payload,
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


def webhook_signature(*, secret: str, timestamp: str, body: bytes) -> str:
    """The X-Webhook-Signature value: HMAC-SHA256 of "<timestamp>.<body>" keyed with the secret."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def webhook_deliver(*, delivery_id: uuid.UUID | str, attempt: int) -> dict[str, Any]:
    """POST the delivery once and record the attempt; 2xx delivers it.

    Raises WebhookDeliveryFailed (retry) on a timeout, connection error or 5xx, and WebhookRejected
    (dead) on any other answer. A delivery already delivered is not sent again (a redelivered job).
    """
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None:
        # Its endpoint was deleted after the event: nobody is left to tell.
        logger.info("webhook delivery %s is gone (endpoint deleted): nothing to send", delivery_id)
        return {"delivery": str(delivery_id), "skipped": "delivery deleted"}
    if delivery.delivered_at is not None:
        return {"delivery": str(delivery.id), "delivered_at": delivery.delivered_at.isoformat(), "already": True}
    endpoint = delivery.endpoint
    if not endpoint.active:
        raise WebhookRejected(f"endpoint {endpoint.name!r} is inactive: activate it, then retry the job")

    body = webhook_body(delivery)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Webhook-Id": str(delivery.id),
        "X-Webhook-Event": delivery.event,
        "X-Webhook-Timestamp": timestamp,
        "X-Webhook-Signature": webhook_signature(secret=endpoint.secret, timestamp=timestamp, body=body),
    }
    sent_at, started = timezone.now(), time.monotonic()
    status_code, error = None, ""
    try:
        response = requests.post(
            endpoint.url,
            data=body,
            headers=headers,
            timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
            allow_redirects=False,
            stream=True,  # read only the start of the answer: a receiver's body is not ours to store
        )
        with response:
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}: {_answer_start(response)}"
    except requests.Timeout:
        error = f"timed out after {settings.WEBHOOK_TIMEOUT_SECONDS}s"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"
    duration_ms = max(0, round((time.monotonic() - started) * 1000))

    # Recorded before the outcome is acted on, whatever it is, so every attempt shows in admin.
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery, number=attempt, status_code=status_code, duration_ms=duration_ms, error=error, at=sent_at
        )
        if not error:
            delivery.delivered_at = timezone.now()
            delivery.save(update_fields=["delivered_at"])
    outcome = f"{endpoint.url} answered {status_code}" if status_code is not None else f"{endpoint.url}: {error}"
    if not error:
        logger.info(
            "webhook delivery %s (%s) delivered: %s in %d ms", delivery.id, delivery.event, outcome, duration_ms
        )
        return {"delivery": str(delivery.id), "status_code": status_code, "duration_ms": duration_ms}
    logger.warning("webhook delivery %s attempt %d failed: %s", delivery.id, attempt, error)
    if status_code is None or status_code >= 500:
        raise WebhookDeliveryFailed(outcome)
    raise WebhookRejected(f"{outcome} ({error})")


def _answer_start(response: requests.Response) -> str:
    """The first characters of an answer's body, for the attempt's error."""
    try:
        chunk = next(response.iter_content(ERROR_BODY_CHARS * 4), b"")
    except requests.RequestException:
        return ""
    return chunk.decode(errors="replace")[:ERROR_BODY_CHARS].strip()


def _alert_data(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.pk,
        "rule": alert.rule,
        "subject": alert.subject,
        "state": alert.state,
        "message": alert.message,
        "value": alert.value,
        "threshold": alert.threshold,
        "opened_at": alert.opened_at.isoformat(),
        "resolved_at": alert.resolved_at.isoformat() if alert.resolved_at else None,
    }


# The platform announces its alerts with a signal (it never imports the shop): each opening and
# resolving becomes a signed delivery to the subscribed endpoints, queued in the transaction that
# opened or resolved the alert, so it is sent after commit, once, with the deliveries' retries.
@receiver(alert_opened, dispatch_uid="webhook_alert_opened")
def webhook_alert_opened(sender: Any, *, alert: Alert, **_: Any) -> None:
    webhook_event_dispatch(event=WebhookEvent.ALERT_OPENED, data=_alert_data(alert))


@receiver(alert_resolved, dispatch_uid="webhook_alert_resolved")
def webhook_alert_resolved(sender: Any, *, alert: Alert, **_: Any) -> None:
    webhook_event_dispatch(event=WebhookEvent.ALERT_RESOLVED, data=_alert_data(alert))
