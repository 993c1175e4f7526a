"""Who may enqueue what: tasks by audience, queues and priorities by allowance, the active-job cap,
per-token limits, the order rate, report permission, and admin actions by permission.

In-process (Django's test client) against the test database and Redis; the quote runs on a real worker.
"""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from tasks.models import ApiToken, EnqueueLimits, Job, Order, Product, WebhookDelivery, WebhookEndpoint
from tasks.platform.models.jobs import ACTIVE_STATES
from tasks.platform.queues import QueueName
from tasks.platform.registry import PUBLIC_TASKS
from tests.fixtures import bearer, create_operator, grant

pytestmark = pytest.mark.django_db

#: a valid body of each operators' task
OPS_BODIES = {
    "ops.ping": {"task": "ops.ping"},
    "ops.noop": {"task": "ops.noop"},
    "ops.fail": {"task": "ops.fail", "payload": {"mode": "permanent"}},
    "ops.mark": {"task": "ops.mark", "payload": {"key": "k"}},
    "ops.account": {"task": "ops.account", "payload": {"account_id": "a"}},
    "ops.paced": {"task": "ops.paced"},
}
QUOTE = {"task": "orders.quote", "payload": {"items": [{"sku": "LAMP", "quantity": 2}]}}


def post(client: Client, path: str, body, **headers):
    return client.post(path, body, content_type="application/json", **headers)


@pytest.fixture
def registered(broker) -> Client:
    """A client signed in as a user who registered at /accounts/register (not staff)."""
    client = Client()
    password = "a-Long-pass-9281"
    form = {"username": "newcomer", "email": "new@example.com", "password1": password, "password2": password}
    assert client.post(reverse("register"), form).status_code == 302
    return client


def test_a_registered_user_gets_403_for_every_ops_task_and_may_ask_for_a_quote(registered):
    assert set(OPS_BODIES) == {name for name in PUBLIC_TASKS if name.startswith("ops.")}
    for task, body in OPS_BODIES.items():
        response = post(registered, "/api/jobs", body)
        assert response.status_code == 403, (task, response.content)
        assert response.json()["code"] == "task_not_allowed"
    batch = post(registered, "/api/jobs/batch", {"jobs": [QUOTE, {"task": "ops.ping"}]})
    assert (batch.status_code, batch.json()["code"], batch.json()["index"]) == (403, "task_not_allowed", 1)
    assert not Job.objects.filter(task_name__startswith="ops.").exists()

    accepted = post(registered, "/api/jobs", QUOTE)

    assert accepted.status_code == 202, accepted.content
    job = Job.objects.get(pk=accepted.json()["id"])
    assert (job.queue, job.priority, job.owner.username) == ("default", 5, "newcomer")


def test_a_user_keeps_to_their_tasks_queue_and_a_priority_within_their_allowance(registered):
    own_queue = post(registered, "/api/jobs", {**QUOTE, "queue": "default"})
    other_queue = post(registered, "/api/jobs", {**QUOTE, "queue": "critical"})
    urgent = post(registered, "/api/jobs", {**QUOTE, "priority": 0})
    patient = post(registered, "/api/jobs", {**QUOTE, "priority": 7})

    assert own_queue.status_code == 202
    assert (other_queue.status_code, other_queue.json()["code"]) == (403, "queue_not_allowed")
    assert (urgent.status_code, urgent.json()["code"]) == (403, "priority_not_allowed")
    assert patient.status_code == 202
    assert Job.objects.get(pk=patient.json()["id"]).priority == 7
    assert Job.objects.filter(task_name="orders.quote").count() == 2


def test_an_admin_widens_one_users_queues_and_priorities(registered):
    user = get_user_model().objects.get(username="newcomer")
    EnqueueLimits.objects.create(user=user, queues=["critical"], highest_priority=2)

    critical = post(registered, "/api/jobs", {**QUOTE, "queue": "critical", "priority": 2})
    too_urgent = post(registered, "/api/jobs", {**QUOTE, "priority": 1})
    bulk = post(registered, "/api/jobs", {**QUOTE, "queue": "bulk"})

    assert critical.status_code == 202
    assert Job.objects.get(pk=critical.json()["id"]).queue == "critical"
    assert too_urgent.json()["code"] == "priority_not_allowed"
    assert bulk.json()["code"] == "queue_not_allowed"


