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
from pydantic import ConfigDict, StrictStr

from tasks.platform.api.base import Error, Forbidden, Unprocessable, api, request_allowance
from tasks.platform.api.pagination import paginated
from tasks.platform.json_types import JsonInt
from tasks.platform.models import Job
from tasks.platform.permissions import REPORT_PERMISSION
from tasks.platform.services.allowances import enqueue_admit
from tasks.reports.models import FIRST_REPORT_DAY, LAST_REPORT_START, MAX_REPORT_DAYS, Report
from tasks.reports.selectors import report_get_visible, reports_visible_to
from tasks.reports.services import ReportRequestInvalid, report_request

_BROKER_DOWN = "the broker is unavailable; recorded as pending, the relay publishes when Redis is back"

# Exactly the calendar's days of the years FIRST_REPORT_DAY.year to LAST_REPORT_START.year (1900-2999;
# leap years: every 4th, not 1900, 2100, 2200, 2300, 2500, 2600, 2700, 2900), as YYYY-MM-DD: what
# fits the schema is a day the report model takes, and date_from + days stays a valid date.
_YEAR = r"(?:19|2[0-9])[0-9]{2}"
_MONTH_DAY = r"(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
_LEAP_YEAR = r"(?:(?:19|2[0-9])(?:0[48]|[2468][048]|[13579][26])|2[048]00)"
DATE_FROM_PATTERN = rf"^(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)$"


class ReportIn(Schema):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused: additionalProperties false

    # A string, strictly: pydantic's date would take a number (a Unix time) or a datetime's text.
    date_from: StrictStr = Field(
        pattern=DATE_FROM_PATTERN,
        json_schema_extra={"format": "date"},
        description=f"First day, YYYY-MM-DD, from {FIRST_REPORT_DAY} to {LAST_REPORT_START}.",
    )
    days: JsonInt = Field(
        ge=1, le=MAX_REPORT_DAYS, description=f"Days the report covers from date_from, 1 to {MAX_REPORT_DAYS}."
    )


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
    date_to: date = Field(description="The last day (included): date_from + days - 1.")
    days: int
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
        403: Error,
        413: Error,
        422: Unprocessable,
        429: Error,
        503: ReportNotPublished,
    },
    url_name="report_create",
)
def report_create(request: HttpRequest, body: ReportIn):
    """Ask for a sales report of ``days`` days from ``date_from``; answers at once (202) with the
    report and its job. The PDF is built on the bulk queue."""
    # The figures are the whole shop's revenue: for those given the permission, not every customer.
    if not request.user.has_perm(REPORT_PERMISSION):
        raise Forbidden(
            "sales reports need the permission to add reports (tasks.add_report)", code="permission_required"
        )
    enqueue_admit(user=request.user, allowance=request_allowance(request), jobs=1)
    try:
        date_from = date.fromisoformat(body.date_from)  # the pattern admits calendar days only
        report = report_request(owner=request.user, date_from=date_from, days=body.days, origin="api")
    except ReportRequestInvalid as exc:
        error = {"field": exc.field, "message": str(exc)}
        return Status(422, {"detail": f"invalid request: {exc}", "code": "invalid_request", "errors": [error]})
    if report.job.publish_error:
        return Status(503, {**_accepted(report), "code": "broker_unavailable", "detail": _BROKER_DOWN})
    return Status(202, _accepted(report))


@api.get("/reports", response={200: list[ReportOut], 401: Error, 422: Unprocessable}, url_name="report_list")
@paginated
def report_list(request: HttpRequest):
    """The caller's reports (every report for staff), newest first; paginated as /api/jobs."""
    return reports_visible_to(request.user).order_by("-created_at", "-id")


@api.get("/reports/{report_id}", response={200: ReportOut, 401: Error, 404: Error}, url_name="report_get")
def report_get(request: HttpRequest, report_id: UUID):
    """The report and its build's progress; ``download_url`` once the PDF is ready. Another
    user's report answers 404, as a missing one does."""
    return report_get_visible(user=request.user, report_id=report_id)
