"""Retention: succeeded jobs leave the ledger after JOB_RETENTION_DAYS; failed and dead ones stay.

The jobs of an order's workflow stay as long as the order does: they are its fulfillment history
(the cancelled-order prune deletes the order, and its jobs become prunable then).
"""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from tasks.models import Job

PRUNE_CHUNK = 1000


def jobs_prune_succeeded(*, older_than: timedelta) -> int:
    """Delete succeeded jobs that finished before ``older_than`` ago, in chunks; returns the count."""
    cutoff = timezone.now() - older_than
    deleted = 0
    while True:
        expired = Job.objects.filter(state=Job.State.SUCCEEDED, finished_at__lt=cutoff, order_step__isnull=True)
        chunk = list(expired.values_list("pk", flat=True)[:PRUNE_CHUNK])
        if not chunk:
            return deleted
        # Counts jobs only, not the attempts and actions deleted with them.
        deleted += Job.objects.filter(pk__in=chunk).delete()[1].get(Job._meta.label, 0)
