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
from django.db.models import Q
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
    # finished_at is set whenever a job finishes; rows from before that fall back to created_at.
    expired = Job.objects.filter(
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff),
        state__in=states,
        order_step__isnull=True,
    )
    while True:
        chunk = list(expired.values_list("pk", "state")[:PRUNE_CHUNK])
        if not chunk:
            return deleted
        with transaction.atomic():
            # Only rows still as selected: one retried meanwhile is no longer finished.
            gone = Job.objects.filter(pk__in=[pk for pk, _ in chunk], state__in=states).select_for_update()
            ids_states = dict(gone.values_list("pk", "state"))
            Job.objects.filter(pk__in=list(ids_states)).delete()  # attempts and actions go with them
        for state in ids_states.values():
            deleted[state] += 1
