"""Django admin, where Django looks for it: each domain's admin module registers its models."""

from tasks.maintenance import admin as maintenance_admin
from tasks.notifications import admin as notifications_admin
from tasks.orders import admin as orders_admin
from tasks.platform.admin import alerts, edits, flow, jobs, metrics, schedules
from tasks.reports import admin as reports_admin

__all__ = [
    "alerts",
    "edits",
    "flow",
    "jobs",
    "maintenance_admin",
    "metrics",
    "notifications_admin",
    "orders_admin",
    "reports_admin",
    "schedules",
]
