# The Celery app is loaded with Django so that @shared_task and enqueue use it.
from project.celery import app as celery_app

__all__ = ["celery_app"]
