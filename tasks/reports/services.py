"""Sales reports: request one (web), build its PDF (a bulk worker).

A report covers confirmed orders, each counted on the day it was created (``Order.created_at``
in ``TIME_ZONE``), over ``days`` days from ``date_from``, both included (bounds in
tasks.reports.models: 1 to ``MAX_REPORT_DAYS`` days, a first day in the years 1900 to 2999, so
every range stays within valid dates). Revenue is the sum of the orders' ``total`` (what was
charged); units the sum of their items' quantities.

The PDF has a title with the range, a summary (orders, units, revenue), a bar chart of revenue
per day and a table with exactly one row per day of the range, days without sales included (so
its row count is the number of days), then a total row.

Memory stays bounded whatever the number of orders: the orders are streamed from the database
(``iterator(chunk_size=STREAM_CHUNK)``, a server-side cursor on PostgreSQL) and folded into one
accumulator per day, so the worker holds at most one chunk and ``MAX_REPORT_DAYS`` totals.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import IO, Any
from uuid import UUID

from django.core.files import File
from django.db import transaction
from django.db.models import IntegerField, Sum, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from tasks.orders.models import Order
from tasks.platform.services.jobs import job_enqueue
from tasks.reports.models import Report, report_range_errors

logger = logging.getLogger(__name__)

#: the ledger task that builds a report (routed to the bulk queue by celeryconfig)
BUILD_SALES_TASK = "reports.build_sales"
#: orders fetched from the database per round trip while streaming
STREAM_CHUNK = 2000
#: progress is reported each time counting moves on by this many percent
PROGRESS_STEP = 5
#: share of the progress bar spent counting orders; drawing and storing the PDF take the rest
COUNTING_SHARE = 80

Progress = Callable[[int, str], None]


class ReportRequestInvalid(ValueError):
    """The requested range is refused; ``field`` names the offending input."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class ReportMissing(LookupError):
    """The report to build no longer exists: no retry can bring it back."""


@dataclass
class DayTotals:
    orders: int = 0
    units: int = 0
    revenue: Decimal = Decimal("0")


@dataclass(frozen=True)
class SalesFigures:
    date_from: date
    date_to: date
    days: dict[date, DayTotals]  # every day of the range, in order

    @property
    def orders(self) -> int:
        return sum(day.orders for day in self.days.values())

    @property
    def units(self) -> int:
        return sum(day.units for day in self.days.values())

    @property
    def revenue(self) -> Decimal:
        return sum((day.revenue for day in self.days.values()), Decimal("0"))


# --- request (web) ----------------------------------------------------------------------------


def report_request(*, owner, date_from: date, days: int, origin: str = "") -> Report:
    """Validate the range (``days`` days from ``date_from``, both ends included), then write the
    report and its build job in one transaction.

    The job is published after commit (job_enqueue), so the worker always finds the report row.
    """
    report_range_check(date_from=date_from, days=days)
    date_to = date_from + timedelta(days=days - 1)
    with transaction.atomic():
        report = Report(owner=owner, date_from=date_from, date_to=date_to)
        report.job = job_enqueue(
            task_name=BUILD_SALES_TASK, payload={"report_id": str(report.pk)}, owner=owner, origin=origin
        )
        report.save(force_insert=True)
    logger.info("report %s requested for %s to %s (job %s)", report.pk, date_from, date_to, report.job_id)
    return report


def report_range_check(*, date_from: date, days: int) -> None:
    """Refuse a first day out of bounds or a length out of 1..MAX_REPORT_DAYS, naming the field
    (the bounds of the Report model, which the API's schema declares)."""
    errors = report_range_errors(date_from, days)
    if errors:
        field, message = next(iter(errors.items()))
        raise ReportRequestInvalid(field, f"{field} {message}")


# --- build (bulk worker) ----------------------------------------------------------------------


def report_build(*, report_id: UUID | str, progress: Progress) -> dict[str, Any]:
    """Count the sales, draw the PDF and store it under the report's own name, then record the figures.

    Idempotent: a rerun (retry, redelivery) overwrites the same file and fields.
    """
    report = Report.objects.filter(pk=report_id).first()
    if report is None:
        raise ReportMissing(f"report {report_id} does not exist")
    figures = sales_figures(date_from=report.date_from, date_to=report.date_to, progress=progress)

    progress(COUNTING_SHARE + 5, "drawing the PDF")
    with tempfile.TemporaryFile(suffix=".pdf") as pdf:
        report_pdf_write(figures, pdf, generated_at=timezone.now())
        size = pdf.tell()
        progress(COUNTING_SHARE + 15, "storing the PDF")
        name = _store(report, pdf)

    fields = {
        "file": name,
        "order_count": figures.orders,
        "unit_count": figures.units,
        "row_count": len(figures.days),
        "revenue": figures.revenue,
        "finished_at": timezone.now(),
    }
    Report.objects.filter(pk=report.pk).update(**fields)
    logger.info("report %s built: %s orders over %s days, %s bytes", report.pk, figures.orders, len(figures.days), size)
    return {
        "report_id": str(report.pk),
        "orders": figures.orders,
        "units": figures.units,
        "revenue": str(figures.revenue),
        "rows": len(figures.days),
        "bytes": size,
    }


