"""Schedules: the ones the platform needs, seeded into django-celery-beat (admins may edit or
disable them), a schedule's platform options, and running a schedule by hand.

Seeding only ever creates: a schedule is looked up by its name, and one that exists is left
exactly as an admin made it (timing, enabled, queue, arguments). Delete a schedule only to have
the next seeding recreate it with its defaults; disable it to stop it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import transaction

from tasks.platform.models import Job, ScheduleOptions
from tasks.platform.queues import QueueName
from tasks.platform.registry import SCHEDULABLE_TASKS
from tasks.platform.selectors.schedules import schedule_origins
from tasks.platform.services.jobs import EnqueueError, job_enqueue

if TYPE_CHECKING:
    from django_celery_beat.models import PeriodicTask

logger = logging.getLogger(__name__)

RETENTION_SCHEDULE = "Prune finished jobs (JOB_RETENTION_DAYS, JOB_FAILED_RETENTION_DAYS)"
#: the retention schedule's name and task before migration 0014 (it repoints existing rows)
RETENTION_SCHEDULE_BEFORE = "Prune succeeded jobs (JOB_RETENTION_DAYS)"
REPORT_RETENTION_SCHEDULE = "Prune old reports (REPORT_RETENTION_DAYS)"
PRUNE_CANCELLED_ORDERS_SCHEDULE = "Prune cancelled orders (CANCELLED_ORDER_RETENTION_DAYS)"
ALERT_STUCK_ORDERS_SCHEDULE = "Alert on orders stuck in pending (PENDING_ORDER_ALERT_MINUTES)"
ALERTS_EVALUATE_SCHEDULE = "Evaluate alerts (ALERT_* thresholds)"


@dataclass(frozen=True)
class SeededSchedule:
    name: str
    task: str
    description: str
    #: returns the timing fields of the PeriodicTask ({"crontab": ...} or {"interval": ...})
    timing: Callable[[], dict[str, Any]]
    queue: str


def _crontab(*, minute: str, hour: str) -> dict[str, Any]:
    from django_celery_beat.models import CrontabSchedule

    fields = {
        "minute": minute,
        "hour": hour,
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
        "timezone": "UTC",
    }
    # Not get_or_create: nothing stops admins from making identical rows, and any of them will do.
    crontab = CrontabSchedule.objects.filter(**fields).order_by("pk").first()
    return {"crontab": crontab or CrontabSchedule.objects.create(**fields)}


def _every(seconds: int) -> dict[str, Any]:
    from django_celery_beat.models import IntervalSchedule

    fields = {"every": seconds, "period": IntervalSchedule.SECONDS}
    interval = IntervalSchedule.objects.filter(**fields).order_by("pk").first()
    return {"interval": interval or IntervalSchedule.objects.create(**fields)}


RETENTION_DESCRIPTION = (
    "Every day at 03:17 UTC: deletes from the job ledger succeeded jobs finished more than "
    "JOB_RETENTION_DAYS ago, and failed, dead and cancelled ones past JOB_FAILED_RETENTION_DAYS, in "
    "chunks. The jobs of an order's workflow stay while their order exists."
)

SCHEDULES = (
    SeededSchedule(
        name=RETENTION_SCHEDULE,
        task="jobs.prune_finished",
        description=RETENTION_DESCRIPTION,
        timing=lambda: _crontab(minute="17", hour="3"),
        queue=QueueName.BULK.value,
    ),
    SeededSchedule(
        name=REPORT_RETENTION_SCHEDULE,
        task="reports.prune",
        description=(
            "Every day at 03:47 UTC: deletes sales reports built more than REPORT_RETENTION_DAYS ago, "
            "with their PDFs (the API then answers 404 for them), and PDFs left without a report."
        ),
        timing=lambda: _crontab(minute="47", hour="3"),
        queue=QueueName.BULK.value,
    ),
    SeededSchedule(
        name=PRUNE_CANCELLED_ORDERS_SCHEDULE,
        task="orders.prune_cancelled",
        description=(
            "Every day at 02:00 UTC: deletes cancelled orders (with their items and steps) that were "
            "cancelled more than CANCELLED_ORDER_RETENTION_DAYS ago, in batches."
        ),
        timing=lambda: _crontab(minute="0", hour="2"),
        queue=QueueName.DEFAULT.value,
    ),
    SeededSchedule(
        name=ALERT_STUCK_ORDERS_SCHEDULE,
        task="orders.alert_stuck_pending",
        description=(
            "Every 60 s: raises an ops alert (and a WARNING log line) for each order pending for longer "
            "than PENDING_ORDER_ALERT_MINUTES, once per order; resolves alerts whose order moved on."
        ),
        timing=lambda: _every(60),
        queue=QueueName.DEFAULT.value,
    ),
    SeededSchedule(
        name=ALERTS_EVALUATE_SCHEDULE,
        task="alerts.evaluate",
        description=(
            "Every 30 s: evaluates the alert rules (latency, no consumer, stalled, dead letters, schedules, "
            "overruns) against their thresholds; opens and resolves alerts, each announced once."
        ),
        timing=lambda: _every(30),
        # Short and urgent: on the critical queue, away from the default queue's webhooks and e-mail.
        queue=QueueName.CRITICAL.value,
    ),
)


def schedules_seed(**_signal_kwargs: Any) -> dict[str, bool]:
    """Create the platform's schedules that are missing; returns each name -> True if created now.

    Connected to post_migrate (so a fresh database has them, and so does the test database after
    each flush) and run by ``manage.py seed_schedules``. Existing schedules are never touched.
    """
    from django_celery_beat.models import PeriodicTask

    created: dict[str, bool] = {}
    for schedule in SCHEDULES:
        if PeriodicTask.objects.filter(name=schedule.name).exists():
            created[schedule.name] = False
            continue
        with transaction.atomic():
            _, created[schedule.name] = PeriodicTask.objects.get_or_create(
                name=schedule.name,
                defaults={
                    "task": schedule.task,
                    "queue": schedule.queue,
                    "kwargs": json.dumps({}),
                    "description": schedule.description,
                    **schedule.timing(),
                },
            )
    return created


class ScheduleRunRefused(Exception):
    """The schedule cannot become a job as it stands (its task or arguments); nothing was enqueued."""


def schedule_run_now(*, schedule: PeriodicTask, by) -> Job:
    """Run a schedule's task now, as a ledger job like any other; its timing is left as it is.

    The job carries the schedule's arguments, queue and priority, and the origin
    ``beat:<name>:run-now``, so it is listed with the schedule's runs.
    """
    if schedule.task not in SCHEDULABLE_TASKS:
        raise ScheduleRunRefused(f"task {schedule.task!r} is not a schedulable task")
    try:
        args, payload = json.loads(schedule.args or "[]"), json.loads(schedule.kwargs or "{}")
    except ValueError as exc:
        raise ScheduleRunRefused(f"its arguments are not JSON ({exc})") from None
    if args:
        raise ScheduleRunRefused("it has positional arguments; the platform's tasks take keyword arguments only")
    if not isinstance(payload, dict):
        raise ScheduleRunRefused("its keyword arguments are not a JSON object")
    try:
        job = job_enqueue(
            task_name=schedule.task,
            payload=payload,
            queue=schedule.queue or None,
            priority=schedule.priority,
            origin=schedule_origins(schedule.name)[1],
            owner=by,
        )
    except EnqueueError as exc:
        problems = "; ".join(f"{e['field']}: {e['message']}" for e in exc.details.get("errors", []))
        raise ScheduleRunRefused(f"{exc}{': ' + problems if problems else ''}") from None
    logger.info("schedule %r run now by %s: job %s", schedule.name, getattr(by, "username", by), job.pk)
    return job


def schedule_options_update(*, schedule: PeriodicTask, missed_run_policy: str) -> ScheduleOptions:
    """Store the platform's options of a schedule (created on first use; no row means the defaults)."""
    options, _ = ScheduleOptions.objects.update_or_create(
        schedule=schedule, defaults={"missed_run_policy": missed_run_policy}
    )
    return options
