"""Sends the Celery + django-celery-results counterpart's no-op tasks, one ``.delay()`` each, as a
process of that Django project does (bench.jobs.dcr_fill runs it):

    DJANGO_SETTINGS_MODULE=bench.dcr_settings python -m bench.dcr_send COUNT

A process of its own because ``.delay()`` goes through the django-db result backend, whose models
exist only where django_celery_results is installed: not in the bench process, which runs the
platform's settings.
"""

from __future__ import annotations

import sys

import django


def main(argv: list[str]) -> None:
    (count,) = argv
    django.setup()
    from bench.dcr_app import noop

    for _ in range(int(count)):
        noop.delay()


if __name__ == "__main__":
    main(sys.argv[1:])