def test_operators_choose_any_queue_and_priority():
    headers = bearer(create_operator("ops"))
    response = post(Client(), "/api/jobs", {"task": "ops.ping", "queue": "bulk", "priority": 0}, **headers)
    assert response.status_code == 202
    assert Job.objects.values_list("queue", "priority").get() == ("bulk", 0)


def test_the_active_job_cap_answers_429_until_jobs_finish(registered, settings):
    welcome = Job.objects.get(task_name="notifications.send_welcome_email")  # registering queued it
    settings.API_MAX_ACTIVE_JOBS = 3
    for _ in range(2):
        assert post(registered, "/api/jobs", QUOTE).status_code == 202

    refused = post(registered, "/api/jobs", QUOTE)
    batch = post(registered, "/api/jobs/batch", {"jobs": [QUOTE]})

    assert (refused.status_code, refused.json()["code"]) == (429, "too_many_active_jobs")
    assert refused["Retry-After"].isdigit()
    assert batch.status_code == 429
    assert Job.objects.count() == 3
    assert set(Job.objects.values_list("state", flat=True)) <= set(ACTIVE_STATES)
    Job.objects.filter(pk=welcome.pk).update(state=Job.State.SUCCEEDED)
    assert post(registered, "/api/jobs", QUOTE).status_code == 202


def test_the_active_count_uses_the_index_of_active_jobs(registered):
    """On PostgreSQL the cap's count reads the partial index, not the owner's whole history."""
    from django.db import connection

    from tasks.platform.selectors.jobs import jobs_active_count

    if connection.vendor != "postgresql":
        pytest.skip("plans are PostgreSQL's")
    user = get_user_model().objects.get(username="newcomer")
    query = Job.objects.filter(owner=user, owner__isnull=False, state__in=ACTIVE_STATES).order_by()[:10]
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")
        plan = query.explain()
        cursor.execute("SET enable_seqscan = on")
    assert "job_owner_active" in plan, plan
    assert jobs_active_count(owner=user, up_to=10) == 1  # the welcome e-mail


