"""The admin job list's search, and its bulk actions on everything the search matches.

The list filters and the search box narrow the list through the same selector as the API
(tasks.platform.selectors.search): a JSON object in the box searches payloads (``{"order_id": 42}``),
a job id finds that job, other text searches the error text. ``changelist_search`` reads the same
parameters back as one ``JobSearch``, which is what the bulk actions act on: not the ticked rows, but
every job the list's filter matches. A bulk action asks first (a page naming the filter and how many
jobs it matches), then enqueues the bulk job (tasks.platform.services.bulk) with the filter as shown,
its time ranges fixed to the moment of the question.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any, ClassVar
from uuid import UUID

from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import SEARCH_VAR
from django.contrib.auth import get_user_model
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from pydantic import ValidationError

from tasks.platform.models.jobs import JobState
from tasks.platform.queues import QueueName
from tasks.platform.registry import LEDGER_TASKS
from tasks.platform.selectors.search import JobSearch, jobs_search
from tasks.platform.services.bulk import BulkAction, BulkRefused, bulk_action_count, bulk_action_enqueue

#: what the search box does, shown under it
SEARCH_HELP = (
    'A JSON object ({"order_id": 42}) finds the jobs whose payload contains it; a job id finds that job; '
    "other text (3 characters or more) finds the jobs whose error contains it, ignoring case."
)
#: the time-range filters' choices: since how long ago
PERIODS = {
    "1h": ("Last hour", timedelta(hours=1)),
    "24h": ("Last 24 hours", timedelta(days=1)),
    "7d": ("Last 7 days", timedelta(days=7)),
    "30d": ("Last 30 days", timedelta(days=30)),
}
#: most usernames the owner filter lists
OWNER_CHOICES_MAX = 100


class _SearchFilter(admin.SimpleListFilter):
    """A list filter on one field of the search: its query parameter, read through the selector."""

    #: the JobSearch field the parameter sets
    field: ClassVar[str]

    @classmethod
    def search_value(cls, value: str) -> Any:
        return value

    def queryset(self, request: HttpRequest, queryset):
        value = self.value()
        if value is None:
            return queryset
        try:
            search = JobSearch(**{self.field: self.search_value(value)})
        except (ValidationError, ValueError) as exc:
            raise IncorrectLookupParameters(exc) from None
        return jobs_search(search, jobs=queryset)


class StateFilter(_SearchFilter):
    title = parameter_name = field = "state"

    def lookups(self, request, model_admin):
        return JobState.choices


class QueueFilter(_SearchFilter):
    title = parameter_name = field = "queue"

    def lookups(self, request, model_admin):
        return QueueName.choices


class TaskFilter(_SearchFilter):
    title = parameter_name = field = "task"

    def lookups(self, request, model_admin):
        # The registry's tasks, not the ledger's distinct names: those would be a read of every row.
        return [(name, name) for name in sorted(LEDGER_TASKS)]


class OwnerFilter(_SearchFilter):
    title = parameter_name = field = "owner"

    def lookups(self, request, model_admin):
        usernames = get_user_model().objects.order_by("username").values_list("username", flat=True)
        return [(name, name) for name in usernames[:OWNER_CHOICES_MAX]]


class _PeriodFilter(_SearchFilter):
    @classmethod
    def search_value(cls, value: str) -> Any:
        if value not in PERIODS:
            raise ValueError(f"unknown period {value!r}")
        return timezone.now() - PERIODS[value][1]

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _) in PERIODS.items()]


class CreatedFilter(_PeriodFilter):
    title = parameter_name = "created"
    field = "created_after"


class FinishedFilter(_PeriodFilter):
    title = parameter_name = "finished"
    field = "finished_after"


#: the job list's filters, in the order shown
LIST_FILTERS = (StateFilter, QueueFilter, TaskFilter, OwnerFilter, CreatedFilter, FinishedFilter)


def search_box_fields(text: str) -> dict[str, Any]:
    """What the search box's text asks for (see SEARCH_HELP)."""
    text = text.strip()
    if text.startswith("{"):
        return {"payload": text}
    try:
        return {"id": UUID(text)}
    except ValueError:
        return {"error": text}


