"""Housekeeping tasks run by beat (not public: clients cannot enqueue them)."""

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from tasks.registry import LedgerTask
from tasks.services.retention import jobs_prune_succeeded


@shared_task(name="jobs.prune_succeeded", base=LedgerTask, bind=True)
def jobs_prune_succeeded_task(self: LedgerTask) -> dict:
    deleted = jobs_prune_succeeded(older_than=timedelta(days=settings.JOB_RETENTION_DAYS))
    return {"deleted": deleted, "retention_days": settings.JOB_RETENTION_DAYS}
