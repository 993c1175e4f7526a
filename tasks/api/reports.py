"""Sales reports: request one, follow it, download its PDF.

``POST /api/reports`` answers at once (202) with the report and its build job; the job runs on
the bulk queue and reports progress; ``GET /api/reports/{id}`` shows it, with ``download_url``
(``/reports/{id}/download``) once the PDF is written. Another user's report answers 404.
"""

from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from django.http import HttpRequest
from django.urls import reverse
from ninja import Field, Schema, Status
from ninja.pagination import PageNumberPagination, paginate

from tasks.api.base import Error, Unprocessable, api
from tasks.models import Job, Report
from tasks.ratelimit import rate_limited
from tasks.selectors.reports import report_get_visible, reports_visible_to
from tasks.services.reports import MAX_REPORT_DAYS, ReportRequestInvalid, report_request

_BROKER_DOWN = "the broker is unavailable; recorded as pending, the relay publishes when Redis is back"


class ReportIn(Schema):
    date_from: date = Field(description="First day, YYYY-MM-DD (inclusive).")
    date_to: date = Field(description=f"Last day, YYYY-MM-DD (inclusive); at most {MAX_REPORT_DAYS} days in all.")


class ReportAccepted(Schema):
    id: UUID
    job_id: UUID | None
    state: str
    url: str
    job_url: str | None


class ReportNotPublished(ReportAccepted):
    detail: str
    code: str


class ReportOut(Schema):
    id: UUID
    date_from: date
    date_to: date
    state: str = Field(description="The build job's state (succeeded once the job left the ledger).")
    progress: int = Field(description="0 to 100, the latest the build reported.")
    progress_message: str
    error: str = Field(description="Why the build failed, when it did.")
    job_id: UUID | None
    job_url: str | None
    order_count: int | None = Field(description="Confirmed orders in the range, once built.")
    unit_count: int | None
    row_count: int | None = Field(description="Rows of the PDF's table: one per day of the range.")
    revenue: Decimal | None
    created_at: datetime
    finished_at: datetime | None = Field(description="When the PDF was written.")
    download_url: str | None = Field(description="The PDF, once built (owner or staff).")

    @staticmethod
    def resolve_state(report: Report) -> str:
        return _state(report)

    @staticmethod
    def resolve_progress(report: Report) -> int:
        return report.job.progress if report.job else (100 if report.finished_at else 0)

    @staticmethod
    def resolve_progress_message(report: Report) -> str:
        return report.job.progress_message if report.job else ""

    @staticmethod
    def resolve_error(report: Report) -> str:
        return report.job.error if report.job else ""

    @staticmethod
    def resolve_job_url(report: Report) -> str | None:
        return _job_url(report)

    @staticmethod
    def resolve_download_url(report: Report) -> str | None:
        return reverse("report_download", kwargs={"report_id": report.pk}) if report.ready else None


def _state(report: Report) -> str:
    if report.job is not None:
        return report.job.state
    # Only succeeded jobs leave the ledger (retention), so a built report without one succeeded.
    return Job.State.SUCCEEDED if report.finished_at else "unknown"


def _job_url(report: Report) -> str | None:
    return reverse("api:job_get", kwargs={"job_id": report.job_id}) if report.job_id else None


def _accepted(report: Report) -> dict[str, Any]:
    return {
        "id": report.pk,
        "job_id": report.job_id,
        "state": _state(report),
        "url": reverse("api:report_get", kwargs={"report_id": report.pk}),
        "job_url": _job_url(report),
    }


@api.post(
    "/reports",
    response={
        202: ReportAccepted,
        400: Error,
        401: Error,
        413: Error,
        422: Unprocessable,
        429: Error,
        503: ReportNotPublished,
    },
    url_name="report_create",
)
@rate_limited()
def report_create(request: HttpRequest, body: ReportIn):
    """Ask for a sales report over a date range; answers at once (202) with the report and its
    job. The PDF is built on the bulk queue. 422 names the field when the range is refused."""
    try:
        report = report_request(owner=request.user, date_from=body.date_from, date_to=body.date_to, origin="api")
    except ReportRequestInvalid as exc:
        error = {"field": exc.field, "message": str(exc)}
        return Status(422, {"detail": f"invalid request: {exc}", "code": "invalid_request", "errors": [error]})
    if report.job.publish_error:
        return Status(503, {**_accepted(report), "code": "broker_unavailable", "detail": _BROKER_DOWN})
    return Status(202, _accepted(report))


@api.get("/reports", response={200: list[ReportOut], 401: Error, 422: Unprocessable}, url_name="report_list")
@paginate(PageNumberPagination, page_size=50, max_page_size=200)
def report_list(request: HttpRequest):
    """The caller's reports (every report for staff), newest first; paginated as /api/jobs."""
    return reports_visible_to(request.user).order_by("-created_at", "-id")


@api.get("/reports/{report_id}", response={200: ReportOut, 401: Error, 404: Error}, url_name="report_get")
def report_get(request: HttpRequest, report_id: UUID):
    """The report and its build's progress; ``download_url`` once the PDF is ready. Another
    user's report answers 404, as a missing one does."""
    return report_get_visible(user=request.user, report_id=report_id)
