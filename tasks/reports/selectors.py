"""Reading reports on a caller's behalf: users see their own, staff in scope see all."""

from __future__ import annotations

from uuid import UUID

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from tasks.platform.permissions import has_staff_scope
from tasks.reports.models import Report


def reports_visible_to(user) -> QuerySet[Report]:
    reports = Report.objects.all() if has_staff_scope(user, "report") else Report.objects.filter(owner=user)
    return reports.select_related("job")


def report_get_visible(*, user, report_id: UUID) -> Report:
    """The report, or Http404 when it does not exist or ``user`` may not see it (the same answer)."""
    return get_object_or_404(reports_visible_to(user), pk=report_id)
