"""Shop housekeeping run by beat: cancelled orders leave after their retention, stuck orders alert ops."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tasks.orders.models import OpsAlert, Order

logger = logging.getLogger(__name__)

#: most alerts raised in one run, so an outage does not make one run endless; the next runs raise the rest
MAX_ALERTS_PER_RUN = 500
#: order ids per query when looking up existing alerts
LOOKUP_CHUNK = 500


def orders_prune_cancelled(*, older_than: timedelta, batch_size: int = 1000) -> int:
    """Delete cancelled orders that finished before ``older_than`` ago; returns how many.

    Each batch is its own short transaction, so a large backlog never holds locks for long. Items
    and workflow steps go with their order (cascade); the steps' jobs stay in the ledger, which
    has its own retention.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    cutoff = timezone.now() - older_than
    # finished_at is set when an order is cancelled; rows from before it was recorded fall back
    # to their last change (updated_at is never null).
    expired = Q(status=Order.Status.CANCELLED) & (
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, updated_at__lt=cutoff)
    )
    deleted = 0
    while True:
        with transaction.atomic():
            # Locked, so an order cannot change status between being chosen and being deleted;
            # rows another transaction holds are skipped (and a later run takes them).
            batch = list(
                Order.objects.select_for_update(skip_locked=True)
                .filter(expired)
                .order_by()
                .values_list("pk", flat=True)[:batch_size]
            )
            if not batch:
                break
            _, per_model = Order.objects.filter(pk__in=batch).delete()
        deleted += per_model.get(Order._meta.label, 0)
        if len(batch) < batch_size:
            break
    if deleted:
        logger.info("pruned %d cancelled orders finished before %s", deleted, cutoff.isoformat())
    return deleted


def orders_alert_stuck_pending(*, older_than: timedelta) -> list[OpsAlert]:
    """Raise one ops alert per order pending for longer than ``older_than``; returns the new alerts.

    An order is alerted once (the alert's (kind, subject) is unique), not at every run, and
    its alert is resolved by the first run that finds the order no longer pending (or gone).
    """
    now = timezone.now()
    resolved = _stuck_pending_alerts_resolve(now=now)
    if resolved:
        logger.info("resolved %d stuck-order alerts: those orders are no longer pending", resolved)

    stuck = list(
        Order.objects.filter(status=Order.Status.PENDING, created_at__lt=now - older_than)
        .order_by("created_at")
        .only("pk", "email", "created_at")
    )
    # Usually a handful of orders; thousands when payments are down for hours, and then every one
    # of them is still alerted exactly once.
    alerted: set[str] = set()
    for chunk in _chunks([str(order.pk) for order in stuck]):
        alerted.update(
            OpsAlert.objects.filter(kind=OpsAlert.Kind.ORDER_STUCK_PENDING, subject__in=chunk).values_list(
                "subject", flat=True
            )
        )
    stuck = [order for order in stuck if str(order.pk) not in alerted][:MAX_ALERTS_PER_RUN]
    raised = []
    for order in stuck:
        age = now - order.created_at
        minutes = int(age.total_seconds() // 60)
        # get_or_create, not create: another run raising the same alert concurrently is harmless.
        alert, created = OpsAlert.objects.get_or_create(
            kind=OpsAlert.Kind.ORDER_STUCK_PENDING,
            subject=str(order.pk),
            defaults={
                "message": (
                    f"Order {order.pk} ({order.email}) has been pending for {minutes} minutes, since "
                    f"{order.created_at:%Y-%m-%d %H:%M:%S %Z}: its payment validation has not finished."
                )
            },
        )
        if created:
            logger.warning("order %s stuck in pending for %d minutes (since %s)", order.pk, minutes, order.created_at)
            raised.append(alert)
    return raised


def _stuck_pending_alerts_resolve(*, now) -> int:
    """Resolve the open stuck-order alerts whose order is no longer pending or no longer exists."""
    open_alerts = dict(
        OpsAlert.objects.filter(kind=OpsAlert.Kind.ORDER_STUCK_PENDING, resolved_at__isnull=True).values_list(
            "subject", "pk"
        )
    )
    # A subject that is not an order id (typed in by hand) has no pending order: it is resolved too.
    order_ids = [order_id for order_id in map(_as_uuid, open_alerts) if order_id is not None]
    still_pending: set[str] = set()
    for chunk in _chunks(order_ids):
        pending = Order.objects.filter(pk__in=chunk, status=Order.Status.PENDING).values_list("pk", flat=True)
        still_pending.update(str(pk) for pk in pending)
    settled = [pk for subject, pk in open_alerts.items() if subject not in still_pending]
    return sum(
        OpsAlert.objects.filter(pk__in=chunk, resolved_at__isnull=True).update(resolved_at=now)
        for chunk in _chunks(settled)
    )


def _chunks(values: list) -> list[list]:
    """Slices small enough for one IN (...) query on every database."""
    return [values[start : start + LOOKUP_CHUNK] for start in range(0, len(values), LOOKUP_CHUNK)]


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
