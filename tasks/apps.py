import logging

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate

logger = logging.getLogger(__name__)


class TasksConfig(AppConfig):
    name = "tasks"
    verbose_name = "Task platform"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register the tasks in every process (web validates payloads against them).
        from tasks import tasks  # noqa: F401 - registers the tasks
        from tasks.platform import signals  # noqa: F401 - the worker's signal handlers
        from tasks.platform.django_tasks import discover as discover_django_tasks
        from tasks.platform.services.schedules import schedules_seed

        # Django's @task functions become ledger tasks as their modules load: in every process,
        # before a worker forks or a relay publishes.
        discover_django_tasks()
        post_migrate.connect(schedules_seed, sender=self)
        if settings.PAYMENT_SANDBOX and not settings.DEBUG:
            # Settings refuse this unless PAYMENT_SANDBOX_WITHOUT_DEBUG says so: said loudly by every process.
            logger.warning(
                "PAYMENT_SANDBOX_WITHOUT_DEBUG is on: the sandbox payment gateway runs with DEBUG off, "
                "and tok_ok pays for any order. Never where real payments are taken."
            )
