"""Notifications: signed webhook deliveries to a real HTTP receiver in the test process, and the
welcome e-mail of a registration sent to a real SMTP server, by a real default worker (and the
relay, which publishes retries when their backoff is over)."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.test import Client
from django.urls import reverse

from tasks.accounts.services import user_register
from tasks.notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tasks.notifications.services import webhook_event_dispatch
from tasks.platform.models import Job, JobAction
from tasks.platform.queues import QueueName
from tasks.platform.services.recovery import job_retry
from tests.support.http_receiver import Answer, HttpReceiver
from tests.support.processes import free_port, wait_until
from tests.support.smtp import Inbox

pytestmark = pytest.mark.django_db(transaction=True)

#: fast retries, and a receiver that has not answered after a second has timed out
FAST = {"WEBHOOK_BACKOFF_BASE_SECONDS": "1", "WEBHOOK_TIMEOUT_SECONDS": "1", "WEBHOOK_MAX_ATTEMPTS": "4"}
ORDER = {"id": "0b6c7f4e-5a8d-4a57-9a43-2f1f7c0f9d11", "status": "paid", "total": "57.00", "items": []}
PASSWORD = "correct-horse-battery-9"


@pytest.fixture
def receiver():
    server = HttpReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def platform(start_worker, start_relay):
    start_worker(QueueName.DEFAULT, env=FAST)
    start_relay(env=FAST)


def endpoint(receiver: HttpReceiver, path: str = "/hook", events=("order.paid",), **fields) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        name=path.strip("/"), url=receiver.url + path, event_types=list(events), **fields
    )


def attempts(delivery: WebhookDelivery) -> list[tuple[int, int | None]]:
    return list(delivery.attempts.order_by("number").values_list("number", "status_code"))


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """What a receiver computes: HMAC-SHA256 of "<timestamp>.<raw body>" keyed with the secret."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


# --- webhook deliveries ----------------------------------------------------------------------------


def test_a_delivery_carries_its_id_and_a_signature_made_with_the_endpoint_secret(platform, receiver, wait_for_job):
    hook = endpoint(receiver)

    assert webhook_event_dispatch(event="order.paid", data=ORDER) == 1

    delivery = WebhookDelivery.objects.get()
    job = wait_for_job(delivery.job_id, Job.State.SUCCEEDED)
    [request] = receiver.received()
    headers, timestamp = request.headers, request.headers["x-webhook-timestamp"]
    assert hmac.compare_digest(headers["x-webhook-signature"], sign(hook.secret, timestamp, request.body))
    assert not hmac.compare_digest(headers["x-webhook-signature"], sign("another-secret", timestamp, request.body))
    assert abs(int(timestamp) - request.at) < 5
    assert headers["x-webhook-id"] == str(delivery.id)
    assert headers["x-webhook-event"] == "order.paid"
    assert headers["content-type"] == "application/json"
    assert request.path == "/hook"
    assert json.loads(request.body) == {
        "id": str(delivery.id),
        "event": "order.paid",
        "created_at": delivery.created_at.isoformat(),
        "data": ORDER,
    }
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None
    [attempt] = delivery.attempts.all()
    assert (attempt.number, attempt.status_code, attempt.error) == (1, 200, "")
    assert (job.queue, job.attempts, job.result["status_code"]) == ("default", 1, 200)


def test_a_5xx_is_retried_with_backoff_and_each_attempt_recorded(platform, receiver, wait_for_job):
    endpoint(receiver)
    receiver.answer(Answer(500, b"database is down", delay=0.2), then=Answer(200))

    webhook_event_dispatch(event="order.paid", data=ORDER)

    delivery = WebhookDelivery.objects.get()
    job = wait_for_job(delivery.job_id, Job.State.SUCCEEDED)
    assert job.attempts == 2
    assert attempts(delivery) == [(1, 500), (2, 200)]
    failed, succeeded = delivery.attempts.order_by("number")
    assert failed.error == "HTTP 500: database is down"
    assert failed.duration_ms >= 200  # the receiver held its answer that long
    assert succeeded.duration_ms >= 0 and succeeded.error == ""
    first, second = receiver.received()
    # The same delivery, byte for byte, after a backoff (half to all of 1 s).
    assert first.headers["x-webhook-id"] == second.headers["x-webhook-id"] == str(delivery.id)
    assert first.body == second.body
    assert second.at - first.at >= 0.5


