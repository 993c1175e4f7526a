"""Every Celery task of the ``tasks`` app, where Celery's autodiscovery looks: each domain's tasks
module registers its tasks."""

from tasks.maintenance import tasks as maintenance_tasks
from tasks.notifications import tasks as notification_tasks
from tasks.orders import tasks as order_tasks
from tasks.platform.tasks import alerts, batches, bulk, ops, retention
from tasks.reports import tasks as report_tasks

__all__ = [
    "alerts",
    "batches",
    "bulk",
    "maintenance_tasks",
    "notification_tasks",
    "ops",
    "order_tasks",
    "report_tasks",
    "retention",
]
