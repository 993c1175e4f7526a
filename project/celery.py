"""The Celery app. Every setting lives in the top-level celeryconfig module."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

app = Celery("project")
app.config_from_object("celeryconfig")
app.autodiscover_tasks()
