"""Flower's "Edit and retry" page of a failed or dead job (linked from its task page and the dead
letters): the payload as a form from its task's schema, Preview (the diff of the stored payload and
the new one), then Retry with this payload, through the edit service, as from admin and the API.

Authorized as retry and dead letters are: any basic-auth user, same-site posts only (Flower's
check), refused in read-only mode. Flower's users are not Django users: the edit is recorded
``via`` *flower* with no user (the log names the basic-auth user), and with
JOB_EDIT_REQUIRES_APPROVAL on it waits for a staff user's approval in admin or the API (nobody can
approve from Flower). The ORM runs in Flower's thread pool (``in_thread``), never on its event loop.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.http import QueryDict

# Private API (Flower): Flower documents no Python API; its handlers are subclassed for its auth and XSRF check.
from flower.views import BaseHandler
from tornado import web

from tasks.platform.edit_form import PayloadEditForm, preview_token
from tasks.platform.flower.handlers import VIA, PlatformHandlerMixin, _job_id, in_thread
from tasks.platform.models import Job
from tasks.platform.models.jobs import EDITABLE_STATES
from tasks.platform.payload_diff import payload_diff
from tasks.platform.registry import PAYLOAD_SCHEMAS
from tasks.platform.services.edits import ActionRefused, EditOutcome, InvalidPayload, job_retry_edited

logger = logging.getLogger(__name__)

#: the notices of the page after an edit, by the redirect's ``done`` (a fixed word, never free text)
NOTICES = {
    "retried": "Retried with the edited payload: the job runs again.",
    "pending": "Edit saved, waiting for approval: a staff user with the permission to change jobs approves it "
    "in admin (Job edits) or the API, and then the job runs.",
}


def job_for_edit(*, job_id: uuid.UUID | None) -> Job | None:
    return Job.objects.filter(pk=job_id).first() if job_id else None


def edit_apply(*, job_id: uuid.UUID, payload: dict[str, Any], expected: dict[str, Any]) -> EditOutcome:
    return job_retry_edited(job_id=job_id, payload=payload, expected=expected, by=None, via=VIA)


def _fields(form: PayloadEditForm) -> list[dict[str, Any]]:
    """The form's visible fields, rendered by Django (escaped there) for the Tornado template."""
    return [
        {
            "name": field.name,
            "label": str(field.label_tag()),
            "widget": str(field),
            "help": str(field.help_text),
            "errors": [str(error) for error in field.errors],
        }
        for field in form.visible_fields()
    ]


class JobEditView(PlatformHandlerMixin, BaseHandler):
    """GET: the form; POST: preview (the diff) or confirm (the edit service)."""

    @web.authenticated
    async def get(self, task_id: str) -> None:
        job = await self._job(task_id)
        self._render(job, PayloadEditForm(job=job) if self._editable(job) else None)

    @web.authenticated
    async def post(self, task_id: str) -> None:
        self.refuse_if_read_only()
        job = await self._job(task_id)
        if not self._editable(job):
            self.set_status(409)
            self._render(job, None)
            return
        data = QueryDict(mutable=True)
        for key, values in self.request.body_arguments.items():
            data.setlist(key, [value.decode("utf-8", "replace") for value in values])
        form = PayloadEditForm(data, job=job)
        if not form.is_valid():
            self.set_status(422)
            self._render(job, form)
            return
        shown = preview_token(form.new_payload)
        diff = payload_diff(form.cleaned_data["expected"], form.new_payload)
        if "confirm" in data and form.cleaned_data["previewed"] == shown:
            try:
                outcome = await in_thread(
                    edit_apply, job_id=job.pk, payload=form.new_payload, expected=form.cleaned_data["expected"]
                )
            except InvalidPayload as exc:
                form.add_payload_errors(exc)
                self.set_status(422)
                self._render(job, form, diff=diff)
                return
            except ActionRefused as exc:
                form.add_error(None, f"Not retried: {exc}")
                self.set_status(409)
                self._render(job, form, diff=diff)
                return
            done = "retried" if outcome.pending is None else "pending"
            logger.info("job %s (%s) edited via Flower by %s: %s", job.pk, job.task_name, self.acting_user(), done)
            self.redirect(f"{self.reverse_url('platform_job_edit', str(job.pk))}?done={done}", status=303)
            return
        if "confirm" in data:
            form.add_error(None, "The payload changed since the preview: check the diff again.")
        data["previewed"] = shown
        self._render(job, form, diff=diff, confirm=True)

    async def _job(self, task_id: str) -> Job:
        job = await in_thread(job_for_edit, job_id=_job_id(task_id))
        if job is None:
            raise web.HTTPError(404, f"task {task_id} is not in the job ledger")
        return job

    @staticmethod
    def _editable(job: Job) -> bool:
        return job.state in EDITABLE_STATES and job.task_name in PAYLOAD_SCHEMAS

    def _render(self, job: Job, form: PayloadEditForm | None, *, diff=None, confirm: bool = False) -> None:
        self.render(
            "platform/job_edit.html",
            job=job,
            form=form,
            fields=_fields(form) if form is not None else [],
            hidden=[str(field) for field in form.hidden_fields()] if form is not None else [],
            form_errors=[str(error) for error in form.non_field_errors()] if form is not None else [],
            diff=diff,
            confirm=confirm,
            notice=NOTICES.get(self.get_query_argument("done", ""), ""),
            # Private API (Flower): its application's options are the only record of its read-only mode.
            read_only=self.application.options.read_only,
        )


def edit_handlers() -> list:
    return [web.url(r"/jobs/(.+)/edit", JobEditView, name="platform_job_edit")]
