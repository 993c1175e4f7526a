"""Edit and replay: a dead job retried with an edited payload from the API, Django admin and Flower,
the two-person rule, who may use each door, and the schedule admin's fields from the task's schema.
Real worker, Redis, Flower; the result a worker stored shows it ran with the new payload."""

from __future__ import annotations

import json
import time

import pytest
import requests
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from tasks.models import Job, JobAction, JobEdit
from tasks.platform.edit_form import preview_token
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.fixtures import bearer, grant
from tests.integration.test_schedule_admin import ADD_URL, change_url, every, form_data, form_errors
from tests.support.flower import FLOWER_AUTH

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("static_files")]

QUEUE = QueueName.DEFAULT
#: ops.fail {"mode": "permanent"} as its schema stores it
DIED_WITH = {"mode": "permanent", "succeed_on_attempt": None}
#: how long a test waits to be sure that nothing ran
QUIET = 1.5


def edited(note: str) -> dict:
    """A payload that makes the job's next run (its second attempt) succeed and return ``note``."""
    return {"mode": "transient", "succeed_on_attempt": 2, "note": note}


@pytest.fixture
def dead_job(start_worker, wait_for_job):
    """An ops.fail job that died on a real worker (which keeps running for the retry)."""
    start_worker(QUEUE)
    job = job_enqueue(task_name="ops.fail", payload={"mode": "permanent"})
    return wait_for_job(job.id, Job.State.DEAD)


def staff(username: str, *codenames: str):
    return grant(get_user_model().objects.create_user(username, is_staff=True), *codenames)


def assert_ran_with(job: Job, note: str, wait_for_job) -> Job:
    """The job ran once more, on its second attempt, and the worker saw the edited note."""
    done = wait_for_job(job.id, Job.State.SUCCEEDED)
    assert done.result == {"succeeded_on_attempt": 2, "note": note}
    assert done.payload == {"mode": "transient", "succeed_on_attempt": 2, "note": note}
    return done


def assert_still_dead(job: Job) -> None:
    time.sleep(QUIET)
    stored = Job.objects.get(pk=job.pk)
    assert (stored.state, stored.attempts, stored.payload) == (Job.State.DEAD, 1, DIED_WITH)
    assert stored.attempt_history.count() == 1
    assert not JobAction.objects.filter(job=job).exists()


# --- the API ---------------------------------------------------------------------------------------


def test_api_an_invalid_edit_answers_422_and_a_valid_one_runs_with_the_new_payload(client, dead_job, wait_for_job):
    editor = staff("editor", "change_job")
    url = f"/api/jobs/{dead_job.id}/edit"

    refused = client.post(
        url, {"payload": {"mode": "sometimes", "hue": 1}}, content_type="application/json", **bearer(editor)
    )

    assert refused.status_code == 422
    body = refused.json()
    assert body["code"] == "invalid_payload"
    assert {error["field"] for error in body["errors"]} == {"mode", "hue"}
    assert_still_dead(dead_job)

    stale = client.post(
        url,
        {"payload": edited("x"), "expected_payload": {"mode": "transient"}},
        content_type="application/json",
        **bearer(editor),
    )
    assert (stale.status_code, stale.json()["code"]) == (409, "conflict")

    accepted = client.post(
        url,
        {"payload": edited("edited via api"), "expected_payload": DIED_WITH},
        content_type="application/json",
        **bearer(editor),
    )

    assert accepted.status_code == 202, accepted.content
    assert accepted.json()["edit"] is None
    assert_ran_with(dead_job, "edited via api", wait_for_job)
    action = JobAction.objects.get(job=dead_job)
    assert (action.kind, action.by_id, action.via, action.from_state) == ("edited", editor.pk, "api", "dead")
    assert (action.before, action.after) == (DIED_WITH, edited("edited via api"))
    # Succeeded now: another edit is refused.
    again = client.post(url, {"payload": edited("y")}, content_type="application/json", **bearer(editor))
    assert again.status_code == 409


