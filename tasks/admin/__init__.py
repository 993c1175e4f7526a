"""Django admin, one module per domain."""

from tasks.admin import jobs, maintenance, notifications, orders, reports, schedules  # noqa: F401 - each module registers its models
