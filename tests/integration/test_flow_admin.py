"""Flow control in Django admin: pausing by adding a pause and resuming by deleting it, both through
the flow service (recorded via "admin"), form errors for what cannot be paused or overridden, the
read-only record, a held job's "why not running", and the model permissions."""

from __future__ import annotations

import html

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from tasks.models import Job
from tasks.platform.models import ConcurrencyOverride, FlowEvent, Pause
from tasks.platform.models.jobs import HeldReason
from tasks.platform.queues import QueueName
from tasks.platform.services.flow import flow_pause
from tasks.platform.services.jobs import job_enqueue

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("static_files")]

PAUSE_ADD = reverse("admin:tasks_pause_add")
PAUSES = reverse("admin:tasks_pause_changelist")
EVENTS = reverse("admin:tasks_flowevent_changelist")
OVERRIDE_ADD = reverse("admin:tasks_concurrencyoverride_add")


def form_errors(response) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code  # the form again, not a redirect
    return {field: list(errors) for field, errors in response.context["adminform"].form.errors.items()}


def events() -> list[tuple[str, str, str, str, str | None]]:
    return [
        (event.action, event.scope, event.name, event.via, event.by.get_username() if event.by else None)
        for event in FlowEvent.objects.order_by("at", "pk")
    ]


# --- pauses: add pauses, delete resumes, through the service ----------------------------------------


def test_adding_a_pause_in_admin_pauses_the_queue_and_records_it_via_admin(admin_client, admin_user):
    response = admin_client.post(PAUSE_ADD, {"scope": "queue", "name": "default", "_save": "Save"})

    assert response.status_code == 302, form_errors(response)
    pause = Pause.objects.get()
    assert (pause.scope, pause.name, pause.via, pause.by) == ("queue", "default", "admin", admin_user)
    assert events() == [("paused", "queue", "default", "admin", admin_user.get_username())]
    # A job enqueued now waits, held, in the ledger.
    job = job_enqueue(task_name="ops.ping", payload={}, queue=QueueName.DEFAULT)
    assert (Job.objects.get(pk=job.id).state, Job.objects.get(pk=job.id).held_reason) == ("held", HeldReason.PAUSED)
    listing = admin_client.get(PAUSES).content.decode()
    assert "default" in listing and "admin" in listing


def test_a_task_can_be_paused_too(admin_client):
    response = admin_client.post(PAUSE_ADD, {"scope": "task", "name": "ops.account", "_save": "Save"})

    assert response.status_code == 302, form_errors(response)
    assert list(Pause.objects.values_list("scope", "name", "via")) == [("task", "ops.account", "admin")]


@pytest.mark.parametrize(
    ("scope", "name", "message"),
    [
        ("queue", "defualt", "unknown queue 'defualt'; queues: critical, default, bulk"),
        ("task", "ops.nope", "unknown task 'ops.nope'"),
    ],
)
def test_an_unknown_queue_or_task_is_a_form_error_and_nothing_is_paused(admin_client, scope, name, message):
    response = admin_client.post(PAUSE_ADD, {"scope": scope, "name": name, "_save": "Save"})

    assert form_errors(response) == {"name": [message]}
    assert html.escape(message) in response.content.decode()
    assert not Pause.objects.exists()
    assert not FlowEvent.objects.exists()


def test_pausing_what_is_paused_is_a_form_error(admin_client):
    flow_pause(scope="queue", name="bulk", via="api")

    response = admin_client.post(PAUSE_ADD, {"scope": "queue", "name": "bulk", "_save": "Save"})

    assert form_errors(response) == {"name": ["queue bulk is already paused"]}
    assert Pause.objects.get().via == "api"  # the first pause stands
    assert len(events()) == 1