def test_api_with_approval_required_the_edit_runs_once_a_second_person_approves(
    client, dead_job, wait_for_job, settings
):
    settings.JOB_EDIT_REQUIRES_APPROVAL = True
    requester, approver = staff("requester", "change_job"), staff("approver", "change_job")
    viewer = staff("onlooker", "view_job")

    asked = client.post(
        f"/api/jobs/{dead_job.id}/edit",
        {"payload": edited("approved")},
        content_type="application/json",
        **bearer(requester),
    )

    assert asked.status_code == 202
    edit = asked.json()["edit"]
    assert (edit["status"], edit["requested_by"], edit["after"]) == ("pending", "requester", edited("approved"))
    assert_still_dead(dead_job)
    approve = f"/api/jobs/edits/{edit['id']}/approve"
    own = client.post(approve, content_type="application/json", **bearer(requester))
    assert (own.status_code, own.json()["code"]) == (409, "conflict")
    assert "requester cannot approve" in own.json()["detail"]
    assert client.post(approve, content_type="application/json", **bearer(viewer)).status_code == 403
    assert JobEdit.objects.get(pk=edit["id"]).status == "pending"

    approved = client.post(approve, content_type="application/json", **bearer(approver))

    assert approved.status_code == 202, approved.content
    assert approved.json()["edit"]["status"] == "approved"
    assert approved.json()["edit"]["decided_by"] == "approver"
    assert_ran_with(dead_job, "approved", wait_for_job)
    action = JobAction.objects.get(job=dead_job)
    assert (action.kind, action.by_id, action.before, action.after) == (
        "edited",
        approver.pk,
        DIED_WITH,
        edited("approved"),
    )


def test_api_a_rejected_edit_never_runs(client, dead_job, settings):
    settings.JOB_EDIT_REQUIRES_APPROVAL = True
    requester, reviewer = staff("requester", "change_job"), staff("reviewer", "change_job")
    asked = client.post(
        f"/api/jobs/{dead_job.id}/edit",
        {"payload": edited("rejected")},
        content_type="application/json",
        **bearer(requester),
    )
    edit_id = asked.json()["edit"]["id"]

    rejected = client.post(f"/api/jobs/edits/{edit_id}/reject", content_type="application/json", **bearer(reviewer))

    assert (rejected.status_code, rejected.json()["status"], rejected.json()["decided_by"]) == (
        200,
        "rejected",
        "reviewer",
    )
    later = client.post(f"/api/jobs/edits/{edit_id}/approve", content_type="application/json", **bearer(reviewer))
    assert later.status_code == 409
    assert_still_dead(dead_job)


def test_api_who_may_edit_a_job(client, dead_job):
    """Owner, another user, staff without permissions, a viewer: none may edit; the job stays dead."""
    User = get_user_model()
    owner = User.objects.create_user("owner")
    Job.objects.filter(pk=dead_job.pk).update(owner=owner)
    url = f"/api/jobs/{dead_job.id}/edit"
    body = {"payload": edited("nobody")}
    expected = {
        "anonymous": (401, "unauthenticated"),
        "another user": (404, "not_found"),
        "staff without permissions": (404, "not_found"),
        "the owner": (403, "permission_required"),
        "staff who may view jobs": (403, "permission_required"),
    }
    callers = {
        "anonymous": {},
        "another user": bearer(User.objects.create_user("other")),
        "staff without permissions": bearer(User.objects.create_user("plain-staff", is_staff=True)),
        "the owner": bearer(owner),
        "staff who may view jobs": bearer(staff("viewer", "view_job")),
    }
    for who, headers in callers.items():
        response = client.post(url, body, content_type="application/json", **headers)
        assert (response.status_code, response.json()["code"]) == expected[who], who
    assert_still_dead(dead_job)


# --- Django admin ----------------------------------------------------------------------------------


def edit_page(job: Job) -> str:
    return reverse("admin:tasks_job_edit_retry", args=[job.pk])


