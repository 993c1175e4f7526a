"""Django admin of the metric history: its rows, read only (the relay writes them), and above the
list each queue's small charts over the last 24 hours (throughput and enqueue-to-start latency),
drawn as Flower's Metrics page draws them (tasks.platform.charts).

Seeing it needs the *view job metric* permission, as Django admin does for any model.
"""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from tasks.platform.charts import history_charts
from tasks.platform.models import JobMetric
from tasks.platform.queues import QueueName
from tasks.platform.selectors.metric_history import metric_history

#: the range of the queue overview's charts
OVERVIEW_RANGE = "24h"


def queue_overview_charts() -> list[dict[str, str]]:
    """Per queue: its name, its throughput and latency charts, and its totals over OVERVIEW_RANGE."""
    overview = []
    for queue in QueueName.values:
        history = metric_history(range_name=OVERVIEW_RANGE, queue=queue)
        charts = history_charts(history)
        overview.append(
            {"queue": queue, "throughput": charts["throughput"], "latency": charts["latency"], **history["total"]}
        )
    return overview


@admin.register(JobMetric)
class JobMetricAdmin(admin.ModelAdmin):
    change_list_template = "admin/tasks/jobmetric_change_list.html"
    list_display = ("start", "period", "queue", "task_name", "enqueued", "started", "succeeded", "failed", "dead")
    list_filter = ("period", "queue")
    search_fields = ("task_name",)
    date_hierarchy = "start"
    ordering = ("-start", "queue", "task_name")
    readonly_fields = [field.name for field in JobMetric._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: JobMetric | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: JobMetric | None = None) -> bool:
        return False

    def changelist_view(self, request: HttpRequest, extra_context: dict | None = None):
        context = {**(extra_context or {}), "queue_charts": queue_overview_charts(), "charts_range": OVERVIEW_RANGE}
        return super().changelist_view(request, extra_context=context)
