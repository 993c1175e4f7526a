"""The relay: publishes what enqueue could not, and delayed jobs and retries when they fall due.

A job is published by whoever holds its lease (``publishing_since``): the enqueuing request takes
it when it writes the row; the relay takes only free or expired leases, inside one transaction
with ``SKIP LOCKED``, so two relays (or a relay and a request) never publish the same job twice.
An expired lease on a ``queued`` job (job_enqueue writes it so before its publish, see
tasks.services.leases) means its process died before it released the lease, maybe before the
publish: the relay publishes it again.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tasks.models import Job
from tasks.services.jobs import job_publish_many

#: a lease older than this belongs to a process that died between commit and publish
PUBLISH_LEASE = timedelta(seconds=30)
#: jobs claimed and published per pass (one Redis pipeline)
RELAY_BATCH = 500


def jobs_relay(*, limit: int = RELAY_BATCH) -> int:
    """Publish due, unpublished jobs; returns how many were published."""
    now = timezone.now()
    expired = now - PUBLISH_LEASE
    due = (
        Q(state=Job.State.PENDING)
        | Q(state__in=[Job.State.SCHEDULED, Job.State.RETRYING], run_at__lte=now)
        | Q(state=Job.State.QUEUED, publishing_since__lt=expired)
    )
    free = Q(publishing_since__isnull=True) | Q(publishing_since__lt=expired)
    with transaction.atomic():
        jobs = list(Job.objects.select_for_update(skip_locked=True).filter(due & free).order_by("created_at")[:limit])
        Job.objects.filter(pk__in=[job.pk for job in jobs]).update(publishing_since=now)
    if not jobs:
        return 0
    return len(jobs) if job_publish_many(jobs=jobs) else 0