def test_admin_edit_and_retry_shows_the_diff_before_it_runs_the_new_payload(dead_job, wait_for_job):
    editor = staff("admin-editor", "change_job", "view_job")
    client = Client()
    client.force_login(editor)

    job_page = client.get(reverse("admin:tasks_job_change", args=[dead_job.pk]))
    assert 'class="edit-retry"' in job_page.content.decode()
    form_page = client.get(edit_page(dead_job))
    assert form_page.status_code == 200
    html = form_page.content.decode()
    assert '<select name="mode"' in html and 'name="succeed_on_attempt"' in html and 'name="note"' in html
    expected = form_page.context["form"]["expected"].value()

    invalid = client.post(edit_page(dead_job), {"expected": expected, "mode": "transient", "succeed_on_attempt": "0"})

    assert invalid.status_code == 200
    assert invalid.context["form"].errors["succeed_on_attempt"] == [
        "succeed_on_attempt: Input should be greater than or equal to 1"
    ]
    assert invalid.context["diff"] is None
    assert_still_dead(dead_job)

    fields = {"expected": expected, "mode": "transient", "succeed_on_attempt": "2", "note": "edited in admin"}
    preview = client.post(edit_page(dead_job), {**fields, "preview": "Preview"})

    assert preview.status_code == 200
    page = preview.content.decode()
    assert 'id="payload-diff"' in page and 'name="confirm"' in page
    diff = [(line.kind, line.text) for line in preview.context["diff"]]
    assert ("removed", '-  "mode": "permanent",') in diff
    assert ("added", '+  "note": "edited in admin",') in diff
    assert Job.objects.get(pk=dead_job.pk).state == Job.State.DEAD  # a preview runs nothing

    # A confirm whose fields differ from what the diff showed is shown again, not run.
    changed = client.post(
        edit_page(dead_job), {**fields, "note": "sneaked", "previewed": preview_token(edited("edited in admin"))}
    )
    assert changed.status_code == 200 and "confirm" not in changed.wsgi_request.POST
    changed = client.post(
        edit_page(dead_job),
        {**fields, "note": "sneaked", "previewed": preview_token(edited("edited in admin")), "confirm": "1"},
    )
    assert "The payload changed since the preview" in changed.content.decode()
    assert Job.objects.get(pk=dead_job.pk).state == Job.State.DEAD

    confirmed = client.post(
        edit_page(dead_job), {**fields, "previewed": preview_token(edited("edited in admin")), "confirm": "1"}
    )

    assert confirmed.status_code == 302
    assert confirmed["Location"] == reverse("admin:tasks_job_change", args=[dead_job.pk])
    assert_ran_with(dead_job, "edited in admin", wait_for_job)
    action = JobAction.objects.get(job=dead_job)
    assert (action.kind, action.by_id, action.via) == ("edited", editor.pk, "admin")
    assert (action.before, action.after) == (DIED_WITH, edited("edited in admin"))
    shown = client.get(reverse("admin:tasks_job_change", args=[dead_job.pk])).content.decode()
    assert "diff-added" in shown  # the action's diff under the job
    assert client.get(edit_page(dead_job)).status_code == 302  # succeeded: back to the job's page


def test_admin_who_may_open_and_post_the_edit_page(dead_job):
    User = get_user_model()
    page = edit_page(dead_job)
    post = {"expected": json.dumps(DIED_WITH), "mode": "transient", "previewed": "", "confirm": "1"}
    assert Client().get(page).status_code == 302  # anonymous: to sign in
    callers = {
        "a user": (User.objects.create_user("plain"), 302),
        "staff without permissions": (User.objects.create_user("bare-staff", is_staff=True), 403),
        "staff who may view jobs": (staff("viewer", "view_job"), 403),
        "staff who may change jobs": (staff("changer", "change_job"), 200),
    }
    for who, (user, status) in callers.items():
        client = Client()
        client.force_login(user)
        assert client.get(page).status_code == status, who
        if status != 200:
            assert client.post(page, post).status_code == status, who
    viewer = Client()
    viewer.force_login(callers["staff who may view jobs"][0])
    job_page = viewer.get(reverse("admin:tasks_job_change", args=[dead_job.pk])).content.decode()
    assert 'class="edit-retry"' not in job_page
    assert_still_dead(dead_job)


def test_admin_approval_by_a_second_staff_user(dead_job, wait_for_job, settings):
    settings.JOB_EDIT_REQUIRES_APPROVAL = True
    requester, approver = staff("asks", "change_job", "view_job"), staff("approves", "change_job", "view_job")
    asker = Client()
    asker.force_login(requester)
    fields = {"expected": json.dumps(DIED_WITH), "mode": "transient", "succeed_on_attempt": "2", "note": "two"}

    asked = asker.post(edit_page(dead_job), {**fields, "previewed": preview_token(edited("two")), "confirm": "1"})

    assert asked.status_code == 302
    edit = JobEdit.objects.get(job=dead_job)
    assert (edit.status, edit.requested_by_id, edit.requested_via) == ("pending", requester.pk, "admin")
    changelist = reverse("admin:tasks_jobedit_changelist")
    own = asker.post(changelist, {"action": "approve_edits", "_selected_action": [edit.pk]}, follow=True)
    assert "requester cannot approve" in own.content.decode()
    assert_still_dead(dead_job)

    second = Client()
    second.force_login(approver)
    assert "diff-added" in second.get(reverse("admin:tasks_jobedit_change", args=[edit.pk])).content.decode()
    second.post(changelist, {"action": "approve_edits", "_selected_action": [edit.pk]})

    assert_ran_with(dead_job, "two", wait_for_job)
    assert JobEdit.objects.get(pk=edit.pk).status == "approved"
    assert JobAction.objects.get(job=dead_job).by_id == approver.pk


# --- Flower ----------------------------------------------------------------------------------------


