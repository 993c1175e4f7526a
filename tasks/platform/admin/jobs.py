from functools import partial

from django import forms
from django.contrib import admin

# Private API (Django): admin's unquote of an object id in its URLs has no documented counterpart.
from django.contrib.admin.utils import unquote
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.core.paginator import Paginator
from django.urls import path
from django.utils.functional import cached_property

from tasks.platform.admin.actions import apply_each
from tasks.platform.admin.edits import diff_html, job_edit_view
from tasks.platform.admin.search import (
    LIST_FILTERS,
    SEARCH_HELP,
    cancel_all_matching,
    discard_all_matching,
    retry_all_matching,
    search_box_results,
)
from tasks.platform.models import ApiToken, EnqueueLimits, Job, JobAction, JobAttempt
from tasks.platform.models.jobs import EDITABLE_STATES
from tasks.platform.queues import QueueName
from tasks.platform.registry import PAYLOAD_SCHEMAS
from tasks.platform.selectors.counts import count_capped
from tasks.platform.selectors.flow import job_blocked
from tasks.platform.services.recovery import job_cancel, job_discard, job_retry


class JobAttemptInline(admin.TabularInline):
    model = JobAttempt
    extra = 0
    can_delete = False
    readonly_fields = ("number", "worker", "started_at", "finished_at", "outcome", "error")

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class JobActionInline(admin.TabularInline):
    model = JobAction
    extra = 0
    can_delete = False
    readonly_fields = ("kind", "by", "via", "at", "from_state", "payload_change")
    fields = readonly_fields

    @admin.display(description="payload before → after")
    def payload_change(self, action: JobAction) -> str:
        """An edit's diff of the payload (empty for the other actions)."""
        return diff_html(action.before, action.after) if action.kind == JobAction.Kind.EDITED else ""

    def has_add_permission(self, request, obj=None) -> bool:
        return False


def _ledger_fields_with_why() -> list[str]:
    """Every field of the job (held_reason and flow_key too), read-only, and "why not running"
    right after the state."""
    names = [field.name for field in Job._meta.fields]
    after_state = names.index("state") + 1
    return [*names[:after_state], "why_not_running", *names[after_state:]]


class CappedCountPaginator(Paginator):
    """Counts the changelist up to COUNT_CAP (tasks.platform.selectors.counts), so the job list of a
    large ledger does not read every row to say how many there are; its pagination template says
    "more than" when the count stopped there."""

    @cached_property
    def _counted(self) -> tuple[int, bool]:
        return count_capped(self.object_list)

    @cached_property
    def count(self) -> int:
        return self._counted[0]

    @property
    def count_capped(self) -> bool:
        return self._counted[1]


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id", "task_name", "queue", "priority", "state", "attempts", "progress", "worker", "owner",
        "created_at", "finished_at",
    )  # fmt: skip
    # Filters and search box go through the search selector (tasks.platform.admin.search).
    list_filter = LIST_FILTERS
    search_fields = ("payload", "error")  # shows the box; search_box_results reads it
    search_help_text = SEARCH_HELP
    list_select_related = ("owner",)
    # Counted up to a cap, and never the whole ledger besides the filtered list (admin's "N total").
    paginator = CappedCountPaginator
    show_full_result_count = False
    # The ledger is written by the platform; admins read it (retry and cancel come as actions).
    readonly_fields = _ledger_fields_with_why()
    inlines = [JobAttemptInline, JobActionInline]
    change_form_template = "admin/tasks/job_change_form.html"  # the "Edit and retry" button
    actions = [
        "retry_jobs", "cancel_jobs", "discard_jobs", retry_all_matching, cancel_all_matching, discard_all_matching,
    ]  # fmt: skip

    def get_search_results(self, request, queryset, search_term):
        return search_box_results(request, queryset, search_term)

    def _apply(self, request, queryset, service, done: str) -> None:
        apply_each(self, request, queryset, lambda job: service(job_id=job.pk, by=request.user, via="admin"), done=done)

    @admin.action(description="Retry the selected failed, dead or cancelled jobs", permissions=["change"])
    def retry_jobs(self, request, queryset) -> None:
        self._apply(request, queryset, job_retry, "job(s) queued again")

    @admin.action(description="Cancel the selected jobs", permissions=["change"])
    def cancel_jobs(self, request, queryset) -> None:
        self._apply(request, queryset, job_cancel, "job(s) cancelled")

    @admin.action(description="Discard the selected dead jobs", permissions=["change"])
    def discard_jobs(self, request, queryset) -> None:
        self._apply(request, queryset, job_discard, "job(s) discarded")

    def has_add_permission(self, request) -> bool:
        return False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, unquote(object_id))
        editable = job is not None and job.state in EDITABLE_STATES and job.task_name in PAYLOAD_SCHEMAS
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "editable": editable})

    def get_urls(self):
        edit = self.admin_site.admin_view(partial(job_edit_view, self))
        return [path("<path:object_id>/edit-retry/", edit, name="tasks_job_edit_retry"), *super().get_urls()]

    @admin.display(description="why not running")
    def why_not_running(self, job: Job) -> str:
        blocked = job_blocked(job)
        return "—" if blocked is None else f"{blocked.code}: {blocked.message}"


class EnqueueLimitsForm(forms.ModelForm):
    """Queues as checkboxes of the declared queues, not a JSON box."""

    queues = forms.MultipleChoiceField(
        label=EnqueueLimits._meta.get_field("queues").verbose_name.capitalize(),
        choices=QueueName.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=EnqueueLimits._meta.get_field("queues").help_text,
    )

    class Meta:
        model = EnqueueLimits
        fields = ("user", "token", "rate_per_minute", "max_active_jobs", "queues", "highest_priority")

    def clean(self):
        cleaned = super().clean()
        # On their own page the limits name their owner; under a user or a token, that is the owner.
        if {"user", "token"} <= set(self.fields) and bool(cleaned.get("user")) == bool(cleaned.get("token")):
            raise forms.ValidationError("Limits are for one user or one API token: choose exactly one.")
        return cleaned


class EnqueueLimitsInline(admin.StackedInline):
    model = EnqueueLimits
    form = EnqueueLimitsForm
    fields = ("rate_per_minute", "max_active_jobs", "queues", "highest_priority")  # the owner is the page's
    extra = 0
    max_num = 1
    verbose_name_plural = "enqueue limits (blank fields keep the defaults)"


@admin.register(EnqueueLimits)
class EnqueueLimitsAdmin(admin.ModelAdmin):
    form = EnqueueLimitsForm
    list_display = ("__str__", "rate_per_minute", "max_active_jobs", "queues", "highest_priority")
    list_select_related = ("user", "token__user")
    search_fields = ("user__username", "token__user__username", "token__prefix")
    raw_id_fields = ("user", "token")
    fields = ("user", "token", "rate_per_minute", "max_active_jobs", "queues", "highest_priority")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "created_at", "last_used_at")
    search_fields = ("user__username", "prefix")
    readonly_fields = ("user", "prefix", "created_at", "last_used_at")
    inlines = [EnqueueLimitsInline]

    def has_add_permission(self, request) -> bool:
        # Tokens are shown once when made: use `manage.py create_api_token <username>`.
        return False


class UserWithLimitsAdmin(UserAdmin):
    """Django's user admin, with the user's enqueue limits under it."""

    inlines = [*UserAdmin.inlines, EnqueueLimitsInline]


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), UserWithLimitsAdmin)