def test_deleting_a_pause_resumes_and_releases_its_held_jobs(admin_client, admin_user):
    pause = flow_pause(scope="queue", name="default", via="api")
    job = job_enqueue(task_name="ops.ping", payload={}, queue=QueueName.DEFAULT)
    assert Job.objects.get(pk=job.id).state == Job.State.HELD

    response = admin_client.post(reverse("admin:tasks_pause_delete", args=[pause.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Pause.objects.exists()
    assert events()[-1] == ("resumed", "queue", "default", "admin", admin_user.get_username())
    released = Job.objects.get(pk=job.id)
    assert released.state != Job.State.HELD and released.held_reason == ""


def test_the_bulk_delete_action_resumes_each_selected_pause(admin_client, admin_user):
    pauses = [flow_pause(scope="queue", name=name, via="api") for name in ("critical", "bulk")]
    kept = flow_pause(scope="task", name="ops.ping", via="api")

    response = admin_client.post(
        PAUSES, {"action": "delete_selected", "_selected_action": [p.pk for p in pauses], "post": "yes"}
    )

    assert response.status_code == 302
    assert list(Pause.objects.all()) == [kept]
    resumed = sorted(event[:4] for event in events() if event[0] == "resumed")
    assert resumed == [("resumed", "queue", "bulk", "admin"), ("resumed", "queue", "critical", "admin")]
    assert {event[4] for event in events() if event[0] == "resumed"} == {admin_user.get_username()}


def test_a_pause_is_not_edited_in_admin(admin_client):
    pause = flow_pause(scope="queue", name="bulk", via="api")
    url = reverse("admin:tasks_pause_change", args=[pause.pk])

    page = admin_client.get(url)
    assert page.status_code == 200
    assert 'name="_save"' not in page.content.decode()  # read only
    assert admin_client.post(url, {"scope": "queue", "name": "default", "_save": "Save"}).status_code == 403
    assert list(Pause.objects.values_list("name", flat=True)) == ["bulk"]


def test_the_record_of_pauses_and_resumes_is_read_only_with_filters(admin_client):
    flow_pause(scope="queue", name="bulk", via="api")
    event = FlowEvent.objects.get()

    listing = admin_client.get(EVENTS)
    assert listing.status_code == 200
    filters = {spec.title for spec in listing.context["cl"].filter_specs}
    assert {"action", "of"} <= filters  # action and scope ("of", its verbose name)
    assert admin_client.get(f"{EVENTS}?action__exact=paused&scope__exact=queue").status_code == 200
    assert admin_client.get(reverse("admin:tasks_flowevent_add")).status_code == 403
    change = reverse("admin:tasks_flowevent_change", args=[event.pk])
    assert admin_client.post(change, {"action": "resumed"}).status_code == 403
    assert (
        admin_client.post(reverse("admin:tasks_flowevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    )
    assert FlowEvent.objects.get().action == "paused"


# --- concurrency overrides ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"running": "0"}, "running", "at least 1"),
        ({"task_name": "ops.nope"}, "task_name", "'ops.nope' declares no concurrency limit"),
        ({"task_name": "ops.ping"}, "task_name", "'ops.ping' declares no concurrency limit (tasks that do: "),
    ],
)
def test_a_bad_concurrency_override_is_a_form_error(admin_client, fields, field, message):
    data = {"task_name": "ops.account", "key": "42", "running": "1", "_save": "Save", **fields}

    response = admin_client.post(OVERRIDE_ADD, data)

    errors = form_errors(response)
    assert any(message in error for error in errors.get(field, [])), errors
    assert not ConcurrencyOverride.objects.exists()


def test_a_concurrency_override_is_saved_and_edited(admin_client):
    response = admin_client.post(OVERRIDE_ADD, {"task_name": "ops.account", "key": "42", "running": "5"})

    assert response.status_code == 302, form_errors(response)
    override = ConcurrencyOverride.objects.get()
    assert (override.task_name, override.key, override.running) == ("ops.account", "42", 5)
    change = reverse("admin:tasks_concurrencyoverride_change", args=[override.pk])
    assert admin_client.post(change, {"task_name": "ops.account", "key": "42", "running": "1"}).status_code == 302
    assert ConcurrencyOverride.objects.get().running == 1


# --- the job's "why not running" ------------------------------------------------------------------


def test_a_held_jobs_page_says_why_it_is_not_running(admin_client, admin_user):
    flow_pause(scope="queue", name="default", by=admin_user, via="admin")
    job = job_enqueue(task_name="ops.ping", payload={}, queue=QueueName.DEFAULT)

    page = admin_client.get(reverse("admin:tasks_job_change", args=[job.id]))

    assert page.status_code == 200
    text = html.unescape(page.content.decode())
    assert "Why not running" in text
    assert f"paused: its queue default is paused, by {admin_user.get_username()} via admin since" in text
    assert HeldReason.PAUSED.label in text  # held because
    assert "Concurrency key" in text


# --- permissions ----------------------------------------------------------------------------------


@pytest.fixture
def staff_client() -> tuple[Client, object]:
    user = get_user_model().objects.create_user("ops", password="unused-pass-123", is_staff=True)
    client = Client()
    client.force_login(user)
    return client, user


def grant(user, *codenames: str) -> None:
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="tasks", codename__in=codenames))


def test_staff_without_the_permissions_cannot_pause_resume_or_override(staff_client):
    client, user = staff_client
    pause = flow_pause(scope="queue", name="bulk", via="api")
    delete = reverse("admin:tasks_pause_delete", args=[pause.pk])

    assert client.get(PAUSE_ADD).status_code == 403
    assert client.post(PAUSE_ADD, {"scope": "queue", "name": "default", "_save": "Save"}).status_code == 403
    assert client.get(PAUSES).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    assert client.get(EVENTS).status_code == 403
    assert client.post(OVERRIDE_ADD, {"task_name": "ops.account", "key": "", "running": "1"}).status_code == 403
    assert list(Pause.objects.values_list("name", flat=True)) == ["bulk"]
    assert not ConcurrencyOverride.objects.exists()

    grant(user, "view_pause")
    assert client.get(PAUSES).status_code == 200
    assert client.get(PAUSE_ADD).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    client.post(PAUSES, {"action": "delete_selected", "_selected_action": [pause.pk], "post": "yes"})
    assert Pause.objects.exists()

    grant(user, "add_pause", "delete_pause")
    assert client.post(PAUSE_ADD, {"scope": "queue", "name": "default", "_save": "Save"}).status_code == 302
    assert client.post(delete, {"post": "yes"}).status_code == 302
    assert list(Pause.objects.values_list("name", "via")) == [("default", "admin")]
    assert [event[:4] for event in events()][-2:] == [
        ("paused", "queue", "default", "admin"),
        ("resumed", "queue", "bulk", "admin"),
    ]


@pytest.mark.parametrize(
    ("task_name", "rate", "error"),
    [("ops.paced", "fast", "is not a rate"), ("ops.ping", "1/s", "declares no rate")],
)
def test_a_bad_rate_override_is_a_form_error(admin_client, task_name, rate, error):
    from tasks.models import RateOverride

    response = admin_client.post(
        reverse("admin:tasks_rateoverride_add"), {"task_name": task_name, "key": "", "rate": rate}
    )
    assert response.status_code == 200
    assert error in response.content.decode()
    assert not RateOverride.objects.exists()
