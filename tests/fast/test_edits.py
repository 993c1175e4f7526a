"""Edit and replay, in-process: the engine's ``retry_edited`` (both engines), the edit service with
and without the two-person rule, the form built from a payload schema, and the payload diff."""

from __future__ import annotations

import enum
from datetime import date
from typing import Literal

import pytest
from django import forms
from django.contrib.auth import get_user_model
from pydantic import BaseModel, ConfigDict, Field

from tasks.models import Job, JobAction, JobEdit
from tasks.platform.edit_form import PayloadEditForm, preview_token
from tasks.platform.engine import ActionRefused, Attempt
from tasks.platform.payload_diff import payload_diff
from tasks.platform.schema_forms import parse_other_fields, schema_fields
from tasks.platform.services.edits import job_edit_approve, job_edit_reject, job_retry_edited
from tasks.platform.services.jobs import InvalidPayload
from tests.fast.conftest import actions, enqueue, fail, row, run, sent

pytestmark = pytest.mark.django_db

State = Job.State
#: an ops.fail payload {"mode": "permanent"} as the schema stores it
STORED = {"mode": "permanent", "succeed_on_attempt": None}


def dead_fail_job(engine, payload=None) -> Job:
    """An ops.fail job that died (a permanent failure), as the edit pages meet one."""
    job = enqueue("ops.fail", payload=payload or {"mode": "permanent"})
    fail(engine, job, run(engine, job), State.DEAD)
    return job


def edited_actions(job: Job) -> list[tuple[str, str, dict | None, dict | None]]:
    return list(
        JobAction.objects.filter(job_id=job.pk, kind="edited").values_list("via", "from_state", "before", "after")
    )


# -- the engine's retry_edited ----------------------------------------------------------------------


def test_retry_edited_runs_a_dead_job_again_with_the_new_payload(
    engine, user, broker, django_capture_on_commit_callbacks
):
    job = dead_fail_job(engine)
    new = {"mode": "transient", "succeed_on_attempt": 1}

    with django_capture_on_commit_callbacks(execute=True):
        engine.retry_edited(job_id=job.pk, payload=new, expected=STORED, by=user, via="admin")

    stored = row(job)
    assert (stored.state, stored.payload, stored.error, stored.attempts_before_retry) == (State.QUEUED, new, "", 1)
    assert actions(job) == [("edited", State.DEAD, "admin", user.pk)]
    assert edited_actions(job) == [("admin", State.DEAD, STORED, new)]
    assert sent(broker) == [("ops.fail", str(job.pk))]
    assert run(engine, job) == Attempt(number=2, used=1, allowed=stored.max_attempts or 5)


@pytest.mark.parametrize("state", [State.QUEUED, State.STARTED, State.SUCCEEDED, State.CANCELLED])
def test_retry_edited_of_a_job_neither_failed_nor_dead_is_refused(engine, state):
    job = enqueue("ops.fail", payload={"mode": "permanent"})
    if state == State.CANCELLED:
        engine.cancel(job_id=job.pk, via="api")
    elif state != State.QUEUED:
        attempt = run(engine, job)
        if state == State.SUCCEEDED:
            engine.succeed(job_id=str(job.pk), attempt=attempt, result=None)

    with pytest.raises(ActionRefused, match="only failed or dead"):
        engine.retry_edited(job_id=job.pk, payload={"mode": "transient"}, expected=STORED, via="api")

    stored = row(job)
    assert (stored.state, stored.payload, edited_actions(job)) == (state, STORED, [])


def test_retry_edited_of_a_job_whose_payload_changed_meanwhile_is_refused(engine):
    job = dead_fail_job(engine)
    with pytest.raises(ActionRefused, match="changed since"):
        engine.retry_edited(job_id=job.pk, payload={"mode": "transient"}, expected={"mode": "other"}, via="api")
    assert (row(job).state, row(job).payload, edited_actions(job)) == (State.DEAD, STORED, [])


def test_retry_edited_of_a_failed_job(engine):
    job = enqueue("ops.fail", payload={"mode": "permanent"})
    fail(engine, job, run(engine, job), State.FAILED)
    engine.retry_edited(job_id=job.pk, payload={"mode": "transient"}, expected=STORED, via="flower")
    assert (row(job).state, edited_actions(job)[0][1]) == (State.QUEUED, State.FAILED)


# -- the service ------------------------------------------------------------------------------------


@pytest.fixture
def second_user():
    return get_user_model().objects.create_user("fast-approver")


def test_an_invalid_edit_is_refused_with_the_enqueue_error_and_nothing_changes(engine, user):
    job = dead_fail_job(engine)

    with pytest.raises(InvalidPayload) as refused:
        job_retry_edited(job_id=job.pk, payload={"mode": "sometimes", "colour": 1}, by=user, via="api")

    assert refused.value.code == "invalid_payload"
    assert {error["field"] for error in refused.value.details["errors"]} == {"mode", "colour"}
    stored = row(job)
    assert (stored.state, stored.payload, actions(job)) == (State.DEAD, STORED, [])


