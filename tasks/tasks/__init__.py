"""Celery tasks, autodiscovered as ``tasks.tasks``: each module registers its tasks."""

from tasks.tasks import maintenance, notifications, ops, orders, reports

__all__ = ["maintenance", "notifications", "ops", "orders", "reports"]
