"""Edit and replay in Django admin: a failed or dead job's "Edit and retry" page, and the edits
waiting for a second person's approval.

The page shows the job's payload as a form made from its task's schema (tasks.platform.schema_forms;
a JSON box for what the form cannot render), then, on *Preview*, the diff of the stored payload and
the new one, and only then *Retry with this payload*, which goes through the edit service
(tasks.platform.services.edits): the schema's check, the engine's retry, the ``edited`` action. An
invalid payload is a form error naming the field, and nothing runs. Permission: staff with the
permission to change jobs, the same as the retry action; approving an edit too (and never one's own).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages

# Private API (Django): admin's unquote of an object id in its URLs has no documented counterpart.
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from tasks.platform.admin.actions import apply_each
from tasks.platform.edit_form import PayloadEditForm, preview_token
from tasks.platform.models import Job, JobEdit, JobEditStatus
from tasks.platform.models.jobs import EDITABLE_STATES
from tasks.platform.payload_diff import payload_diff
from tasks.platform.registry import PAYLOAD_SCHEMAS
from tasks.platform.services.edits import (
    ActionRefused,
    InvalidPayload,
    job_edit_approve,
    job_edit_reject,
    job_retry_edited,
)

VIA = "admin"
#: the permission that lets a staff user edit a job's payload, and approve another's edit
CHANGE_JOB = "tasks.change_job"


def job_edit_view(model_admin: admin.ModelAdmin, request: HttpRequest, object_id: str) -> HttpResponse:
    """The "Edit and retry" page of a failed or dead job: form, Preview (the diff), Retry."""
    job = get_object_or_404(Job, pk=unquote(object_id))
    if not model_admin.has_change_permission(request, job):
        raise PermissionDenied
    job_page = reverse("admin:tasks_job_change", args=[job.pk])
    if job.state not in EDITABLE_STATES or job.task_name not in PAYLOAD_SCHEMAS:
        model_admin.message_user(
            request,
            f"Only a failed or dead job of a known task can be edited; this one is {job.state}.",
            messages.ERROR,
        )
        return HttpResponseRedirect(job_page)
    form = PayloadEditForm(request.POST or None, job=job)
    diff, confirm = None, False
    if request.method == "POST" and form.is_valid():
        diff = payload_diff(form.cleaned_data["expected"], form.new_payload)
        shown = preview_token(form.new_payload)
        if "confirm" in request.POST and form.cleaned_data["previewed"] == shown:
            response = _apply(model_admin, request, job, form)
            if response is not None:
                return response
        else:
            if "confirm" in request.POST:
                form.add_error(None, "The payload changed since the preview: check the diff again.")
            confirm = True
            form.data = form.data.copy()
            form.data["previewed"] = shown
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Edit and retry {job.task_name} job {job.pk}",
        "opts": model_admin.opts,
        "job": job,
        "job_page": job_page,
        "form": form,
        "diff": diff,
        "confirm": confirm,
    }
    return TemplateResponse(request, "admin/tasks/job_edit.html", context)


def _apply(model_admin: admin.ModelAdmin, request: HttpRequest, job: Job, form: PayloadEditForm) -> HttpResponse | None:
    """Hand the previewed edit to the service; the redirect to the job's page, or None to show the
    form again with why it was refused."""
    try:
        outcome = job_retry_edited(
            job_id=job.pk, payload=form.new_payload, expected=form.cleaned_data["expected"], by=request.user, via=VIA
        )
    except InvalidPayload as exc:
        form.add_payload_errors(exc)
        return None
    except ActionRefused as exc:
        form.add_error(None, f"Not retried: {exc}")
        return None
    if outcome.pending is not None:
        model_admin.message_user(
            request,
            "Edit saved, waiting for approval: another staff user with the permission to change jobs "
            "approves it under Job edits, and then the job runs.",
            messages.WARNING,
        )
    else:
        model_admin.message_user(request, "Retried with the edited payload.", messages.SUCCESS)
    return HttpResponseRedirect(reverse("admin:tasks_job_change", args=[job.pk]))


def diff_html(before: Any, after: Any) -> str:
    """A payload diff as a table of lines, added and removed ones marked."""
    rows = format_html_join(
        "",
        '<tr class="diff-{}"><td><code>{}</code></td></tr>',
        ((line.kind, line.text) for line in payload_diff(before, after)),
    )
    return format_html('<table class="payload-diff">{}</table>', rows) if rows else "no change"


@admin.register(JobEdit)
class JobEditAdmin(admin.ModelAdmin):
    """Edits of job payloads waiting for (or given) a second person's approval: read only; approve
    or reject with the actions (staff with the permission to change jobs, never one's own edit)."""

    list_display = ("job", "status", "requested_by", "requested_via", "requested_at", "decided_by", "decided_at")
    list_filter = ("status",)
    list_select_related = ("requested_by", "decided_by")
    readonly_fields = (
        "job", "status", "diff", "requested_by", "requested_via", "requested_at", "decided_by", "decided_via",
        "decided_at",
    )  # fmt: skip
    fields = readonly_fields
    actions = ["approve_edits", "reject_edits"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("tasks.view_job") or request.user.has_perm(CHANGE_JOB)

    def has_approve_permission(self, request) -> bool:
        return request.user.has_perm(CHANGE_JOB)

    @admin.display(description="payload diff")
    def diff(self, edit: JobEdit) -> str:
        return diff_html(edit.before, edit.after)

    @admin.action(description="Approve the selected edits (the jobs run with them)", permissions=["approve"])
    def approve_edits(self, request, queryset) -> None:
        self._decide(request, queryset, job_edit_approve, "edit(s) approved: the job(s) run again")

    @admin.action(description="Reject the selected edits", permissions=["approve"])
    def reject_edits(self, request, queryset) -> None:
        self._decide(request, queryset, job_edit_reject, "edit(s) rejected")

    def _decide(self, request, queryset, service, done: str) -> None:
        def decide(edit: JobEdit) -> None:
            try:
                service(edit_id=edit.pk, by=request.user, via=VIA)
            except InvalidPayload as exc:
                raise ActionRefused(str(exc)) from None

        apply_each(self, request, queryset.filter(status=JobEditStatus.PENDING), decide, done=done)
