"""The metric history as JSON, for charts: ``GET /api/metrics/history``.

Its figures are everyone's jobs, so it is for staff who may see every job (``tasks.view_job`` or
``tasks.change_job``, or a superuser): 403 ``permission_required`` for anyone else signed in, 401
without credentials. A range or queue outside the lists, or a malformed task name, answers 422
``invalid_request`` naming the field.
"""

from datetime import datetime
from typing import Literal

from django.http import HttpRequest
from ninja import Field, Query, Schema

from tasks.platform.api.base import Error, Forbidden, Unprocessable, api
from tasks.platform.permissions import has_staff_scope
from tasks.platform.queues import QueueName
from tasks.platform.selectors.metric_history import metric_history

#: what a task's name is made of (as the jobs list's filter)
TASK_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$"


class HistoryFilters(Schema):
    # the keys of tasks.platform.selectors.metric_history.RANGES (a fast test holds them equal)
    range: Literal["1h", "24h", "72h", "30d"] = Field(
        "24h", description="How far back: 1h and 24h from minute rows, 72h and 30d from hour rows."
    )
    queue: QueueName | None = Field(None, description="Only this queue's jobs.")
    task: str | None = Field(None, max_length=200, pattern=TASK_NAME, description="Only this task's jobs.")


class Percentiles(Schema):
    p50: float | None
    p95: float | None
    p99: float | None


class Summary(Schema):
    enqueued: int
    started: int
    succeeded: int
    failed: int = Field(description="Runs that failed: the job failed, or will retry.")
    dead: int
    wait_seconds: Percentiles = Field(description="Enqueue to start.")
    run_seconds: Percentiles = Field(description="Start to end of a run.")


class Point(Summary):
    start: datetime


class HistoryOut(Schema):
    range: str
    step_seconds: int
    start: datetime = Field(description="When the first step begins.")
    end: datetime = Field(description="When the last step ends (the current one included).")
    queue: str | None
    task: str | None
    points: list[Point] = Field(description="One per step of the range, oldest first.")
    total: Summary
    queues: list[str] = Field(description="The queues with figures in the range.")
    tasks: list[str] = Field(description="The tasks with figures in the range.")


@api.get(
    "/metrics/history",
    response={200: HistoryOut, 401: Error, 403: Error, 422: Unprocessable},
    url_name="metric_history",
)
def metric_history_view(request: HttpRequest, filters: Query[HistoryFilters]):
    """Per step of the range: jobs enqueued, started, succeeded, failed and dead, and the p50, p95
    and p99 of enqueue-to-start and of run time (seconds, null without jobs), of every queue and
    task or of one (``queue``, ``task``). Staff who may view every job only."""
    if not has_staff_scope(request.user, "job"):
        raise Forbidden("the metric history needs the permission tasks.view_job", code="permission_required")
    return metric_history(range_name=filters.range, queue=filters.queue, task=filters.task)