def search_box_results(request: HttpRequest, queryset, text: str):
    """ModelAdmin.get_search_results for the job list: a bad search shows why and lists nothing."""
    if not text.strip():
        return queryset, False
    try:
        search = JobSearch(**search_box_fields(text))
    except ValidationError as exc:
        messages.error(request, f"Search: {_reason(exc)}")
        return queryset.none(), False
    return jobs_search(search, jobs=queryset), False


def changelist_search(request: HttpRequest) -> JobSearch:
    """The search the job list shows: its list filters and its search box, as one JobSearch."""
    fields: dict[str, Any] = {}
    for list_filter in LIST_FILTERS:
        value = request.GET.get(list_filter.parameter_name)
        if value:
            fields[list_filter.field] = list_filter.search_value(value)
    text = request.GET.get(SEARCH_VAR, "").strip()
    if text:
        fields.update(search_box_fields(text))
    return JobSearch(**fields)


def _reason(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, error['loc'])) or 'filter'}: {error['msg']}" for error in exc.errors())


def bulk_action_confirm(model_admin: admin.ModelAdmin, request: HttpRequest, action: BulkAction):
    """An admin action's body: the confirmation page for everything the list's filter matches, then,
    once confirmed, the bulk job (None: back to the list, with a message)."""
    if request.POST.get("bulk_confirmed") == "yes":
        return _bulk_enqueue(model_admin, request, action)
    try:
        search = changelist_search(request)
    except (ValidationError, ValueError) as exc:
        reason = _reason(exc) if isinstance(exc, ValidationError) else str(exc)
        model_admin.message_user(request, f"Not started: the filter is invalid ({reason}).", messages.ERROR)
        return None
    count = bulk_action_count(search)
    cap = settings.JOB_BULK_MAX_JOBS
    if count == 0 or count > cap:
        reason = "it matches no job" if count == 0 else f"it matches more than {cap} jobs (JOB_BULK_MAX_JOBS)"
        model_admin.message_user(request, f"Not started: {reason}.", messages.ERROR)
        return None
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.model._meta,
        "title": f"{action.value.capitalize()} every job matching this filter?",
        "action": action.value,
        "count": count,
        "filters": search.as_payload(),
        "bulk_filter": json.dumps(search.as_payload()),
        "action_name": request.POST.get("action", ""),
        "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
    }
    return TemplateResponse(request, "admin/tasks/job_bulk_confirm.html", context)


def _bulk_enqueue(model_admin: admin.ModelAdmin, request: HttpRequest, action: BulkAction) -> None:
    try:
        search = JobSearch.model_validate_json(request.POST.get("bulk_filter", ""))
        job = bulk_action_enqueue(user=request.user, action=action, search=search, via="admin")
    except ValidationError as exc:
        model_admin.message_user(request, f"Not started: the filter is invalid ({_reason(exc)}).", messages.ERROR)
        return None
    except BulkRefused as exc:
        model_admin.message_user(request, f"Not started: {exc}.", messages.ERROR)
        return None
    link = reverse("admin:tasks_job_change", args=[job.pk])
    started = format_html(
        'Bulk {} started as job <a href="{}">{}</a>; its progress shows there.', action.value, link, job.pk
    )
    model_admin.message_user(request, started, messages.SUCCESS)
    return None


def _bulk_admin_action(action: BulkAction, description: str):
    @admin.action(description=description, permissions=["change"])
    def act(model_admin, request, queryset):
        # The ticked rows only let Django call the action: it acts on the list's whole filter.
        return bulk_action_confirm(model_admin, request, action)

    act.__name__ = f"{action.value}_all_matching"
    return act


#: the job list's bulk actions
retry_all_matching = _bulk_admin_action(BulkAction.RETRY, "Retry every job matching this filter (bulk job)")
cancel_all_matching = _bulk_admin_action(BulkAction.CANCEL, "Cancel every job matching this filter (bulk job)")
discard_all_matching = _bulk_admin_action(BulkAction.DISCARD, "Discard every job matching this filter (bulk job)")
