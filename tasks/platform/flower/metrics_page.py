"""Flower's Metrics page (``/charts``): throughput, failures, enqueue→start latency and run time over
1 h, 24 h, 72 h or 30 d, of every queue and task or of one, from the metric history
(tasks.platform.selectors.metric_history), with the range's totals per queue and per task.

Read only, behind Flower's basic auth like every platform page; the ORM runs in Flower's thread
pool (``in_thread``), never on its event loop. The charts are inline SVG drawn on the server
(tasks.platform.charts).
"""

from __future__ import annotations

from typing import Any

# Private API (Flower): Flower documents no Python API; its handlers are subclassed for its auth.
from flower.views import BaseHandler
from tornado import web

from tasks.platform.charts import history_charts
from tasks.platform.flower.handlers import PlatformHandlerMixin, in_thread
from tasks.platform.queues import QueueName
from tasks.platform.selectors.metric_history import RANGES, metric_breakdown, metric_history

#: the page's longest accepted task name (as the API's filter)
TASK_MAX_LENGTH = 200


def charts_page(*, range_name: str, queue: str | None, task: str | None) -> dict[str, Any]:
    history = metric_history(range_name=range_name, queue=queue, task=task)
    return {"history": history, "charts": history_charts(history), "breakdown": metric_breakdown(range_name=range_name)}


class MetricsChartsView(PlatformHandlerMixin, BaseHandler):
    """The Metrics page; ``range`` (1h, 24h, 72h, 30d), ``queue`` and ``task`` in the query."""

    @web.authenticated
    async def get(self) -> None:
        range_name = self.get_query_argument("range", "24h")
        queue = self.get_query_argument("queue", "") or None
        task = self.get_query_argument("task", "") or None
        if range_name not in RANGES:
            raise web.HTTPError(400, f"range must be one of {', '.join(RANGES)}")
        if queue is not None and queue not in QueueName.values:
            raise web.HTTPError(400, f"queue must be one of {', '.join(QueueName.values)}")
        if task is not None and (len(task) > TASK_MAX_LENGTH or not task.isprintable()):
            raise web.HTTPError(400, "task is not a task's name")
        page = await in_thread(charts_page, range_name=range_name, queue=queue, task=task)
        self.render(
            "platform/metrics.html",
            ranges=list(RANGES),
            range_name=range_name,
            queue=queue,
            task=task,
            queues=QueueName.values,
            **page,
        )


def metrics_page_handlers() -> list:
    return [web.url(r"/charts", MetricsChartsView, name="platform_metrics_charts")]
