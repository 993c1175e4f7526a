"""Line charts as inline SVG, drawn on the server with ReportLab's graphics (already the platform's
PDF library), for Flower's Metrics page and admin's metric history: the pages need no script and
nothing from another site.

ReportLab escapes the text it writes into the SVG; the titles and legends drawn here are the
platform's own words, and names from the ledger (queues, tasks) stay in the pages' HTML, which
their templates escape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from reportlab.graphics import renderSVG
from reportlab.graphics.charts.lineplots import LinePlot
from reportlab.graphics.shapes import Drawing, Line, String
from reportlab.lib import colors

WIDTH, HEIGHT = 640, 230
#: plot area inside the drawing: left, bottom, width, height
PLOT = (56, 42, 560, 150)
#: Bootstrap's palette, so the charts sit well in Flower's pages
PALETTE = ("#0d6efd", "#198754", "#fd7e14", "#dc3545", "#6f42c1")


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float | None]  # one per step; None: nothing to show there (a gap)


def _nice_ceiling(value: float) -> float:
    """A round axis maximum at or above ``value`` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if value <= step * power * (1 + 1e-9))


def line_chart(*, title: str, unit: str, series: Sequence[Series], labels: Sequence[str]) -> str:
    """An SVG line chart of ``series`` over steps named by ``labels`` (a few are printed)."""
    drawing = Drawing(WIDTH, HEIGHT)
    left, bottom, width, height = PLOT
    steps = max(len(labels), 2)
    top = _nice_ceiling(max((v for s in series for v in s.values if v is not None), default=0.0))
    plot = LinePlot()
    plot.x, plot.y, plot.width, plot.height = left, bottom, width, height
    plot.data = [
        [(index, value) for index, value in enumerate(line.values) if value is not None] or [(0, 0)] for line in series
    ]
    plot.xValueAxis.valueMin, plot.xValueAxis.valueMax = 0, steps - 1
    plot.xValueAxis.visibleLabels = False
    plot.xValueAxis.visibleTicks = False
    plot.yValueAxis.valueMin, plot.yValueAxis.valueMax = 0, top
    plot.yValueAxis.valueStep = top / 4
    plot.yValueAxis.labels.fontSize = 8
    plot.yValueAxis.labelTextFormat = lambda value: f"{value:g}"
    plot.yValueAxis.visibleGrid = True
    plot.yValueAxis.gridStrokeColor = colors.HexColor("#dee2e6")
    for index, line in enumerate(series):
        plot.lines[index].strokeColor = colors.HexColor(PALETTE[index % len(PALETTE)])
        plot.lines[index].strokeWidth = 1.5
        if len(plot.data[index]) == 1 and line.values:
            plot.lines[index].symbol = None
    drawing.add(plot)
    drawing.add(String(left, HEIGHT - 18, f"{title} ({unit})", fontName="Helvetica-Bold", fontSize=11))
    for position in (0, (steps - 1) // 2, steps - 1):
        if position < len(labels):
            x = left + width * position / (steps - 1)
            drawing.add(String(x, bottom - 14, labels[position], fontSize=8, textAnchor="middle"))
    x = left
    for index, line in enumerate(series):
        color = colors.HexColor(PALETTE[index % len(PALETTE)])
        drawing.add(Line(x, 10, x + 14, 10, strokeColor=color, strokeWidth=2))
        drawing.add(String(x + 18, 7, line.label, fontSize=9))
        x += 30 + 6 * len(line.label)
    svg = renderSVG.drawToString(drawing)
    # Inline in HTML: the XML declaration and doctype go, and the SVG scales to its container.
    svg = svg[svg.index("<svg") :]
    return svg.replace(f'<svg width="{WIDTH}" height="{HEIGHT}"', '<svg class="platform-chart" role="img"', 1)


def _labels(points: list[dict[str, Any]], step_seconds: int) -> list[str]:
    pattern = "%H:%M" if step_seconds < 3600 else "%d %b %H:%M"
    return [point["start"].strftime(pattern) for point in points]


def history_charts(history: dict[str, Any]) -> dict[str, str]:
    """The charts of a metric history (tasks.platform.selectors.metric_history): ``throughput``,
    ``failures``, ``latency`` (enqueue to start) and ``runtime``, each one SVG."""
    points, seconds = history["points"], history["step_seconds"]
    labels = _labels(points, seconds)
    per = f"per {seconds // 60} min" if seconds < 3600 else f"per {seconds // 3600} h"

    def counted(*names: str) -> list[Series]:
        return [Series(name, [point[name] for point in points]) for name in names]

    def percentiles(field: str) -> list[Series]:
        return [Series(name, [point[field][name] for point in points]) for name in ("p50", "p95", "p99")]

    return {
        "throughput": line_chart(
            title="Throughput", unit=f"jobs {per}", series=counted("enqueued", "started", "succeeded"), labels=labels
        ),
        "failures": line_chart(title="Failures", unit=f"runs {per}", series=counted("failed", "dead"), labels=labels),
        "latency": line_chart(
            title="Enqueue to start", unit="seconds", series=percentiles("wait_seconds"), labels=labels
        ),
        "runtime": line_chart(title="Run time", unit="seconds", series=percentiles("run_seconds"), labels=labels),
    }