def test_a_valid_edit_is_stored_as_the_schema_makes_it(engine, user):
    job = dead_fail_job(engine)
    outcome = job_retry_edited(
        job_id=job.pk, payload={"mode": "transient", "succeed_on_attempt": 2.0}, by=user, via="api"
    )
    assert outcome.pending is None
    # 2.0 is a JSON integer: stored as the schema dumps it, as an enqueue stores it
    assert row(job).payload == {"mode": "transient", "succeed_on_attempt": 2}
    assert edited_actions(job) == [("api", State.DEAD, STORED, {"mode": "transient", "succeed_on_attempt": 2})]


def test_with_approval_required_an_edit_waits_for_a_second_person(engine, user, second_user, settings):
    settings.JOB_EDIT_REQUIRES_APPROVAL = True
    job = dead_fail_job(engine)
    new = {"mode": "transient", "succeed_on_attempt": 2}

    outcome = job_retry_edited(job_id=job.pk, payload=new, by=user, via="admin")

    edit = outcome.pending
    assert (edit.status, edit.before, edit.after, edit.requested_by_id) == (
        "pending",
        STORED,
        new,
        user.pk,
    )
    assert (row(job).state, row(job).payload, actions(job)) == (State.DEAD, STORED, [])
    with pytest.raises(ActionRefused, match="already waits"):
        job_retry_edited(job_id=job.pk, payload={"mode": "transient"}, by=second_user, via="api")
    with pytest.raises(ActionRefused, match="requester cannot approve"):
        job_edit_approve(edit_id=edit.pk, by=user, via="admin")
    with pytest.raises(ActionRefused, match="requester cannot approve"):
        job_edit_approve(edit_id=edit.pk, by=None, via="flower")
    assert (row(job).state, JobEdit.objects.get(pk=edit.pk).status) == (State.DEAD, "pending")

    job_edit_approve(edit_id=edit.pk, by=second_user, via="api")

    assert (row(job).state, row(job).payload) == (State.QUEUED, new)
    assert actions(job) == [("edited", State.DEAD, "api", second_user.pk)]
    decided = JobEdit.objects.get(pk=edit.pk)
    assert (decided.status, decided.decided_by_id, decided.decided_via) == ("approved", second_user.pk, "api")
    with pytest.raises(ActionRefused, match="already approved"):
        job_edit_approve(edit_id=edit.pk, by=second_user, via="api")


def test_an_edit_from_flower_waits_for_any_staff_user_and_nobody_approves_without_a_user(engine, user, settings):
    settings.JOB_EDIT_REQUIRES_APPROVAL = True
    job = dead_fail_job(engine)
    edit = job_retry_edited(job_id=job.pk, payload={"mode": "transient"}, by=None, via="flower").pending

    assert (edit.requested_by_id, edit.requested_via) == (None, "flower")
    with pytest.raises(ActionRefused, match="requester cannot approve"):
        job_edit_approve(edit_id=edit.pk, by=None, via="flower")
    job_edit_approve(edit_id=edit.pk, by=user, via="admin")
    assert (row(job).state, actions(job)) == (State.QUEUED, [("edited", State.DEAD, "admin", user.pk)])


def test_a_rejected_edit_leaves_the_job_as_it_was(engine, user, second_user, settings):
    settings.JOB_EDIT_REQUIRES_APPROVAL = True
    job = dead_fail_job(engine)
    edit = job_retry_edited(job_id=job.pk, payload={"mode": "transient"}, by=user, via="admin").pending

    job_edit_reject(edit_id=edit.pk, by=second_user, via="admin")

    assert JobEdit.objects.get(pk=edit.pk).status == "rejected"
    assert (row(job).state, row(job).payload, actions(job)) == (State.DEAD, STORED, [])
    with pytest.raises(ActionRefused):
        job_edit_approve(edit_id=edit.pk, by=second_user, via="admin")
    # decided, so a new edit may be asked for
    assert job_retry_edited(job_id=job.pk, payload={"mode": "transient"}, by=user, via="admin").pending is not None


def test_an_approved_edit_of_a_job_retried_meanwhile_is_refused(engine, user, second_user, settings):
    settings.JOB_EDIT_REQUIRES_APPROVAL = True
    job = dead_fail_job(engine)
    edit = job_retry_edited(job_id=job.pk, payload={"mode": "transient"}, by=user, via="admin").pending
    engine.retry(job_id=job.pk, via="api")

    with pytest.raises(ActionRefused, match="only failed or dead"):
        job_edit_approve(edit_id=edit.pk, by=second_user, via="admin")

    assert JobEdit.objects.get(pk=edit.pk).status == "pending"
    assert row(job).payload == STORED


# -- the form from a schema -------------------------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Line(BaseModel):
    sku: str


