"""Retention of reports: they go with their PDF REPORT_RETENTION_DAYS after they were built (or
requested, when never built), unless their job is still under way; a PDF whose report row is gone
(its owner deleted) goes too. Deleted in chunks, one short transaction each."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from django.core.files.storage import default_storage
from django.db.models import Q
from django.utils import timezone

from tasks.platform.models.jobs import FINISHED_STATES
from tasks.platform.services.retention import PRUNE_CHUNK
from tasks.reports.models import Report

logger = logging.getLogger(__name__)

#: where report PDFs are stored (tasks.reports.models.report_upload_to)
REPORTS_DIR = "reports"
UUID_TEXT_LENGTH = 36


def reports_prune(*, older_than: timedelta) -> dict[str, int]:
    """Delete reports built (or, never built, requested) more than ``older_than`` ago whose job is
    not under way, with their PDFs, then PDFs as old whose report is gone; returns the counts."""
    cutoff = timezone.now() - older_than
    expired = Report.objects.filter(
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff),
        Q(job__isnull=True) | Q(job__state__in=FINISHED_STATES),
    ).order_by("created_at")
    reports = files = 0
    while True:
        chunk = list(expired.values_list("pk", "file")[:PRUNE_CHUNK])
        if not chunk:
            break
        # The rows first: a report without its row answers 404 at once; a file left behind by a
        # failure here is an orphan the sweep below deletes on a later night.
        reports += Report.objects.filter(pk__in=[pk for pk, _ in chunk]).delete()[1].get(Report._meta.label, 0)
        for _, name in chunk:
            if name and _file_delete(name):
                files += 1
    orphans = _orphan_files_delete(cutoff=cutoff)
    return {"reports": reports, "files": files + orphans, "orphan_files": orphans}


def _file_delete(name: str) -> bool:
    try:
        existed = default_storage.exists(name)
        default_storage.delete(name)
    except OSError:
        logger.exception("report file %s could not be deleted", name)
        return False
    return existed


def _orphan_files_delete(*, cutoff: datetime) -> int:
    """PDFs under reports/ older than the cutoff with no report row (their owner was deleted, or a
    prune stopped between a row and its file)."""
    try:
        _, names = default_storage.listdir(REPORTS_DIR)
    except FileNotFoundError:
        return 0
    deleted = 0
    for start in range(0, len(names), PRUNE_CHUNK):
        batch = {_report_id(name): name for name in names[start : start + PRUNE_CHUNK]}
        batch.pop(None, None)  # not a report's file: left alone
        kept = {str(pk) for pk in Report.objects.filter(pk__in=list(batch)).values_list("pk", flat=True)}
        for report_id, name in batch.items():
            path = f"{REPORTS_DIR}/{name}"
            if report_id in kept or default_storage.get_modified_time(path) >= cutoff:
                continue  # a report's file, or one being written for a report not yet visible here
            if _file_delete(path):
                deleted += 1
    return deleted


def _report_id(name: str) -> str | None:
    """The report id a file name starts with (``<id>.pdf``, or ``<id>_<suffix>.pdf`` when the storage
    picked another name); None for any other name."""
    if not name.endswith(".pdf"):
        return None
    try:
        return str(uuid.UUID(name[:UUID_TEXT_LENGTH]))
    except ValueError:
        return None
