"""Django admin of alerts: the alerts the evaluation opened and resolved (read only: they open and
resolve themselves), and the thresholds admins set per queue or per task.

Seeing alerts needs *Can view alert*; thresholds follow their model's add, change, delete and view
permissions, so who may change when ops are told is a permission of its own.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest

from tasks.platform.models import Alert, AlertRule, AlertScope, AlertThreshold
from tasks.platform.queues import QueueName
from tasks.platform.registry import LEDGER_TASKS
from tasks.platform.selectors.alerts import settings_defaults

#: rules about a queue as a whole: no task has a consumer of its own
QUEUE_ONLY_RULES = (AlertRule.NO_CONSUMER,)


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    list_display = ("opened_at", "rule", "subject", "state", "message", "last_seen_at", "resolved_at")
    list_filter = ("state", "rule")
    search_fields = ("subject", "message")
    date_hierarchy = "opened_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Alert | None = None) -> bool:
        return False  # an alert resolves itself once its condition is clear

    def has_delete_permission(self, request: HttpRequest, obj: Alert | None = None) -> bool:
        return False  # the record of what ops were told


def _defaults_help() -> str:
    defaults = settings_defaults()
    shown = ", ".join(f"{AlertRule(rule).label}: {value}" for rule, value in defaults.items())
    window = settings.ALERT_DEAD_LETTERS_WINDOW_SECONDS
    return f"Defaults from the settings: {shown} (dead letters per {window} s)."


class AlertThresholdForm(forms.ModelForm):
    class Meta:
        model = AlertThreshold
        fields = ("rule", "scope", "name", "threshold", "enabled")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["name"].help_text = (
            f"A queue ({', '.join(QueueName.values)}) or a task's name (e.g. ops.ping). A task's threshold beats "
            "its queue's, and its jobs are judged apart from the queue's others."
        )
        self.fields["threshold"].help_text += " " + _defaults_help()

    def clean(self):
        cleaned = super().clean()
        rule, scope, name = cleaned.get("rule"), cleaned.get("scope"), cleaned.get("name")
        if not rule or not scope or not name:
            return cleaned  # the field's own error says what is missing
        if scope == AlertScope.QUEUE and name not in QueueName.values:
            self.add_error("name", f"no queue {name!r}: one of {', '.join(QueueName.values)}")
        elif scope == AlertScope.TASK and name not in LEDGER_TASKS:
            self.add_error("name", f"no task {name!r} is registered")
        elif scope == AlertScope.TASK and rule in QUEUE_ONLY_RULES:
            self.add_error("scope", f"{AlertRule(rule).label} is about a queue: set it for a queue")
        return cleaned


@admin.register(AlertThreshold)
class AlertThresholdAdmin(admin.ModelAdmin):
    form = AlertThresholdForm
    list_display = ("rule", "scope", "name", "threshold", "enabled", "default")
    list_filter = ("rule", "scope", "enabled")
    search_fields = ("name",)

    @admin.display(description="setting's default")
    def default(self, obj: AlertThreshold) -> int:
        return settings_defaults()[obj.rule]
