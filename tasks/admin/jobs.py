from django.contrib import admin

from tasks.admin.actions import apply_each
from tasks.models import ApiToken, Job, JobAction, JobAttempt
from tasks.services.recovery import job_cancel, job_discard, job_retry


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
    readonly_fields = ("kind", "by", "via", "at", "from_state")

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id", "task_name", "queue", "priority", "state", "attempts", "progress", "worker", "owner",
        "created_at", "finished_at",
    )  # fmt: skip
    list_filter = ("state", "queue", "task_name")
    search_fields = ("=id", "=idempotency_key", "task_name", "worker", "owner__username")
    date_hierarchy = "created_at"
    list_select_related = ("owner",)
    # The ledger is written by the platform; admins read it (retry and cancel come as actions).
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [JobAttemptInline, JobActionInline]
    actions = ["retry_jobs", "cancel_jobs", "discard_jobs"]

    def _apply(self, request, queryset, service, done: str) -> None:
        apply_each(self, request, queryset, lambda job: service(job_id=job.pk, by=request.user, via="admin"), done=done)

    @admin.action(description="Retry the selected failed, dead or cancelled jobs")
    def retry_jobs(self, request, queryset) -> None:
        self._apply(request, queryset, job_retry, "job(s) queued again")

    @admin.action(description="Cancel the selected jobs")
    def cancel_jobs(self, request, queryset) -> None:
        self._apply(request, queryset, job_cancel, "job(s) cancelled")

    @admin.action(description="Discard the selected dead jobs")
    def discard_jobs(self, request, queryset) -> None:
        self._apply(request, queryset, job_discard, "job(s) discarded")

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "created_at", "last_used_at")
    search_fields = ("user__username", "prefix")
    readonly_fields = ("user", "prefix", "created_at", "last_used_at")

    def has_add_permission(self, request) -> bool:
        # Tokens are shown once when made: use `manage.py create_api_token <username>`.
        return False
