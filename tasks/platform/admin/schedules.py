"""Django admin of beat's schedules: django-celery-beat's own admin, subclassed and registered again.

What the platform adds: only schedulable tasks, arguments checked against the task's payload
schema on save, a queue among the declared ones and a priority in range, the missed-run policy,
the next run times (in the schedule's timezone) and the last runs from the job ledger, and
"Run now" through the ledger. Access follows the beat models' permissions, as Django admin does.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

from django import forms
from django.contrib import admin, messages

# Private API (Django): admin's unquote of an object id in its URLs, and the flattening of fieldsets
# its get_form does, have no documented counterpart.
from django.contrib.admin.utils import flatten_fieldsets, unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Case, F, Value, When
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django_celery_beat.admin import PeriodicTaskAdmin, PeriodicTaskForm
from django_celery_beat.models import PeriodicTask
from pydantic import ValidationError as PayloadError

from tasks.platform.models import Job, MissedRunPolicy, ScheduleOptions
from tasks.platform.queues import PRIORITY_DEFAULT, PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName
from tasks.platform.registry import SCHEDULABLE_TASKS
from tasks.platform.schema_forms import SchemaFields, schema_fields
from tasks.platform.selectors.schedules import (
    schedule_blocked,
    schedule_last_runs,
    schedule_next_runs,
    schedule_origins,
    schedules_blocked,
    schedules_latest_run,
)
from tasks.platform.services.jobs import task_queue
from tasks.platform.services.schedules import ScheduleRunRefused, schedule_options_update, schedule_run_now


def _task_choices() -> list[tuple[str, str]]:
    return [("", "---------")] + [(name, f"{name} ({task_queue(name)} queue)") for name in sorted(SCHEDULABLE_TASKS)]


#: the hidden field a browser posts with the task's fields: without it (a script posting kwargs
#: alone) the kwargs box is taken as it is
PAYLOAD_FIELDS_SHOWN = "payload_fields_shown"
_KWARGS_HELP = (
    "A JSON object, checked against the task's payload schema when saved. The chosen task's fields "
    "are shown one by one under “Arguments of …” (they win over the same key here); this box holds "
    "what they cannot show (lists, nested objects), or every argument when posted without the fields."
)


def _payload_field_name(task: str, key: str) -> str:
    """The form field of one payload key of one task (dots are not welcome in field names)."""
    return f"{task.replace('.', '_')}__{key}"


@cache
def _payload_forms() -> dict[str, SchemaFields]:
    """Each schedulable task's form: every field optional here (only the chosen task's are used,
    and its schema names a missing one)."""
    return {
        name: schema_fields(SCHEDULABLE_TASKS[name].payload_schema, enforce_required=False)
        for name in sorted(SCHEDULABLE_TASKS)
    }


def payload_fieldsets() -> tuple:
    """One fieldset per schedulable task with fields to show, marked with the task for the script
    that shows only the chosen task's (static tasks/schedule_payload.js); all are shown without it."""
    return tuple(
        (
            f"Arguments of {name}",
            {
                "fields": [_payload_field_name(name, key) for key in form.fields],
                "classes": ("extrapretty", "wide", "payload-fields", f"payload-task-{name.replace('.', '_')}"),
            },
        )
        for name, form in _payload_forms().items()
        if form.fields
    )


class SchedulableTaskField(forms.ChoiceField):
    """A select of the schedulable tasks; any other name (typed or posted) is refused by the form's
    clean_task, with a message that names it and lists the choices."""

    def valid_value(self, value: str) -> bool:
        return True