def test_a_service_token_gets_its_own_throughput(settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 10
    service = create_operator("service")
    service_row, service_token = ApiToken.issue(service)
    EnqueueLimits.objects.create(token=service_row, rate_per_minute=0, max_active_jobs=0)
    plain = bearer(service)
    thousand = {"jobs": [{"task": "ops.noop"}] * 1000}

    for _ in range(2):
        answer = post(Client(), "/api/jobs/batch", thousand, HTTP_AUTHORIZATION=f"Bearer {service_token}")
        assert answer.status_code == 202
    limited = post(Client(), "/api/jobs/batch", {"jobs": [{"task": "ops.noop"}] * 11}, **plain)

    assert limited.status_code == 429  # the user's other token keeps the user's limit
    assert limited.json()["code"] == "throttled"
    assert Job.objects.count() == 2000


def test_reports_need_the_permission(registered, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    body = {"date_from": "2026-10-01", "days": 31}
    refused = post(registered, "/api/reports", body)
    assert (refused.status_code, refused.json()["code"]) == (403, "permission_required")

    analyst = grant(get_user_model().objects.create_user("analyst"), "add_report")
    assert post(Client(), "/api/reports", body, **bearer(analyst)).status_code == 202


def test_orders_are_rate_limited_on_the_api_and_the_form_alike(registered, settings):
    settings.ORDER_RATE_LIMIT_PER_MINUTE = 2
    Product.objects.create(sku="LAMP", name="Lamp", price="10.00", stock=100)
    order = {"items": [{"sku": "LAMP", "quantity": 1}], "payment_token": "tok_ok"}
    assert post(registered, "/api/orders", order).status_code == 202

    fields = {"payment_token": "tok_ok", "email": "new@example.com", f"quantity_{Product.objects.get().pk}": 1}
    assert registered.post(reverse("order_form"), fields).status_code == 302  # the second order of the minute
    again = registered.post(reverse("order_form"), fields)
    api = post(registered, "/api/orders", order)

    assert again.status_code == 429
    assert "rate limit" in again.content.decode()
    assert (api.status_code, api.json()["code"]) == (429, "throttled")
    assert Order.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_users_quote_runs_on_a_worker(registered, start_worker, wait_for_job):
    Product.objects.create(sku="LAMP", name="Lamp", price="12.50", stock=1)
    accepted = post(registered, "/api/jobs", QUOTE)
    start_worker(QueueName.DEFAULT)

    done = wait_for_job(accepted.json()["id"], Job.State.SUCCEEDED)

    assert done.result == {
        "lines": [{"sku": "LAMP", "quantity": 2, "unit_price": "12.50", "price": "25.00", "in_stock": False}],
        "total": "25.00",
    }


# --- admin actions ----------------------------------------------------------------------------


def test_every_admin_action_declares_its_permissions():
    undeclared = []
    for model, model_admin in admin.site._registry.items():
        for action, name, _ in model_admin._get_base_actions():
            if not getattr(action, "allowed_permissions", ()):
                undeclared.append(f"{model._meta.label}.{name}")
    assert not undeclared, undeclared


@pytest.fixture
def view_only(broker) -> Client:
    """Staff with the view permissions of jobs, orders and webhook deliveries, and no other."""
    user = get_user_model().objects.create_user("auditor", is_staff=True)
    grant(user, "view_job", "view_order", "view_webhookdelivery")
    client = Client()
    client.force_login(user)
    return client


def _offered(client: Client, model: str) -> set[str]:
    page = client.get(reverse(f"admin:tasks_{model}_changelist"))
    assert page.status_code == 200
    form = page.context["action_form"]  # None when no action is offered
    return {name for name, _ in form.fields["action"].choices if name} if form else set()


def test_a_view_only_staff_user_cannot_retry_cancel_or_discard(view_only):
    dead = Job.objects.create(task_name="ops.ping", queue="default", state=Job.State.DEAD)
    queued = Job.objects.create(task_name="ops.ping", queue="default", state=Job.State.QUEUED)
    endpoint = WebhookEndpoint.objects.create(name="hook", url="https://example.com/h", event_types=["order.paid"])
    delivery = WebhookDelivery.objects.create(endpoint=endpoint, event="order.paid", payload={}, job=dead)

    assert _offered(view_only, "job") == set()
    assert _offered(view_only, "order") == set()
    assert _offered(view_only, "webhookdelivery") == set()
    for action, pk in (("retry_jobs", dead.pk), ("cancel_jobs", queued.pk), ("discard_jobs", dead.pk)):
        view_only.post(reverse("admin:tasks_job_changelist"), {"action": action, "_selected_action": [pk]})
    view_only.post(
        reverse("admin:tasks_webhookdelivery_changelist"),
        {"action": "retry_deliveries", "_selected_action": [delivery.pk]},
    )

    dead.refresh_from_db()
    queued.refresh_from_db()
    assert (dead.state, dead.discarded_at, queued.state) == (Job.State.DEAD, None, Job.State.QUEUED)
    assert not dead.actions.exists() and not queued.actions.exists()


def test_a_staff_user_who_may_change_jobs_is_offered_the_actions(broker):
    user = grant(get_user_model().objects.create_user("ops-admin", is_staff=True), "view_job", "change_job")
    client = Client()
    client.force_login(user)
    bulk = {"retry_all_matching", "cancel_all_matching", "discard_all_matching"}  # everything a filter matches
    assert _offered(client, "job") == {"retry_jobs", "cancel_jobs", "discard_jobs", *bulk}


def test_the_limits_form_checks_queues_and_names_one_owner():
    from tasks.platform.admin.jobs import EnqueueLimitsForm

    user = get_user_model().objects.create_user("limited")
    form = EnqueueLimitsForm(data={"queues": ["nowhere"], "user": user.pk})
    assert not form.is_valid()
    assert "queues" in form.errors
    assert EnqueueLimitsForm(data={"queues": [QueueName.BULK], "user": user.pk}).is_valid()
    neither = EnqueueLimitsForm(data={"queues": [QueueName.BULK]})
    both = EnqueueLimitsForm(data={"user": user.pk, "token": ApiToken.issue(user)[0].pk})
    assert not neither.is_valid() and not both.is_valid()
    assert "exactly one" in str(neither.errors) and "exactly one" in str(both.errors)


def test_limits_are_edited_under_users_and_tokens_in_admin(broker):
    root = get_user_model().objects.create_superuser("root", "root@example.com", None)
    row, _ = ApiToken.issue(root)
    client = Client()
    client.force_login(root)
    for path in (
        reverse("admin:auth_user_change", args=[root.pk]),
        reverse("admin:tasks_apitoken_change", args=[row.pk]),
        reverse("admin:tasks_enqueuelimits_add"),
    ):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "Queues it may choose" in page.content.decode(), path
