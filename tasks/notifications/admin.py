"""Django admin of the notifications domain: webhook endpoints, and deliveries with their attempts.

An endpoint's signing secret is shown in full once: in the message after the endpoint is added,
or after the "Rotate" action made a new one. Its change page shows only the first characters, and
the secret is not a field there, so it is never sent to a browser again.
"""

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.urls import reverse
from django.utils.html import format_html

from tasks.notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from tasks.platform.admin.actions import apply_each
from tasks.platform.services.recovery import ActionRefused, job_retry


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
        widgets = {"secret": forms.PasswordInput(render_value=False)}  # not echoed back on a form error

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if "secret" in self.fields:
            self.fields["secret"].help_text = (
                "Signs every delivery (HMAC-SHA256). Leave blank to have one generated. It is shown once, "
                "after saving; then only its first characters."
            )


#: characters of a secret shown after it was created
SECRET_HINT_CHARS = 4


def secret_hint(secret: str) -> str:
    """The first characters of a secret and an ellipsis: enough to tell secrets apart, not to use one."""
    return f"{secret[:SECRET_HINT_CHARS]}…" if secret else ""


def _show_secret_once(model_admin: admin.ModelAdmin, request, endpoint: WebhookEndpoint, what: str) -> None:
    model_admin.message_user(
        request,
        format_html(
            '{} of “{}”: <code class="webhook-secret">{}</code> — copy it now and share it with the receiver; '
            "it is not shown again.",
            what,
            endpoint.name,
            endpoint.secret,
        ),
        messages.WARNING,
    )


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = ("name", "url", "active", "events", "created_at")
    list_filter = ("active",)
    search_fields = ("name", "url")
    actions = ["rotate_secrets"]

    def get_fields(self, request, obj: WebhookEndpoint | None = None):
        if obj is None:
            return ("name", "url", "event_types", "secret", "active")
        return ("name", "url", "event_types", "secret_masked", "active")

    def get_readonly_fields(self, request, obj: WebhookEndpoint | None = None):
        return ("secret_masked",) if obj is not None else ()

    @admin.display(description="signing secret")
    def secret_masked(self, endpoint: WebhookEndpoint) -> str:
        return format_html(
            '{} <span class="help">(shown in full only when made; use the “Rotate” action for a new one)</span>',
            secret_hint(endpoint.secret),
        )

    def save_model(self, request, obj: WebhookEndpoint, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if not change:
            _show_secret_once(self, request, obj, "Signing secret")

    @admin.display(description="events")
    def events(self, endpoint: WebhookEndpoint) -> str:
        return ", ".join(endpoint.event_types or [])

    @admin.action(
        description="Rotate the signing secret of the selected endpoints (new one shown once)", permissions=["change"]
    )
    def rotate_secrets(self, request, queryset) -> None:
        # Deliveries not yet sent, and retries, are signed with the new secret.
        for endpoint in queryset:
            endpoint.rotate_secret()
            _show_secret_once(self, request, endpoint, "New signing secret")


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

    def has_retry_permission(self, request) -> bool:
        # Deliveries are read-only (has_change_permission is False for their fields); retrying one
        # changes it, so the action asks for the model's change permission itself.
        return request.user.has_perm(f"{self.opts.app_label}.change_{self.opts.model_name}")

    @admin.action(description="Retry selected failed/dead deliveries", permissions=["retry"])
    def retry_deliveries(self, request, queryset) -> None:
        def retry(delivery: WebhookDelivery) -> None:
            if delivery.job_id is None:
                raise ActionRefused("its job is no longer in the ledger")
            job_retry(job_id=delivery.job_id, by=request.user, via="admin")

        apply_each(self, request, queryset.select_related("job"), retry, done="delivery(ies) queued again")
