"""Django admin of the notifications domain: webhook endpoints, and deliveries with their attempts."""

from django import forms
from django.contrib import admin
from django.db import models
from django.urls import reverse
from django.utils.html import format_html

from tasks.admin.actions import apply_each
from tasks.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tasks.models.notifications import WebhookEvent
from tasks.services.recovery import ActionRefused, job_retry


def _https_by_default(db_field, **kwargs):
    # An address typed without a scheme gets https (Django 6's default; no deprecation warning).
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return db_field.formfield(**kwargs)


class WebhookEndpointForm(forms.ModelForm):
    # Checkboxes over the fixed set; a posted name outside it is a form error naming it.
    event_types = forms.MultipleChoiceField(
        label="Events",
        choices=WebhookEvent.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="The events this endpoint receives.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("name", "url", "event_types", "secret", "active")
        formfield_callback = _https_by_default


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ("name", "url", "active", "events", "created_at")
    list_filter = ("active",)
    search_fields = ("name", "url")

    @admin.display(description="events")
    def events(self, endpoint: WebhookEndpoint) -> str:
        return ", ".join(endpoint.event_types or [])


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    extra = 0
    can_delete = False
    fields = ("number", "at", "status_code", "duration_ms", "error")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("id", "event", "endpoint", "job_state", "attempt_count", "created_at", "delivered_at")
    list_filter = ("event", "endpoint", "job__state")
    search_fields = ("=id", "=job__id", "endpoint__name")
    date_hierarchy = "created_at"
    list_select_related = ("endpoint", "job")
    # Deliveries are written by the platform; admins read them and retry the failed ones.
    fields = ("id", "endpoint", "event", "payload", "job_link", "job_state", "job_error", "created_at", "delivered_at")
    readonly_fields = fields
    inlines = [WebhookAttemptInline]
    actions = ["retry_deliveries"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="job state", ordering="job__state")
    def job_state(self, delivery: WebhookDelivery) -> str:
        return delivery.job.state if delivery.job_id else "-"

    @admin.display(description="attempts")
    def attempt_count(self, delivery: WebhookDelivery) -> int:
        return delivery.attempts.count()

    @admin.display(description="job")
    def job_link(self, delivery: WebhookDelivery) -> str:
        if not delivery.job_id:
            return "-"
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:tasks_job_change", args=[delivery.job_id]), delivery.job_id
        )

    @admin.display(description="job error")
    def job_error(self, delivery: WebhookDelivery) -> str:
        return delivery.job.error if delivery.job_id else ""

    @admin.action(description="Retry selected failed/dead deliveries")
    def retry_deliveries(self, request, queryset) -> None:
        def retry(delivery: WebhookDelivery) -> None:
            if delivery.job_id is None:
                raise ActionRefused("its job is no longer in the ledger")
            job_retry(job_id=delivery.job_id, by=request.user, via="admin")

        apply_each(self, request, queryset.select_related("job"), retry, done="delivery(ies) queued again")
