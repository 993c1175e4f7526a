"""Sales reports: a PDF over a date range of confirmed orders, built by a bulk job."""

import uuid
from datetime import date

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from tasks.platform.models.jobs import Job

#: the longest range one report may cover (a leap year)
MAX_REPORT_DAYS = 366
#: the first and the last day a report may start on: any range from them stays a valid date
FIRST_REPORT_DAY = date(1900, 1, 1)
LAST_REPORT_START = date(2999, 12, 31)


def report_range_errors(date_from: date, days: int) -> dict[str, str]:
    """Field -> why, for a report starting ``date_from`` over ``days`` days; empty when allowed."""
    errors = {}
    if not FIRST_REPORT_DAY <= date_from <= LAST_REPORT_START:
        errors["date_from"] = f"must be from {FIRST_REPORT_DAY} to {LAST_REPORT_START}"
    if not 1 <= days <= MAX_REPORT_DAYS:
        errors["days"] = f"must be 1 to {MAX_REPORT_DAYS}"
    return errors


def report_upload_to(report: "Report", filename: str) -> str:
    """One name per report, so a rebuild overwrites its own file instead of piling up copies."""
    return f"reports/{report.pk}.pdf"


class Report(models.Model):
    """One requested sales report; its figures and file are filled in by the job that builds it."""

    id = models.UUIDField("id", primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name="owner",
        on_delete=models.CASCADE,
        related_name="reports",
        help_text="Who asked for it: only they (and staff) may read or download it.",
    )
    date_from = models.DateField("from", help_text="First day of the range (inclusive, in TIME_ZONE).")
    date_to = models.DateField("to", help_text="Last day of the range (inclusive).")
    job = models.OneToOneField(
        Job,
        verbose_name="job",
        null=True,
        blank=True,
        # Not PROTECT: the ledger prunes succeeded jobs after JOB_RETENTION_DAYS, and a report
        # (its figures and file) outlives the job that built it.
        on_delete=models.SET_NULL,
        related_name="report",
        help_text="The bulk job that builds it; cleared when the ledger prunes that job.",
    )
    file = models.FileField(
        "PDF", upload_to=report_upload_to, blank=True, help_text="Written by the job, under reports/."
    )
    order_count = models.PositiveIntegerField("orders", null=True, blank=True, help_text="Confirmed orders counted.")
    unit_count = models.PositiveIntegerField("units", null=True, blank=True, help_text="Units over those orders.")
    row_count = models.PositiveIntegerField(
        "table rows", null=True, blank=True, help_text="Rows of the PDF's table: one per day of the range."
    )
    revenue = models.DecimalField(
        "revenue", max_digits=16, decimal_places=2, null=True, blank=True, help_text="Sum of the orders' totals."
    )
    created_at = models.DateTimeField("requested at", auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(
        "built at", null=True, blank=True, help_text="When the PDF was last written; empty until then."
    )

    class Meta:
        verbose_name = "sales report"
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"], name="report_owner_created")]
        constraints = [
            models.CheckConstraint(condition=models.Q(date_from__lte=models.F("date_to")), name="report_range_ordered"),
        ]

    def __str__(self) -> str:
        return f"sales report {self.date_from} to {self.date_to} ({self.pk})"

    def clean(self) -> None:
        if self.date_from is None or self.date_to is None:
            return  # the fields' own validation names what is missing
        errors = report_range_errors(self.date_from, self.days)
        if "days" in errors:
            errors["date_to"] = f"must be 0 to {MAX_REPORT_DAYS - 1} days after date_from"
            del errors["days"]
        if errors:
            raise ValidationError(errors)

    @property
    def days(self) -> int:
        """Days the range covers, both ends included."""
        return (self.date_to - self.date_from).days + 1

    @property
    def ready(self) -> bool:
        """The PDF can be downloaded."""
        return self.finished_at is not None and bool(self.file)