def test_flower_edit_and_retry_behind_its_auth_and_same_site_posts(start_flower, dead_job, wait_for_job):
    _, flower = start_flower()
    page = f"{flower}/jobs/{dead_job.id}/edit"
    same_site = {"Origin": flower}

    assert requests.get(page, timeout=5).status_code == 401
    assert requests.get(page, auth=(FLOWER_AUTH[0], "wrong"), timeout=5).status_code == 401
    shown = requests.get(page, auth=FLOWER_AUTH, timeout=5)
    assert shown.status_code == 200
    assert '<select name="mode"' in shown.text and 'id="job-edit-form"' in shown.text
    dead_letters = requests.get(f"{flower}/dead-letters", auth=FLOWER_AUTH, timeout=5).text
    assert f"/jobs/{dead_job.id}/edit" in dead_letters
    fields = {"expected": json.dumps(DIED_WITH), "mode": "transient", "succeed_on_attempt": "2", "note": "via flower"}
    previewed = preview_token(edited("via flower"))

    forged = requests.post(
        page,
        data={**fields, "previewed": previewed, "confirm": "1"},
        headers={"Origin": "https://evil.example"},
        auth=FLOWER_AUTH,
        timeout=5,
    )
    assert forged.status_code == 403
    invalid = requests.post(
        page, data={**fields, "succeed_on_attempt": "0"}, headers=same_site, auth=FLOWER_AUTH, timeout=5
    )
    assert invalid.status_code == 422
    assert "succeed_on_attempt: Input should be greater than or equal to 1" in invalid.text
    assert_still_dead(dead_job)

    preview = requests.post(page, data={**fields, "preview": "1"}, headers=same_site, auth=FLOWER_AUTH, timeout=5)
    assert preview.status_code == 200
    assert 'id="payload-diff"' in preview.text and 'id="edit-confirm"' in preview.text
    assert "+  &quot;note&quot;: &quot;via flower&quot;," in preview.text
    assert Job.objects.get(pk=dead_job.pk).state == Job.State.DEAD

    confirmed = requests.post(
        page, data={**fields, "previewed": previewed, "confirm": "1"}, headers=same_site, auth=FLOWER_AUTH, timeout=5
    )

    assert confirmed.status_code == 200  # after the 303 back to the page
    assert 'id="job-edit-notice"' in confirmed.text
    assert_ran_with(dead_job, "via flower", wait_for_job)
    action = JobAction.objects.get(job=dead_job)
    assert (action.kind, action.by_id, action.via) == ("edited", None, "flower")
    assert (action.before, action.after) == (DIED_WITH, edited("via flower"))
    again = requests.post(
        page, data={**fields, "previewed": previewed, "confirm": "1"}, headers=same_site, auth=FLOWER_AUTH, timeout=5
    )
    assert again.status_code == 409  # succeeded now


# --- the schedule admin's fields from the task's schema --------------------------------------------


def test_schedule_admin_shows_the_tasks_fields_and_saves_them_as_kwargs(admin_client):
    page = admin_client.get(ADD_URL).content.decode()
    assert "payload-task-ops_ping" in page and 'name="ops_ping__hold_seconds"' in page
    assert "tasks/schedule_payload" in page  # the script that shows the chosen task's fieldset
    shown = {"payload_fields_shown": "1", "kwargs": "{}", "ops_ping__hold_seconds": "2.5"}

    refused = admin_client.post(ADD_URL, form_data(interval=every(10).pk, **{**shown, "ops_ping__hold_seconds": "301"}))

    assert form_errors(refused) == {
        "ops_ping__hold_seconds": ["hold_seconds: Input should be less than or equal to 300"]
    }
    assert not PeriodicTask.objects.filter(name="Ping now and then").exists()

    saved = admin_client.post(
        ADD_URL, form_data(interval=every(10).pk, **{**shown, "ops_ping__ignore_soft_limit": "on"})
    )

    assert saved.status_code == 302
    schedule = PeriodicTask.objects.get(name="Ping now and then")
    assert json.loads(schedule.kwargs) == {"hold_seconds": 2.5, "ignore_soft_limit": True}


def test_schedule_admin_fields_show_a_schedules_kwargs_and_a_missing_field_is_named(admin_client):
    schedule = PeriodicTask.objects.create(name="Mark", task="ops.mark", kwargs='{"key": "a"}', interval=every(10))

    form = admin_client.get(change_url(schedule)).context["adminform"].form

    assert form["ops_mark__key"].value() == "a"
    assert form["kwargs"].value() == "{}"  # the box holds only what the fields cannot show
    missing = admin_client.post(
        change_url(schedule),
        form_data(name="Mark", task="ops.mark", interval=every(10).pk, payload_fields_shown="1", kwargs="{}"),
    )
    assert form_errors(missing) == {"ops_mark__key": ["key: Field required"]}
    assert json.loads(PeriodicTask.objects.get(pk=schedule.pk).kwargs) == {"key": "a"}
