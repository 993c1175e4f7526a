"""Django's task API (``django.tasks``, or the ``django-tasks`` backport on Django 5.2) on the
platform: ``PlatformTaskBackend`` runs every ``@task`` function as a ledger job."""

from tasks.platform.django_tasks.backend import PlatformTask, PlatformTaskBackend, discover, owned_by

__all__ = ["PlatformTask", "PlatformTaskBackend", "discover", "owned_by"]
