"""The Celery app. Every setting lives in the top-level celeryconfig module."""

import os

from celery import Celery

from tasks.platform import broker
from tasks.platform import logs as _logs  # noqa: F401 - JSON worker logs, and tracing's worker hooks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
broker.install()  # redis:// takes kombu's Redis transport with its clients reused

app = Celery("project")
app.config_from_object("celeryconfig")
app.autodiscover_tasks()
