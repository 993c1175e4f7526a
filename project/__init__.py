# The checkout's local settings (var/local.env, if any) fill what the environment leaves unset,
# before anything reads a setting: every entry point (manage.py, celery -A project, uvicorn,
# Flower, the launcher) imports this package first.
from project import localconfig

localconfig.load()

# The Celery app is loaded with Django so that @shared_task and enqueue use it.
from project.celery import app as celery_app  # noqa: E402

__all__ = ["celery_app"]