class Everything(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=20, description="Who it is for.")
    count: int = Field(3, ge=1, le=9, description="How many.")
    ratio: float | None = Field(None, description="A share.")
    loud: bool = Field(False, description="Shout.")
    mode: Literal["fast", "slow"] = "fast"
    colour: Colour | None = None
    day: date | None = Field(None, description="When.")
    lines: list[Line] = Field(default_factory=list)
    meta: dict[str, int] = Field(default_factory=dict)


def test_each_property_becomes_a_field_of_its_type_with_default_help_and_required():
    form = schema_fields(Everything)

    kinds = {key: type(field) for key, field in form.fields.items()}
    assert kinds == {
        "name": forms.CharField,
        "count": forms.IntegerField,
        "ratio": forms.FloatField,
        "loud": forms.BooleanField,
        "mode": forms.ChoiceField,
        "colour": forms.ChoiceField,
        "day": forms.DateField,
    }
    assert form.rest == ("lines", "meta")
    assert {key for key, field in form.fields.items() if field.required} == {"name"}
    assert (form.fields["count"].initial, form.fields["count"].help_text) == (3, "How many.")
    assert form.fields["count"].widget.attrs == {"min": 1, "max": 9}
    assert form.fields["name"].widget.attrs["maxlength"] == 20
    assert list(form.fields["mode"].choices) == [("", "—"), ("fast", "fast"), ("slow", "slow")]  # blank: the default
    assert form.fields["mode"].initial == "fast"
    assert list(form.fields["colour"].choices) == [("", "—"), ("red", "red"), ("blue", "blue")]
    assert not schema_fields(Everything, enforce_required=False).fields["name"].required


def test_the_payload_from_the_fields_leaves_blank_ones_to_their_defaults_and_keeps_the_json_box():
    form = schema_fields(Everything)
    values = {
        "name": "ada",
        "count": None,
        "ratio": 0.5,
        "loud": True,
        "mode": "slow",
        "colour": "",
        "day": date(2026, 1, 2),
    }

    payload = form.payload(values, {"lines": [{"sku": "A"}], "name": "overridden"})

    assert payload == {
        "name": "ada",
        "ratio": 0.5,
        "loud": True,
        "mode": "slow",
        "day": "2026-01-02",
        "lines": [{"sku": "A"}],
    }
    assert Everything.model_validate(payload).count == 3
    assert form.initial({"name": "x", "lines": []})["name"] == "x"
    assert form.initial({})["count"] == 3
    assert (
        form.other_initial({"name": "x", "lines": [{"sku": "B"}]})
        == '{\n  "lines": [\n    {\n      "sku": "B"\n    }\n  ]\n}'
    )


@pytest.mark.parametrize(("text", "message"), [("[1]", "Must be a JSON object"), ("{", "Unable to parse JSON")])
def test_the_json_box_takes_only_an_object(text, message):
    with pytest.raises(forms.ValidationError, match=message):
        parse_other_fields(text)
    assert parse_other_fields("  ") == {}


def test_the_edit_form_checks_the_payload_with_the_tasks_schema_and_names_the_field(engine):
    job = dead_fail_job(engine)
    expected = preview_token({"mode": "permanent"})

    bad = PayloadEditForm({"expected": expected, "mode": "permanent", "succeed_on_attempt": "0"}, job=job)
    assert not bad.is_valid()
    assert bad.errors["succeed_on_attempt"] == ["succeed_on_attempt: Input should be greater than or equal to 1"]

    missing = PayloadEditForm({"expected": expected, "mode": ""}, job=job)
    assert not missing.is_valid()
    assert "mode" in missing.errors

    good = PayloadEditForm({"expected": expected, "mode": "transient", "succeed_on_attempt": "3"}, job=job)
    assert good.is_valid(), good.errors
    assert good.new_payload == {"mode": "transient", "succeed_on_attempt": 3}
    assert good.cleaned_data["expected"] == {"mode": "permanent"}


def test_the_edit_form_of_a_task_with_a_list_keeps_it_in_the_json_box():
    job = enqueue("orders.quote", payload={"items": [{"sku": "A", "quantity": 1}]})
    form = PayloadEditForm(job=job)
    assert list(form.fields) == ["expected", "previewed", "other_fields"]
    bound = PayloadEditForm(
        {"expected": preview_token(job.payload), "other_fields": '{"items": [{"sku": "A", "quantity": 0}]}'}, job=job
    )
    assert not bound.is_valid()
    assert bound.errors["other_fields"] == ["items.0.quantity: Input should be greater than or equal to 1"]


# -- the diff ---------------------------------------------------------------------------------------


def test_the_diff_marks_what_changed_and_keeps_the_rest_as_context():
    diff = payload_diff({"mode": "permanent", "note": "x"}, {"mode": "transient", "note": "x"})
    kinds = [(line.kind, line.text) for line in diff]
    assert ("removed", '-  "mode": "permanent",') in kinds
    assert ("added", '+  "mode": "transient",') in kinds
    assert ("context", '   "note": "x"') in kinds
    assert payload_diff({"a": 1}, {"a": 1}) == []
