"""The form of an edit of a job's payload, shared by the admin's and Flower's "Edit and retry" pages.

The fields are the job's task's schema as a form (tasks.platform.schema_forms), with a JSON box for
what it cannot render; two hidden fields carry the payload the edit was made from (``expected``:
the service refuses the edit of a job whose payload changed meanwhile) and the payload whose diff
was last shown (``previewed``: what runs is what the reviewer saw). ``clean`` runs the schema's
check, as the edit service does, so its errors show on their fields before anything is submitted.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms

from tasks.platform.models import Job
from tasks.platform.registry import PAYLOAD_SCHEMAS
from tasks.platform.schema_forms import OTHER_FIELDS, other_fields_field, parse_other_fields, schema_fields
from tasks.platform.services.jobs import InvalidPayload, job_payload_validate


class PayloadEditForm(forms.Form):
    """A job's payload as its task's schema's fields, the payload it was made from (hidden, so an
    edit of a job that changed meanwhile is refused), and the payload last previewed (hidden, so
    what runs is what the diff showed)."""

    expected = forms.CharField(widget=forms.HiddenInput)
    previewed = forms.CharField(widget=forms.HiddenInput, required=False)

    def __init__(self, *args: Any, job: Job, **kwargs: Any) -> None:
        self.job = job
        self.schema_form = schema_fields(PAYLOAD_SCHEMAS[job.task_name])
        initial = {**self.schema_form.initial(job.payload), "expected": json.dumps(job.payload, sort_keys=True)}
        if self.schema_form.rest:
            initial[OTHER_FIELDS] = self.schema_form.other_initial(job.payload)
        super().__init__(*args, initial=initial, **kwargs)
        self.fields.update(self.schema_form.fields)
        if self.schema_form.rest:
            self.fields[OTHER_FIELDS] = other_fields_field(self.schema_form.rest)
        self.new_payload: dict[str, Any] | None = None

    def clean_expected(self) -> dict[str, Any]:
        try:
            return json.loads(self.cleaned_data["expected"])
        except ValueError:
            raise forms.ValidationError("The page is out of date: open the edit page again.") from None

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        other: dict[str, Any] = {}
        if OTHER_FIELDS in self.fields:
            try:
                other = parse_other_fields(data.get(OTHER_FIELDS) or "")
            except forms.ValidationError as exc:
                self.add_error(OTHER_FIELDS, exc)
                return data
        if self.errors:
            return data
        values = {key: data.get(key) for key in self.schema_form.fields}
        try:
            # The schema's check, as the service makes it: errors shown on their fields now.
            self.new_payload = job_payload_validate(
                task_name=self.job.task_name, payload=self.schema_form.payload(values, other)
            )
        except InvalidPayload as exc:
            self.add_payload_errors(exc)
        return data

    def add_payload_errors(self, exc: InvalidPayload) -> None:
        """The schema's errors on the fields they name (a nested one on its top field, one the form
        does not show in the JSON box, the rest on the form)."""
        for error in exc.details.get("errors", []):
            top = error["field"].split(".", 1)[0]
            target = top if top in self.fields and top not in ("expected", "previewed") else None
            if target is None and OTHER_FIELDS in self.fields:
                target = OTHER_FIELDS
            self.add_error(target, f"{error['field'] or 'payload'}: {error['message']}")


def preview_token(payload: dict[str, Any]) -> str:
    """What ``previewed`` holds once a payload's diff was shown: its canonical JSON."""
    return json.dumps(payload, sort_keys=True)
