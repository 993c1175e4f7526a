"""Celery tasks, autodiscovered as ``tasks.tasks``: each module registers its tasks."""

from tasks.tasks import maintenance, ops

__all__ = ["maintenance", "ops"]
