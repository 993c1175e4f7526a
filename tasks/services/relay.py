"""The relay: publishes what enqueue could not, and delayed jobs and retries when they fall due.

A job is published by whoever holds its lease: an enqueue's PublishLease on the jobs it wrote
``queued``, or the relay's own on a row (``publishing_since``). The relay takes only free or
expired leases, inside one transaction with ``SKIP LOCKED``, so two relays (or a relay and a
request) never publish the same job twice. An expired PublishLease means its process died before
it released the lease, maybe before the publish: the relay publishes its still-queued jobs again.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tasks.models import Job, PublishLease
from tasks.services.jobs import job_publish_many
from tasks.services.leases import lease_release

#: a lease older than this belongs to a process that died between commit and publish
PUBLISH_LEASE = timedelta(seconds=30)
#: jobs claimed and published per pass (one Redis pipeline)
RELAY_BATCH = 500
#: expired enqueue leases taken over per pass (each a pipeline of its jobs)
RELAY_LEASES = 10


def jobs_relay(*, limit: int = RELAY_BATCH) -> int:
    """Publish due, unpublished jobs and those of expired enqueue leases; returns how many were
    published."""
    now = timezone.now()
    expired = now - PUBLISH_LEASE
    due = Q(state=Job.State.PENDING) | Q(state__in=[Job.State.SCHEDULED, Job.State.RETRYING], run_at__lte=now)
    free = Q(publishing_since__isnull=True) | Q(publishing_since__lt=expired)
    with transaction.atomic():
        jobs = list(Job.objects.select_for_update(skip_locked=True).filter(due & free).order_by("created_at")[:limit])
        Job.objects.filter(pk__in=[job.pk for job in jobs]).update(publishing_since=now)
        leases = list(
            PublishLease.objects.select_for_update(skip_locked=True)
            .filter(since__lt=expired)
            .order_by("since")[:RELAY_LEASES]
        )
        PublishLease.objects.filter(pk__in=[lease.pk for lease in leases]).update(since=now)
    published = len(jobs) if jobs and job_publish_many(jobs=jobs) else 0
    for lease in leases:
        orphans = list(Job.objects.filter(pk__in=lease.job_ids, state=Job.State.QUEUED))
        if not orphans:
            lease_release([lease.pk])
        elif job_publish_many(jobs=orphans, lease=lease.pk):
            published += len(orphans)
    return published