def test_a_4xx_is_dead_at_once_and_delivered_when_retried_by_hand(platform, receiver, wait_for_job):
    endpoint(receiver)
    receiver.answer(Answer(410, b"gone"))

    webhook_event_dispatch(event="order.paid", data=ORDER)

    delivery = WebhookDelivery.objects.get()
    dead = wait_for_job(delivery.job_id, Job.State.DEAD)
    assert dead.attempts == 1
    assert dead.error.startswith("WebhookRejected: ") and "answered 410" in dead.error
    assert attempts(delivery) == [(1, 410)]
    assert len(receiver.received()) == 1
    delivery.refresh_from_db()
    assert delivery.delivered_at is None

    receiver.answer(then=Answer(200))
    job_retry(job_id=delivery.job_id, via="admin")

    wait_for_job(delivery.job_id, Job.State.SUCCEEDED)
    assert attempts(delivery) == [(1, 410), (2, 200)]
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None


def test_a_receiver_that_does_not_answer_in_time_is_retried(platform, receiver, wait_for_job):
    endpoint(receiver)
    receiver.answer(Answer(200, delay=3), then=Answer(200))  # longer than WEBHOOK_TIMEOUT_SECONDS=1

    webhook_event_dispatch(event="order.paid", data=ORDER)

    delivery = WebhookDelivery.objects.get()
    wait_for_job(delivery.job_id, Job.State.SUCCEEDED)
    assert attempts(delivery) == [(1, None), (2, 200)]
    timed_out = delivery.attempts.get(number=1)
    assert timed_out.error == "timed out after 1s"
    assert 1000 <= timed_out.duration_ms < 3000
    assert len(receiver.received()) == 2


def test_only_active_endpoints_subscribed_to_the_event_get_it(platform, receiver, wait_for_job):
    paid = endpoint(receiver, "/paid", ["order.paid", "order.confirmed"])
    endpoint(receiver, "/cancelled", ["order.cancelled"])
    endpoint(receiver, "/inactive", ["order.paid"], active=False)

    assert webhook_event_dispatch(event="order.paid", data=ORDER) == 1
    assert webhook_event_dispatch(event="order.failed", data=ORDER) == 0

    delivery = WebhookDelivery.objects.get()
    assert delivery.endpoint == paid
    wait_for_job(delivery.job_id, Job.State.SUCCEEDED)
    # One delivery and one job exist, so nothing else can still arrive.
    assert Job.objects.count() == 1
    assert [request.path for request in receiver.received()] == ["/paid"]


def test_a_rolled_back_change_dispatches_nothing(receiver, broker):
    endpoint(receiver)

    with pytest.raises(RuntimeError), transaction.atomic():
        assert webhook_event_dispatch(event="order.paid", data=ORDER) == 1
        raise RuntimeError("the order's change failed")

    assert not WebhookDelivery.objects.exists()
    assert not Job.objects.exists()
    assert broker.llen("default") == 0
    with pytest.raises(ValueError, match=r"unknown webhook event 'order\.shipped'"):
        webhook_event_dispatch(event="order.shipped", data=ORDER)


# --- admin -----------------------------------------------------------------------------------------


def test_admin_refuses_a_bad_url_or_event_and_generates_a_blank_secret(admin_client):
    add = reverse("admin:tasks_webhookendpoint_add")
    assert b'value="order.confirmed"' in admin_client.get(add).content  # one checkbox per event
    form = {"name": "crm", "url": "ftp://crm.example.com/hook", "event_types": ["order.paid", "order.shipped"]}

    response = admin_client.post(add, {**form, "secret": "", "active": "on"})

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert "Enter a valid URL." in errors["url"]
    assert "order.shipped" in str(errors["event_types"])
    assert not WebhookEndpoint.objects.exists()

    form.update(url="https://crm.example.com/hook", event_types=["order.paid", "order.cancelled"])
    response = admin_client.post(add, {**form, "secret": "", "active": "on"})

    assert response.status_code == 302
    created = WebhookEndpoint.objects.get()
    assert created.event_types == ["order.paid", "order.cancelled"]
    assert len(created.secret) >= 40
    listing = admin_client.get(reverse("admin:tasks_webhookendpoint_changelist"))
    assert b"order.paid, order.cancelled" in listing.content
    # The model refuses it too, whatever form or script writes it.
    with pytest.raises(ValidationError, match=r"order\.shipped"):
        WebhookEndpoint(name="x", url="https://x.example", event_types=["order.shipped"]).full_clean()


