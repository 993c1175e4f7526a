"""Django admin of flow control: pauses, their record, and overrides of concurrency limits.

A pause is added and deleted here only through the flow service (``flow_pause``, ``flow_resume``),
as from every other door: adding one pauses the queue or task, deleting one resumes it, each
recorded as a FlowEvent via "admin". A pause has nothing to edit. The record of pauses and resumes
is read-only. Access follows each model's add, delete and view permissions, as Django admin does.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from tasks.platform.concurrency import CONCURRENCY, RATES
from tasks.platform.models import ConcurrencyOverride, FlowEvent, Pause, PauseScope, RateOverride
from tasks.platform.queues import QueueName

# Private API (flow service): its check of a scope and name is what flow_pause runs first; the
# service exports no other way to ask it without pausing, and the form must say what is wrong
# before anything is paused.
from tasks.platform.services.flow import UnknownTarget, flow_pause, flow_resume, flow_target_check

VIA = "admin"


class PauseForm(forms.ModelForm):
    """What to pause: a queue or a task, by name. The name is checked as the service checks it."""

    class Meta:
        model = Pause
        fields = ("scope", "name")
        help_texts = {
            "name": "A queue (" + ", ".join(QueueName.values) + ") or a task's name (e.g. ops.account).",
        }

    def clean(self):
        cleaned = super().clean()
        scope, name = cleaned.get("scope"), cleaned.get("name")
        if not scope or not name:
            return cleaned  # the field's own error says what is missing
        try:
            flow_target_check(scope, name)
        except UnknownTarget as exc:
            self.add_error("name", str(exc))
            return cleaned
        if Pause.objects.filter(scope=scope, name=name).exists():
            self.add_error("name", f"{PauseScope(scope).label.lower()} {name} is already paused")
        return cleaned

    def validate_unique(self) -> None:
        # clean() says "already paused"; the unique constraint's own message would repeat it.
        pass


@admin.register(Pause)
class PauseAdmin(admin.ModelAdmin):
    form = PauseForm
    list_display = ("scope", "name", "by", "via", "at")
    list_filter = ("scope", "via")
    list_select_related = ("by",)
    search_fields = ("name",)
    readonly_fields = ("by", "via", "at")

    def get_fields(self, request: HttpRequest, obj: Pause | None = None):
        return ("scope", "name") if obj is None else ("scope", "name", "by", "via", "at")

    def has_change_permission(self, request: HttpRequest, obj: Pause | None = None) -> bool:
        return False  # a pause is added (paused) or deleted (resumed), never edited

    def save_model(self, request: HttpRequest, obj: Pause, form: PauseForm, change: bool) -> None:
        # Only ever an add (no change permission): the service writes the row and its event.
        pause = flow_pause(scope=obj.scope, name=obj.name, by=request.user, via=VIA)
        obj.pk, obj.by, obj.via, obj.at = pause.pk, pause.by, pause.via, pause.at

    def delete_model(self, request: HttpRequest, obj: Pause) -> None:
        self.delete_queryset(request, [obj])

    def delete_queryset(self, request: HttpRequest, queryset) -> None:
        released, refused = 0, []
        for pause in queryset:
            try:
                released += flow_resume(scope=pause.scope, name=pause.name, by=request.user, via=VIA)
            except UnknownTarget as exc:  # e.g. a task renamed since it was paused
                refused.append(f"{pause.scope} {pause.name}: {exc}")
        if released:
            self.message_user(request, f"Resumed: {released} held job(s) go to their queue again.", messages.INFO)
        if refused:
            self.message_user(request, "Not resumed: " + "; ".join(refused), messages.ERROR)


@admin.register(FlowEvent)
class FlowEventAdmin(admin.ModelAdmin):
    """Every pause and resume, from every door: read only."""

    list_display = ("at", "action", "scope", "name", "by", "via")
    list_filter = ("action", "scope", "via")
    list_select_related = ("by",)
    search_fields = ("name",)
    date_hierarchy = "at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: FlowEvent | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: FlowEvent | None = None) -> bool:
        return False


class ConcurrencyOverrideForm(forms.ModelForm):
    class Meta:
        model = ConcurrencyOverride
        fields = ("task_name", "key", "running")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        declared = [
            f"{name} ({limit.running} per {limit.key or 'task'})" for name, limit in sorted(CONCURRENCY.items())
        ]
        self.fields["task_name"].help_text = "A task that declares a concurrency limit: " + (
            ", ".join(declared) or "none does"
        )


@admin.register(ConcurrencyOverride)
class ConcurrencyOverrideAdmin(admin.ModelAdmin):
    """An admin's number for a task's declared limit; the model's clean() refuses an unknown task,
    a task without a limit, a key for a limit without one, and fewer than 1 running."""

    form = ConcurrencyOverrideForm
    list_display = ("task_name", "key", "running", "declared")
    list_filter = ("task_name",)
    search_fields = ("task_name", "key")

    @admin.display(description="declared limit")
    def declared(self, obj: ConcurrencyOverride) -> str:
        limit = CONCURRENCY.get(obj.task_name)
        return "—" if limit is None else f"{limit.running} per {limit.key or 'task'}"


@admin.register(RateOverride)
class RateOverrideAdmin(admin.ModelAdmin):
    """An admin's rate for a task's declared rate; the model's clean() refuses an unknown task, a
    task without a rate, a key for a rate without one, and text that is not a rate."""

    list_display = ("task_name", "key", "rate", "declared")
    list_filter = ("task_name",)
    search_fields = ("task_name", "key")

    @admin.display(description="declared rate")
    def declared(self, obj: RateOverride) -> str:
        rate = RATES.get(obj.task_name)
        return "—" if rate is None else f"{rate.rate} per {rate.key or 'task'}"
