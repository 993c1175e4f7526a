"""Django admin of the maintenance domain: the alerts ops should look at."""

from django.contrib import admin, messages
from django.utils import timezone

from tasks.orders.models import OpsAlert


class ResolvedFilter(admin.SimpleListFilter):
    title = "resolved"
    parameter_name = "resolved"

    def lookups(self, request, model_admin):
        return (("no", "Open"), ("yes", "Resolved"))

    def queryset(self, request, queryset):
        if self.value() == "no":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "yes":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(OpsAlert)
class OpsAlertAdmin(admin.ModelAdmin):
    list_display = ("kind", "subject", "message", "raised_at", "resolved_at")
    list_filter = ("kind", ResolvedFilter)
    search_fields = ("=subject", "message")
    date_hierarchy = "raised_at"
    # Alerts are raised by the maintenance tasks; ops read and resolve them.
    readonly_fields = ("kind", "subject", "message", "raised_at", "resolved_at")
    actions = ["mark_resolved"]

    @admin.action(description="Mark resolved", permissions=["change"])
    def mark_resolved(self, request, queryset) -> None:
        resolved = queryset.filter(resolved_at__isnull=True).update(resolved_at=timezone.now())
        self.message_user(request, f"{resolved} alert(s) marked resolved.", messages.SUCCESS)

    def has_add_permission(self, request) -> bool:
        return False