def sales_figures(*, date_from: date, date_to: date, progress: Progress | None = None) -> SalesFigures:
    """Per-day totals of confirmed orders, streamed: memory does not grow with the order count."""
    zone = timezone.get_current_timezone()
    start = datetime.combine(date_from, time.min, tzinfo=zone)
    end = datetime.combine(date_to + timedelta(days=1), time.min, tzinfo=zone)
    orders = Order.objects.filter(status=Order.Status.CONFIRMED, created_at__gte=start, created_at__lt=end)
    days = {date_from + timedelta(days=n): DayTotals() for n in range((date_to - date_from).days + 1)}

    total = orders.count()
    report = progress or (lambda percent, message: None)
    report(0, f"counting {total:,} orders")
    rows = (
        orders.order_by()  # no ORDER BY: the totals do not depend on it and the database sorts nothing
        .annotate(units=Coalesce(Sum("items__quantity"), Value(0), output_field=IntegerField()))
        .values_list("created_at", "total", "units")
        .iterator(chunk_size=STREAM_CHUNK)
    )
    next_report = PROGRESS_STEP
    for seen, (created_at, order_total, units) in enumerate(rows, start=1):
        day = days.get(timezone.localtime(created_at, zone).date())
        if day is not None:  # always, by the filter
            day.orders += 1
            day.units += units
            day.revenue += order_total
        if total and seen * 100 >= next_report * total:
            percent = min(100, seen * 100 // total)  # orders confirmed since the count make seen > total
            report(percent * COUNTING_SHARE // 100, f"counted {seen:,} of {total:,} orders")
            next_report = (percent // PROGRESS_STEP + 1) * PROGRESS_STEP
    return SalesFigures(date_from=date_from, date_to=date_to, days=days)


def _store(report: Report, pdf: IO[bytes]) -> str:
    """Write the PDF under the report's fixed name, replacing an earlier build's file."""
    storage = report.file.storage
    name = report.file.field.generate_filename(report, "report.pdf")
    pdf.seek(0)
    if storage.exists(name):
        storage.delete(name)  # storages never overwrite: they would pick another name
    saved = storage.save(name, File(pdf, name=name))
    if saved != name:  # a concurrent build of the same report won the name
        logger.warning("report %s: stored as %s, not %s", report.pk, saved, name)
    return saved


# --- the PDF ----------------------------------------------------------------------------------


def report_pdf_write(figures: SalesFigures, out: IO[bytes], *, generated_at: datetime) -> None:
    """Title, summary, revenue chart and the per-day table, with reportlab's platypus."""
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    days = len(figures.days)
    title = f"Sales report {figures.date_from.isoformat()} to {figures.date_to.isoformat()}"
    doc = SimpleDocTemplate(
        out, pagesize=A4, title=title, author="task platform", leftMargin=18 * mm, rightMargin=18 * mm
    )
    grid = TableStyle(
        [
            ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef7")),
            ("FONTNAME", (0, 0), (-1, 0), "Helvetica-Bold"),
            ("ALIGN", (1, 0), (-1, -1), "RIGHT"),
            ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
            ("FONTSIZE", (0, 0), (-1, -1), 9),
        ]
    )
    summary = Table(
        [
            ["Orders", "Units", "Revenue", "Days"],
            [f"{figures.orders:,}", f"{figures.units:,}", _money(figures.revenue), str(days)],
        ],
        colWidths=[40 * mm] * 4,
        hAlign="LEFT",
        style=grid,
    )
    rows = [["Date", "Orders", "Units", "Revenue"]]
    rows += [[day.isoformat(), str(t.orders), str(t.units), _money(t.revenue)] for day, t in figures.days.items()]
    rows.append(["Total", str(figures.orders), str(figures.units), _money(figures.revenue)])
    table = Table(rows, colWidths=[40 * mm] * 4, repeatRows=1, hAlign="LEFT", style=grid)
    table.setStyle([("FONTNAME", (0, -1), (-1, -1), "Helvetica-Bold")])

    story = [
        Paragraph(title, styles["Title"]),
        Paragraph(
            f"Confirmed orders by the day they were placed ({timezone.get_current_timezone_name()}), "
            f"{days} day{'s' if days != 1 else ''}. Generated {generated_at:%Y-%m-%d %H:%M} UTC.",
            styles["Normal"],
        ),
        Spacer(1, 4 * mm),
        summary,
        Spacer(1, 6 * mm),
        Paragraph("Revenue per day", styles["Heading2"]),
        _revenue_chart(figures, width=doc.width),
        Spacer(1, 6 * mm),
        Paragraph("Daily sales", styles["Heading2"]),
        table,
    ]
    doc.build(story)


def _revenue_chart(figures: SalesFigures, *, width: float):
    from reportlab.graphics.charts.barcharts import VerticalBarChart
    from reportlab.graphics.shapes import Drawing
    from reportlab.lib import colors

    height = 200
    drawing = Drawing(width, height)
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 45, 40, width - 60, height - 55
    chart.data = [[float(t.revenue) for t in figures.days.values()]]
    chart.bars[0].fillColor = colors.HexColor("#4a78b5")
    chart.bars.strokeWidth = 0
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontSize = 7
    # Month-day labels (no year, so they never read as a table row), thinned to about 15.
    every = max(1, len(figures.days) // 15)
    chart.categoryAxis.categoryNames = [
        day.strftime("%m-%d") if index % every == 0 else "" for index, day in enumerate(figures.days)
    ]
    chart.categoryAxis.labels.fontSize = 7
    chart.categoryAxis.labels.angle = 45
    chart.categoryAxis.labels.boxAnchor = "ne"
    chart.categoryAxis.tickDown = 2
    drawing.add(chart)
    return drawing


def _money(amount: Decimal) -> str:
    return f"{amount:,.2f}"
