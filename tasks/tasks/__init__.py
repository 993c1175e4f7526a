"""Celery tasks, autodiscovered as ``tasks.tasks``: each module registers its tasks."""

from tasks.tasks import batches, maintenance, notifications, ops, orders, reports, retention

__all__ = ["batches", "maintenance", "notifications", "ops", "orders", "reports", "retention"]
