"""Retention of the ledger: finished jobs leave it once they are old enough.

- Succeeded jobs go after JOB_RETENTION_DAYS; failed, dead and cancelled ones after
  JOB_FAILED_RETENTION_DAYS (longer: they are what ops look into). Counted from when they finished.
- The jobs of an order's workflow stay as long as the order does: they are its fulfillment history
  (the cancelled-order prune deletes the order, and its jobs become prunable then).
Everything is deleted in chunks of PRUNE_CHUNK rows, one short transaction each, so a large backlog
never holds locks for long.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from tasks.platform.models import Job

logger = logging.getLogger(__name__)

PRUNE_CHUNK = 1000
#: the states JOB_FAILED_RETENTION_DAYS applies to
FAILED_STATES = (Job.State.FAILED, Job.State.DEAD, Job.State.CANCELLED)


def jobs_prune_finished(*, succeeded_older_than: timedelta, failed_older_than: timedelta) -> dict[str, int]:
    """Delete succeeded jobs that finished more than ``succeeded_older_than`` ago, and failed, dead
    and cancelled ones past ``failed_older_than``; returns the jobs deleted per state."""
    now = timezone.now()
    deleted = _jobs_prune(states=(Job.State.SUCCEEDED,), cutoff=now - succeeded_older_than)
    deleted.update(_jobs_prune(states=FAILED_STATES, cutoff=now - failed_older_than))
    return deleted


def _jobs_prune(*, states: tuple[str, ...], cutoff: datetime) -> dict[str, int]:
    deleted = {str(state): 0 for state in states}
    # finished_at is set whenever a job finishes; rows from before that fall back to created_at. A
    # job finishes after it is created, so every expired row was also created before the cutoff:
    # that bound lets a chunk read an index from its old end to the cutoff, never the newer rows
    # retention keeps. Oldest first, each chunk from the last one's created_at on, so no chunk walks
    # again the index entries of the rows the chunks before it deleted.
    expired = (
        Job.objects.filter(
            Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True), created_at__lt=cutoff, state__in=states
        )
        .exclude(_in_a_workflow_of_an_order())
        .order_by("created_at")
    )
    chunk_query = expired
    while True:
        chunk = list(chunk_query.values_list("pk", "created_at")[:PRUNE_CHUNK])
        if not chunk:
            return deleted
        with transaction.atomic():
            # Only rows still as selected: one retried meanwhile is no longer finished.
            gone = Job.objects.filter(pk__in=[pk for pk, _ in chunk], state__in=states).select_for_update()
            ids_states = dict(gone.values_list("pk", "state"))
            Job.objects.filter(pk__in=list(ids_states)).delete()  # attempts and actions go with them
        for state in ids_states.values():
            deleted[state] += 1
        # From the last one's created_at on (not after it: rows created at the same moment may be
        # left). Each row chosen was deleted or no longer matches, so no chunk is chosen twice.
        chunk_query = expired.filter(created_at__gte=chunk[-1][1])


def _in_a_workflow_of_an_order() -> Exists:
    """The job is an order's workflow step. NOT EXISTS, not ``order_step__isnull=True``: PostgreSQL
    estimates the LEFT JOIN ... IS NULL of the latter at a fraction of a percent of the rows, and so
    sorted every candidate row for each chunk instead of reading them in order from an index."""
    # The relation as the shop declares it (OrderStep.job), without importing the shop.
    steps = Job._meta.get_field("order_step")
    return Exists(steps.related_model.objects.filter(**{steps.field.name: OuterRef("pk")}))