class ScheduleForm(PeriodicTaskForm):
    """django-celery-beat's form, narrowed to what the platform can run."""

    # django-celery-beat offers any registered task plus a free-text name; one choice replaces both.
    regtask = None
    task = SchedulableTaskField(
        label="Task",
        choices=_task_choices,
        help_text="A schedulable task: the public ops.* tasks and the housekeeping tasks.",
    )
    queue = forms.ChoiceField(
        label="Queue",
        required=False,
        choices=[("", "The task's own route"), *QueueName.choices],
        error_messages={
            "invalid_choice": "Unknown queue “%(value)s”: choose one of "
            + ", ".join(QueueName.values)
            + ", or leave it blank for the task's own route."
        },
        help_text="Leave blank for the queue the task is routed to (shown next to each task).",
    )
    priority = forms.IntegerField(
        label="Priority",
        required=False,
        min_value=PRIORITY_HIGHEST,
        max_value=PRIORITY_LOWEST,
        help_text=(f"{PRIORITY_HIGHEST} (most urgent) to {PRIORITY_LOWEST} (least); blank means {PRIORITY_DEFAULT}."),
    )
    missed_run_policy = forms.ChoiceField(
        label="After downtime",
        choices=MissedRunPolicy.choices,
        initial=MissedRunPolicy.RUN_ONCE,
        help_text=ScheduleOptions._meta.get_field("missed_run_policy").help_text,
    )

    class Meta(PeriodicTaskForm.Meta):
        model = PeriodicTask
        exclude = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "kwargs" in self.fields:
            self.fields["kwargs"].help_text = _KWARGS_HELP
            self._add_payload_fields()
        if "args" in self.fields:
            self.fields["args"].help_text = "Always [] here: the platform's tasks take keyword arguments only."
        current = self.instance.task if self.instance.pk else ""
        if "task" in self.fields and current and current not in SCHEDULABLE_TASKS:
            # Shown as it is, so the admin sees what to replace; saving it is refused.
            self.fields["task"].choices = [*_task_choices(), (current, f"{current} (not schedulable)")]
        if "missed_run_policy" in self.fields and self.instance.pk:
            options = ScheduleOptions.objects.filter(schedule=self.instance).first()
            if options is not None:
                self.initial.setdefault("missed_run_policy", options.missed_run_policy)

    def _add_payload_fields(self) -> None:
        """The schedulable tasks' fields, the current task's filled from its kwargs (the kwargs box
        then holds only what they cannot show)."""
        self.payload_forms = _payload_forms()
        current = self.instance.task if self.instance.pk else ""
        try:
            kwargs = json.loads(self.instance.kwargs or "{}") if self.instance.pk else {}
        except ValueError:
            kwargs = None  # shown as it is in the box, to be mended there
        for name, form in self.payload_forms.items():
            initial = form.initial(kwargs if name == current and isinstance(kwargs, dict) else None)
            for key, field in form.fields.items():
                field_name = _payload_field_name(name, key)
                self.fields[field_name] = copy.deepcopy(field)
                self.initial.setdefault(field_name, initial[key])
        self.fields[PAYLOAD_FIELDS_SHOWN] = forms.CharField(widget=forms.HiddenInput, required=False, initial="1")
        form = self.payload_forms.get(current)
        if form is not None and isinstance(kwargs, dict) and form.fields:
            self.initial["kwargs"] = form.other_initial(kwargs) or "{}"

    def clean_task(self) -> str:
        name = self.cleaned_data["task"]
        if name not in SCHEDULABLE_TASKS:
            raise forms.ValidationError(
                "Unknown task “%(name)s”: not a schedulable task. Choose one of: %(known)s.",
                code="unknown_task",
                params={"name": name, "known": ", ".join(sorted(SCHEDULABLE_TASKS))},
            )
        return name

    def clean_args(self) -> str:
        value = (self.cleaned_data.get("args") or "").strip() or "[]"
        try:
            args = json.loads(value)
        except ValueError as exc:
            raise forms.ValidationError("Unable to parse JSON: %(error)s", params={"error": exc}) from None
        if args != []:
            raise forms.ValidationError(
                "Must be empty ([]): the platform's tasks take keyword arguments only; put them in kwargs."
            )
        return "[]"

    def clean_kwargs(self) -> str:
        value = (self.cleaned_data.get("kwargs") or "").strip() or "{}"
        try:
            kwargs = json.loads(value)
        except ValueError as exc:
            raise forms.ValidationError("Unable to parse JSON: %(error)s", params={"error": exc}) from None
        if not isinstance(kwargs, dict):
            raise forms.ValidationError('Must be a JSON object, e.g. {"hold_seconds": 1}.')
        return value

    def clean_queue(self) -> str | None:
        return self.cleaned_data.get("queue") or None

    def clean(self) -> dict[str, Any]:
        # Not PeriodicTaskForm.clean: it takes any free-typed task name. ModelForm's still runs the
        # model's checks (exactly one of interval, crontab, solar or clocked).
        data = forms.ModelForm.clean(self)
        task = SCHEDULABLE_TASKS.get(data.get("task") or "")
        if task is not None and "kwargs" in data:
            kwargs = json.loads(data["kwargs"])
            shown = self.data.get(PAYLOAD_FIELDS_SHOWN) and self.payload_forms[task.name].fields
            if shown:
                kwargs = self._kwargs_with_fields(task.name, kwargs)
                data["kwargs"] = json.dumps(kwargs)
            for problem in payload_problems(task.payload_schema, kwargs):
                key = problem.partition(":")[0].split(".", 1)[0]
                on_field = shown and key in self.payload_forms[task.name].fields
                self.add_error(_payload_field_name(task.name, key) if on_field else "kwargs", problem)
        return data

    def _kwargs_with_fields(self, task: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The kwargs box's object with the task's fields over it (a blank field leaves its key out)."""
        form = self.payload_forms[task]
        values = {key: self.cleaned_data.get(_payload_field_name(task, key)) for key in form.fields}
        return form.payload(values, kwargs)


def payload_problems(schema: Any, payload: dict[str, Any]) -> list[str]:
    """What is wrong with ``payload`` for ``schema``, one "field: message" line per problem."""
    known = set(schema.model_fields) | {info.alias for info in schema.model_fields.values() if info.alias}
    problems = [
        f"{key}: unknown field (the task takes {', '.join(sorted(schema.model_fields)) or 'no arguments'})"
        for key in payload
        if key not in known
    ]
    try:
        schema.model_validate(payload)
    except PayloadError as exc:
        problems += [
            f"{'.'.join(map(str, error['loc'])) or 'kwargs'}: {error['msg']}"
            for error in exc.errors()
            if error["type"] != "extra_forbidden"  # reported above, with what the task takes
        ]
    return problems


def _when(moment: datetime | None) -> str:
    """A time on the schedule's wall clock, with its zone's abbreviation (CET, CEST) and UTC."""
    if moment is None:
        return "—"
    text = moment.strftime("%a %Y-%m-%d %H:%M" + (":%S" if moment.second else "") + " %Z")
    if moment.utcoffset():
        text += moment.astimezone(UTC).strftime(" (%H:%M" + (":%S" if moment.second else "") + " UTC)")
    return text


def _job_link(job: Job) -> str:
    return reverse("admin:tasks_job_change", args=[job.pk])


TIMING_FIELDS = (
    "interval", "crontab", "crontab_translation", "solar", "clocked", "start_time", "last_run_at", "one_off",
    "missed_run_policy",
)  # fmt: skip

admin.site.unregister(PeriodicTask)


@admin.register(PeriodicTask)
class ScheduleAdmin(PeriodicTaskAdmin):
    form = ScheduleForm
    change_form_template = "admin/tasks/schedule_change_form.html"
    list_display = (
        "name", "task", "enabled", "scheduler", "queue_shown", "missed_run_policy", "last_run", "last_result",
        "next_run",
    )  # fmt: skip
    # django-celery-beat's run_tasks publishes straight to Celery, past the ledger: replaced by run_now.
    actions = ("enable_tasks", "disable_tasks", "toggle_tasks", "run_now")
    readonly_fields = ("last_run_at", "crontab_translation", "next_runs", "last_runs")
    # exchange, routing_key, headers and expiry are left out: beat runs each schedule through the
    # ledger, which routes by queue and priority, and a ledger job does not expire.
    fieldsets = (
        (None, {"fields": ("name", "task", "enabled", "description"), "classes": ("extrapretty", "wide")}),
        (
            "Schedule",
            {
                "fields": TIMING_FIELDS,
                "classes": ("extrapretty", "wide"),
            },
        ),
        ("Arguments", {"fields": ("args", "kwargs"), "classes": ("extrapretty", "wide")}),
        (
            "Execution options",
            {"fields": ("queue", "priority"), "classes": ("extrapretty", "wide")},
        ),
    )
    runs_fieldset = ("Runs", {"fields": ("next_runs", "last_runs"), "classes": ("extrapretty", "wide")})

    def get_fieldsets(self, request: HttpRequest, obj: PeriodicTask | None = None):
        fieldsets = super().get_fieldsets(request, obj)
        editable = self.has_change_permission(request, obj) if obj is not None else self.has_add_permission(request)
        if not editable:  # read only: the kwargs as they are, no fields to fill in
            return (*fieldsets, self.runs_fieldset) if obj is not None else fieldsets
        # Each task's fields right after the kwargs box, the marker that the page posted them with it.
        arguments = next(index for index, (title, _) in enumerate(fieldsets) if title == "Arguments")
        marked = (
            "Arguments",
            {**fieldsets[arguments][1], "fields": (*fieldsets[arguments][1]["fields"], PAYLOAD_FIELDS_SHOWN)},
        )
        fieldsets = (*fieldsets[:arguments], marked, *payload_fieldsets(), *fieldsets[arguments + 1 :])
        return (*fieldsets, self.runs_fieldset) if obj is not None else fieldsets

    def get_form(self, request: HttpRequest, obj: PeriodicTask | None = None, change: bool = False, **kwargs: Any):
        # The tasks' fields are the form's own (added as it is made), not the model's: the form
        # class is built from the other fields of the fieldsets.
        own = {_payload_field_name(name, key) for name, form in _payload_forms().items() for key in form.fields}
        own.add(PAYLOAD_FIELDS_SHOWN)
        fields = kwargs.get("fields") or flatten_fieldsets(self.get_fieldsets(request, obj))
        kwargs["fields"] = [name for name in fields if name not in own]
        return super().get_form(request, obj, change, **kwargs)

    class Media:
        js = ("tasks/schedule_payload.js",)

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).select_related("platform_options")

    # Private API (Django): no documented hook sees the page's rows (the ChangeList's result_list).
    def get_changelist_instance(self, request: HttpRequest):
        changelist = super().get_changelist_instance(request)
        # The page's latest runs in two queries, not two per schedule.
        latest = schedules_latest_run(names=[schedule.name for schedule in changelist.result_list])
        # Why the page's schedules do not fire, in one look at beat's lease, not one per schedule.
        blocked = schedules_blocked(changelist.result_list)
        for schedule in changelist.result_list:
            schedule.latest_job = latest.get(schedule.name)
            schedule.not_firing = blocked.get(schedule.pk)
        return changelist

    def save_model(self, request: HttpRequest, obj: PeriodicTask, form: ScheduleForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if "missed_run_policy" in form.cleaned_data:
            schedule_options_update(schedule=obj, missed_run_policy=form.cleaned_data["missed_run_policy"])

    # --- columns and read-only fields ---------------------------------------------------------

    @admin.display(description="queue", ordering="queue")
    def queue_shown(self, obj: PeriodicTask) -> str:
        if obj.queue:
            return obj.queue
        return f"{task_queue(obj.task)} (route)" if obj.task in SCHEDULABLE_TASKS else "—"

    @admin.display(description="after downtime")
    def missed_run_policy(self, obj: PeriodicTask) -> str:
        options = getattr(obj, "platform_options", None)
        return MissedRunPolicy(options.missed_run_policy if options else MissedRunPolicy.RUN_ONCE).label

    @admin.display(description="last run")
    def last_run(self, obj: PeriodicTask) -> str:
        job = getattr(obj, "latest_job", None)
        return _when(job.created_at) if job else "—"

    @admin.display(description="last result")
    def last_result(self, obj: PeriodicTask) -> str:
        job = getattr(obj, "latest_job", None)
        if job is None:
            return "—"
        return format_html('<a href="{}">{}</a>', _job_link(job), job.get_state_display())

    @admin.display(description="next run")
    def next_run(self, obj: PeriodicTask) -> str:
        upcoming = schedule_next_runs(schedule=obj, count=1)
        shown = _when(upcoming.times[0]) if upcoming.times else upcoming.note or "—"
        blocked = getattr(obj, "not_firing", None)
        if blocked is None:
            return shown
        return format_html('{}<br><strong title="{}">Not firing: no beat leads</strong>', shown, blocked.message)

    @admin.display(description="next runs")
    def next_runs(self, obj: PeriodicTask) -> str:
        upcoming = schedule_next_runs(schedule=obj)
        parts = []
        if (blocked := schedule_blocked(obj)) is not None:
            parts.append(format_html("<p><strong>Not firing:</strong> {}.</p>", blocked.message))
        if upcoming.overdue_since is not None:
            policy = self.missed_run_policy(obj)
            parts.append(
                format_html(
                    "<p><strong>Late:</strong> due at {} and not run yet (beat was down). After downtime: {}.</p>",
                    _when(upcoming.overdue_since),
                    policy,
                )
            )
        if upcoming.times:
            parts.append(
                format_html(
                    '<ol class="next-runs">{}</ol><p class="help">Times in {}.</p>',
                    format_html_join("", "<li>{}</li>", ((_when(moment),) for moment in upcoming.times)),
                    upcoming.timezone,
                )
            )
        else:
            parts.append(format_html("<p>{}</p>", upcoming.note or "No upcoming run."))
        return format_html_join("", "{}", ((part,) for part in parts))

    @admin.display(description="last runs (job ledger)")
    def last_runs(self, obj: PeriodicTask) -> str:
        jobs = schedule_last_runs(schedule=obj)
        if not jobs:
            return "No run in the ledger yet."
        run_now_origin = schedule_origins(obj.name)[1]
        rows = format_html_join(
            "",
            '<tr class="last-run"><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    _job_link(job),
                    str(job.pk)[:8],
                    _when(job.created_at),
                    "run now" if job.origin == run_now_origin else "beat",
                    job.get_state_display(),
                    _when(job.finished_at) if job.finished_at else "",
                )
                for job in jobs
            ),
        )
        return format_html(
            "<table><thead><tr><th>job</th><th>created</th><th>by</th><th>state</th><th>finished</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )

    # --- actions --------------------------------------------------------------------------------

    @admin.action(description="Run the selected schedules now (a ledger job each)", permissions=["change"])
    def run_now(self, request: HttpRequest, queryset) -> None:
        queued, refused = [], []
        for schedule in queryset:
            try:
                queued.append(schedule_run_now(schedule=schedule, by=request.user))
            except ScheduleRunRefused as exc:
                refused.append(f"{schedule.name}: {exc}")
        if queued:
            self.message_user(
                request,
                f"{len(queued)} schedule(s) queued to run now: job(s) " + ", ".join(str(job.pk) for job in queued),
                messages.SUCCESS,
            )
        if refused:
            self.message_user(request, "Not run: " + "; ".join(refused), messages.ERROR)

    # django-celery-beat's own actions declare no permission: a view-only user would be offered them.
    # Private API (django-celery-beat): its admin actions are undocumented; wrapping them keeps their messages.
    @admin.action(description="Enable the selected schedules", permissions=["change"])
    def enable_tasks(self, request: HttpRequest, queryset) -> None:
        super().enable_tasks(request, queryset)

    @admin.action(description="Disable the selected schedules", permissions=["change"])
    def disable_tasks(self, request: HttpRequest, queryset) -> None:
        super().disable_tasks(request, queryset)

    @admin.action(description="Toggle the selected schedules on or off", permissions=["change"])
    def toggle_tasks(self, request: HttpRequest, queryset) -> None:
        super().toggle_tasks(request, queryset)

    # Private API (django-celery-beat): toggle_tasks updates the rows only through _toggle_tasks_activity.
    def _toggle_tasks_activity(self, queryset) -> int:
        # As a disable by form or action does, forget the last run of a schedule being disabled, so
        # that enabling it again counts from then instead of catching up on the time it was off.
        return queryset.update(
            enabled=Case(When(enabled=True, then=Value(False)), default=Value(True)),
            last_run_at=Case(When(enabled=True, then=Value(None)), default=F("last_run_at")),
        )

    # --- the "Run now" button of the change page ------------------------------------------------

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/run-now/",
                self.admin_site.admin_view(self.run_now_view),
                name="{}_{}_run_now".format(*info),
            ),
            *super().get_urls(),
        ]

    def run_now_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        schedule = get_object_or_404(self.get_queryset(request), pk=unquote(object_id))
        if not self.has_change_permission(request, schedule):
            raise PermissionDenied
        try:
            job = schedule_run_now(schedule=schedule, by=request.user)
        except ScheduleRunRefused as exc:
            self.message_user(request, f"Not run: {exc}", messages.ERROR)
        else:
            self.message_user(
                request,
                format_html('Queued to run now: <a href="{}">job {}</a>.', _job_link(job), job.pk),
                messages.SUCCESS,
            )
        info = self.opts.app_label, self.opts.model_name
        return HttpResponseRedirect(reverse("admin:{}_{}_change".format(*info), args=[schedule.pk]))