def test_admin_retries_the_selected_dead_deliveries(admin_client, receiver, broker):
    hook = endpoint(receiver)
    webhook_event_dispatch(event="order.paid", data=ORDER)
    webhook_event_dispatch(event="order.paid", data={**ORDER, "status": "failed"})
    dead, queued = WebhookDelivery.objects.order_by("created_at")
    Job.objects.filter(pk=dead.job_id).update(state=Job.State.DEAD, error="WebhookRejected: 410")
    WebhookAttempt.objects.create(delivery=dead, number=1, status_code=410, duration_ms=12, at=dead.created_at)
    changelist = reverse("admin:tasks_webhookdelivery_changelist")

    filtered = admin_client.get(changelist, {"job__state__exact": "dead", "endpoint__id__exact": hook.pk})
    assert filtered.status_code == 200
    assert list(filtered.context["cl"].result_list) == [dead]
    page = admin_client.get(reverse("admin:tasks_webhookdelivery_change", args=[dead.pk]))
    assert page.status_code == 200 and b"410" in page.content
    response = admin_client.post(
        changelist, {"action": "retry_deliveries", "_selected_action": [str(dead.pk), str(queued.pk)]}, follow=True
    )

    shown = [str(message) for message in response.context["messages"]]
    assert "1 delivery(ies) queued again." in shown
    assert any(text.startswith("Not changed: ") and str(queued.pk) in text for text in shown)
    retried = Job.objects.get(pk=dead.job_id)
    assert retried.state in (Job.State.PENDING, Job.State.QUEUED)
    action = JobAction.objects.get(job=retried)
    assert (action.kind, action.via, action.by.username, action.from_state) == ("retried", "admin", "admin", "dead")


# --- registration and the welcome e-mail ----------------------------------------------------------------


def test_registering_signs_in_and_a_worker_sends_the_welcome_email(client, start_worker, smtp_server, wait_for_job):
    start_worker(QueueName.DEFAULT, env=smtp_server.env)
    assert b"csrfmiddlewaretoken" in client.get("/accounts/register").content

    response = client.post(
        "/accounts/register",
        {"username": "grace", "email": "grace@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )

    assert response.status_code == 302
    assert response["Location"] == reverse("order_form")
    user = get_user_model().objects.get(username="grace")
    assert user.email == "grace@example.com" and user.check_password(PASSWORD)
    assert client.session["_auth_user_id"] == str(user.pk)
    job = Job.objects.get(task_name="notifications.send_welcome_email")
    assert (job.payload, job.owner, job.queue) == ({"user_id": user.pk}, user, "default")

    wait_for_job(job.id, Job.State.SUCCEEDED)
    [mail] = wait_until(lambda: smtp_server.inbox.to("grace@example.com"), timeout=10, what="the welcome e-mail")
    assert mail["Subject"] == "Welcome, grace"
    assert mail["From"] == settings.DEFAULT_FROM_EMAIL
    assert mail["Message-ID"] == f"<welcome-{user.pk}@localhost>"
    assert "/orders/new" in mail.get_body(("plain",)).get_content()
    assert "Place your first order" in mail.get_body(("html",)).get_content()


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"email": "ada@example.com", "password1": PASSWORD, "password2": PASSWORD + "x"}, "password2", "didn"),
        ({"email": "", "password1": PASSWORD, "password2": PASSWORD}, "email", "This field is required."),
    ],
    ids=["passwords-differ", "no-email"],
)
def test_a_bad_registration_shows_the_errors_and_enqueues_nothing(client, form, field, message):
    response = client.post("/accounts/register", {"username": "ada", **form})

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert list(errors) == [field]
    assert message in errors[field][0]
    assert message.encode() in response.content  # shown in the page
    assert not get_user_model().objects.exists()
    assert not Job.objects.exists()


def test_registration_refuses_a_post_without_the_csrf_token():
    client = Client(enforce_csrf_checks=True)
    data = {"username": "mallory", "email": "m@example.com", "password1": PASSWORD, "password2": PASSWORD}

    assert client.post("/accounts/register", data).status_code == 403
    assert not get_user_model().objects.exists()
    assert not Job.objects.exists()


def test_the_welcome_email_is_retried_until_the_smtp_server_answers(start_worker, start_relay, wait_for_job):
    port = free_port()  # nothing listens here yet
    env = {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(port),
        "TASK_BACKOFF_BASE_SECONDS": "1",
    }
    start_worker(QueueName.DEFAULT, env=env)
    start_relay()

    job = user_register(username="linus", email="linus@example.com", password=PASSWORD).job
    wait_until(lambda: job.attempt_history.filter(outcome="failed").exists(), timeout=30, what="a failed attempt")
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        done = wait_for_job(job.id, Job.State.SUCCEEDED)
    finally:
        smtp.stop()

    assert done.attempts >= 2
    assert "Connection refused" in done.attempt_history.get(number=1).error
    assert [str(mail["To"]) for mail in inbox.messages] == ["linus@example.com"]
