"""Schedules the platform needs, seeded into django-celery-beat (admins may edit or disable them)."""

from __future__ import annotations

import json

from tasks.queues import QueueName

RETENTION_SCHEDULE = "Prune succeeded jobs (JOB_RETENTION_DAYS)"


def schedules_seed(**_signal_kwargs) -> None:
    """Create the platform's schedules if missing; an admin's edits to existing ones are kept.

    Connected to post_migrate, so it also runs after the test database is flushed.
    """
    from django_celery_beat.models import CrontabSchedule, PeriodicTask

    nightly, _ = CrontabSchedule.objects.get_or_create(
        minute="17", hour="3", day_of_week="*", day_of_month="*", month_of_year="*", timezone="UTC"
    )
    PeriodicTask.objects.get_or_create(
        name=RETENTION_SCHEDULE,
        defaults={
            "task": "jobs.prune_succeeded",
            "crontab": nightly,
            "queue": QueueName.BULK.value,
            "kwargs": json.dumps({}),
            "description": "Deletes succeeded jobs older than JOB_RETENTION_DAYS from the job ledger.",
        },
    )
