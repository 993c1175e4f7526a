"""Retention: succeeded jobs leave the ledger after JOB_RETENTION_DAYS; failed and dead ones stay."""

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
        chunk = list(
            Job.objects.filter(state=Job.State.SUCCEEDED, finished_at__lt=cutoff).values_list("pk", flat=True)[
                :PRUNE_CHUNK
            ]
        )
        if not chunk:
            return deleted
        deleted += Job.objects.filter(pk__in=chunk).delete()[0]
