"""Alerts in Django admin: thresholds set per queue and per task beat the settings' defaults in the
evaluation, the form refuses what cannot be judged, alerts are read only, and who may see alerts
and change thresholds follows the model permissions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tasks.models import Alert, AlertThreshold, Job
from tasks.platform.models import AlertRule
from tasks.platform.services.alerts import alerts_evaluate

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("static_files")]

THRESHOLD_ADD = reverse("admin:tasks_alertthreshold_add")
THRESHOLDS = reverse("admin:tasks_alertthreshold_changelist")
ALERTS = reverse("admin:tasks_alert_changelist")


@pytest.fixture(autouse=True)
def defaults(settings) -> None:
    settings.ALERT_LATENCY_SECONDS = 60
    settings.ALERT_EMAILS = []


def form_errors(response) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code  # the form again, not a redirect
    return {field: list(errors) for field, errors in response.context["adminform"].form.errors.items()}


def add_threshold(client: Client, **fields):
    data = {"rule": "latency", "scope": "queue", "name": "default", "threshold": "120", "enabled": "on"}
    return client.post(THRESHOLD_ADD, {**data, **fields, "_save": "Save"})


def queued(task: str, waited: float) -> Job:
    return Job.objects.create(
        task_name=task, queue="default", state=Job.State.QUEUED, queued_at=timezone.now() - timedelta(seconds=waited)
    )


def open_subjects() -> list[str]:
    """Open latency alerts (no worker runs here: the no-consumer rule may find the queue too)."""
    rows = Alert.objects.filter(state=Alert.State.OPEN, rule=AlertRule.LATENCY)
    return sorted(rows.values_list("subject", flat=True))


def test_thresholds_set_in_admin_per_queue_and_per_task_beat_the_setting(admin_client):
    queued("ops.ping", 90)
    alerts_evaluate()
    assert open_subjects() == ["queue:default"]  # 90 s is over the setting's 60 s
    Alert.objects.all().delete()

    assert add_threshold(admin_client, threshold="120").status_code == 302
    alerts_evaluate()
    assert open_subjects() == []  # the queue's 120 s beats the setting

    assert add_threshold(admin_client, scope="task", name="ops.ping", threshold="30").status_code == 302
    alerts_evaluate()
    assert open_subjects() == ["task:ops.ping"]  # the task's 30 s beats its queue's
    assert Alert.objects.get(rule=AlertRule.LATENCY).threshold == 30

    listing = admin_client.get(THRESHOLDS).content.decode()
    assert "ops.ping" in listing and "120" in listing


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"name": "nowhere"}, "name", "no queue 'nowhere'"),
        ({"scope": "task", "name": "no.such_task"}, "name", "no task 'no.such_task'"),
        ({"rule": "no_consumer", "scope": "task", "name": "ops.ping"}, "scope", "set it for a queue"),
        ({"threshold": "0"}, "threshold", "greater than or equal to 1"),
    ],
)
def test_the_threshold_form_refuses_what_cannot_be_judged(admin_client, fields, field, says):
    errors = form_errors(add_threshold(admin_client, **fields))
    assert any(says in message for message in errors[field]), errors
    assert not AlertThreshold.objects.exists()


def test_a_second_threshold_for_the_same_rule_and_queue_is_refused(admin_client):
    assert add_threshold(admin_client).status_code == 302
    errors = form_errors(add_threshold(admin_client, threshold="300"))
    assert errors, "a duplicate was saved"
    assert AlertThreshold.objects.get().threshold == 120


def test_alerts_are_listed_and_read_only_even_for_a_superuser(admin_client):
    alert = Alert.objects.create(
        rule=AlertRule.STALLED, subject="queue:bulk", message="queue:bulk: 1 job(s) running", value=999, threshold=900
    )
    listing = admin_client.get(ALERTS)
    assert listing.status_code == 200 and "queue:bulk" in listing.content.decode()
    assert admin_client.get(reverse("admin:tasks_alert_add")).status_code == 403
    change = reverse("admin:tasks_alert_change", args=[alert.pk])
    page = admin_client.get(change)
    assert page.status_code == 200 and 'name="message"' not in page.content.decode()
    assert admin_client.post(change, {"state": "resolved"}).status_code == 403
    assert admin_client.post(reverse("admin:tasks_alert_delete", args=[alert.pk]), {"post": "yes"}).status_code == 403
    alert.refresh_from_db()
    assert alert.state == Alert.State.OPEN


def staff(*codenames: str) -> Client:
    user = get_user_model().objects.create_user(f"staff-{'-'.join(codenames) or 'none'}", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="tasks", codename__in=codenames))
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize(
    ("codenames", "see_alerts", "see_thresholds", "add_thresholds"),
    [
        ((), 403, 403, 403),
        (("view_alert",), 200, 403, 403),
        (("view_alertthreshold",), 403, 200, 403),
        (("view_alertthreshold", "add_alertthreshold"), 403, 200, 200),
    ],
)
def test_who_may_see_alerts_and_set_thresholds(codenames, see_alerts, see_thresholds, add_thresholds):
    client = staff(*codenames)
    assert client.get(ALERTS).status_code == see_alerts
    assert client.get(THRESHOLDS).status_code == see_thresholds
    assert client.get(THRESHOLD_ADD).status_code == add_thresholds
    response = add_threshold(client)
    assert AlertThreshold.objects.exists() == (add_thresholds == 200), response.status_code


def test_changing_a_threshold_needs_the_change_permission():
    row = AlertThreshold.objects.create(rule="latency", scope="queue", name="default", threshold=120)
    change = reverse("admin:tasks_alertthreshold_change", args=[row.pk])
    data = {"rule": "latency", "scope": "queue", "name": "default", "threshold": "5", "enabled": "on"}
    assert staff("view_alertthreshold").post(change, data).status_code == 403
    assert staff("view_alertthreshold", "change_alertthreshold").post(change, data).status_code == 302
    row.refresh_from_db()
    assert row.threshold == 5


def test_anonymous_is_sent_to_sign_in():
    response = Client().get(ALERTS)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
