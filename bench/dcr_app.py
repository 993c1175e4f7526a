"""Celery + django-celery-results, the second counterpart of the single-message drain: what a
Django team sets up to see its task states in the database.

    DJANGO_SETTINGS_MODULE=bench.dcr_settings celery -A bench.dcr_app worker -Q dcr ...

On the bench's broker (REDIS_URL) with raw Celery's flags (JSON only, late acknowledgement, one
message prefetched per process), and every task's state in the database: results stored by the
``django-db`` backend, ``task_track_started`` on (a STARTED row, then SUCCESS). Its processes run
Django with bench.dcr_settings, through Celery's Django fixup. Only those processes may touch
``app.backend`` (its models need django_celery_results installed); the bench process only pings
these workers and moves their consumers.
"""

from __future__ import annotations

from celery import Celery

from bench.counterpart_conf import shared_conf

QUEUE = "dcr"

# Not the current app: the bench process also runs the platform's app, whose shared tasks must
# stay bound to it.
app = Celery("bench_dcr", set_as_current=False)
app.conf.update(
    shared_conf(QUEUE),
    result_backend="django-db",
    task_track_started=True,
    task_ignore_result=False,
    # Database connections kept across tasks, as the platform's workers keep theirs: the Django
    # fixup would otherwise close them after every task, and the figure would measure PostgreSQL's
    # connection set-up rather than the state writes.
    # Private API (Celery): the Django fixup's CELERY_DB_REUSE_MAX is undocumented; no setting stops its closing.
    CELERY_DB_REUSE_MAX=2**31,
)


@app.task(name="dcr.noop")
def noop() -> None:
    """Do nothing: what Celery costs per message with its states in the database."""
