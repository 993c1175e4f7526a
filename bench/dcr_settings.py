"""Settings of the Celery + django-celery-results counterpart (bench.dcr_app): a Django project with
that one app, on the bench's database (DATABASE_URL).

Its processes (workers, the client that sends, the migration) run with
``DJANGO_SETTINGS_MODULE=bench.dcr_settings``; none of the platform's apps, settings or signal
handlers is loaded there. Nothing here imports the ``project`` package: importing it loads the
platform's Celery app, whose logging and tracing hooks connect to every Celery app's signals.
"""

import os

import dj_database_url

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "bench-dcr-only-secret-key")
INSTALLED_APPS = ["django_celery_results"]
USE_TZ = True
TIME_ZONE = "UTC"

# The database configured as project.settings configures the platform's: the same server and
# connection options on both sides (connections kept; on SQLite, WAL and writers that wait for the lock).
DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"], conn_max_age=60, conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
