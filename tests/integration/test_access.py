"""The access-control matrix: anonymous, another user, the owner, staff (no model permissions) and a
superuser against every API endpoint, the live event stream, the HTML pages, the report download,
Django admin and Flower; and secrets that are shown once and never logged.

Web-app routes go through Django's test client (fast, in-process). The API's endpoints are listed
from the django-ninja object itself, so an endpoint added later fails here until its expected
outcomes are written down. Flower runs as a real process.
"""

from __future__ import annotations

import inspect
import logging
import re
from datetime import date
from decimal import Decimal
from io import StringIO

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from tornado.web import RequestHandler

from tasks.api import api
from tasks.models import ApiToken, Job, JobEdit, Order, Product, Report, WebhookEndpoint
from tasks.platform.models import JobEditStatus
from tasks.platform.models.tokens import token_digest
from tests.fixtures import bearer, create_operator, grant
from tests.support.flower import FLOWER_AUTH, launch_flower

# Non-transactional: enqueues never publish (their on-commit never comes), so nothing runs.
pytestmark = pytest.mark.django_db

NO_JOB = "00000000-0000-0000-0000-000000000000"
#: staff: is_staff and no permission (a user like any other outside admin); operator: staff who may
#: add jobs (the ops.* tasks, own scope); viewer: staff with the view permissions of jobs, orders and
#: reports (sees everyone's, changes nothing)
ROLES = ("anonymous", "other", "owner", "staff", "operator", "viewer", "superuser")
SEES_ALL = {"owner", "viewer", "superuser"}
VIEWS = ("view_job", "view_order", "view_report")


@pytest.fixture
def people(broker) -> dict:
    """The users of each role (anonymous is None); ``broker`` empties the rate-limit buckets. No
    passwords (hashing one takes a while): clients sign in with force_login, or a token."""
    User = get_user_model()
    return {
        "anonymous": None,
        "other": User.objects.create_user("other", email="other@example.com"),
        "owner": User.objects.create_user("owner", email="owner@example.com"),
        "staff": User.objects.create_user("staff", email="staff@example.com", is_staff=True),
        "operator": create_operator("operator", email="operator@example.com"),
        "viewer": grant(User.objects.create_user("viewer", email="viewer@example.com", is_staff=True), *VIEWS),
        "superuser": User.objects.create_superuser("root", "root@example.com", None),
    }


@pytest.fixture
def things(people, tmp_path, settings) -> dict:
    """The owner's job (succeeded), order (confirmed), built report and a product in stock."""
    settings.MEDIA_ROOT = tmp_path / "media"
    owner = people["owner"]
    job = Job.objects.create(task_name="ops.ping", queue="critical", owner=owner, state=Job.State.SUCCEEDED)
    job.finished_at = timezone.now()
    job.save()
    order = Order.objects.create(
        customer=owner, email="owner@example.com", payment_token="tok_ok", status=Order.Status.CONFIRMED
    )
    report = Report.objects.create(owner=owner, date_from=date(2024, 1, 1), date_to=date(2024, 1, 2))
    report.file.save("r.pdf", ContentFile(b"%PDF-1.4 access test"), save=False)
    report.finished_at = timezone.now()
    report.save()
    Product.objects.create(sku="ACCESS-1", name="Widget", price=Decimal("2.50"), stock=100)
    edit = JobEdit.objects.create(job=job, before={}, after={}, requested_by=owner, status=JobEditStatus.APPROVED)
    return {"job": job, "order": order, "report": report, "edit": edit}


def client_as(role: str, people: dict, credentials: str = "session") -> tuple[Client, dict]:
    """A client for the role, and the headers to send: a signed-in session, or a bearer token and
    no session. Anonymous has neither."""
    client = Client()
    user = people[role]
    if user is None:
        return client, {}
    if credentials == "bearer":
        return client, bearer(user)
    client.force_login(user)
    return client, {}


# --- the API -------------------------------------------------------------------------------------

BODIES = {
    "job_create": {"task": "ops.ping"},
    "job_create_batch": {"jobs": [{"task": "ops.ping"}, {"task": "ops.ping"}]},
    "order_create": {"items": [{"sku": "ACCESS-1", "quantity": 1}], "payment_token": "tok_ok"},
    "report_create": {"date_from": "2024-02-01", "days": 3},
    "job_edit": {"payload": {"hold_seconds": 1}},
    # Matches the owner's succeeded job: a bulk job is enqueued (never run here), which skips it.
    "job_bulk": {"action": "cancel", "filter": {"task": "ops.ping"}},
}
USERS = ("other", "owner", "staff", "operator", "viewer", "superuser")
CREATED = {"anonymous": 401} | dict.fromkeys(USERS, 202)
LISTED = {"anonymous": 401} | dict.fromkeys(USERS, 200)
# ops.ping is for operators (and superusers); reports for those who may add reports.
OPERATORS_ONLY = {**CREATED, "other": 403, "owner": 403, "staff": 403, "viewer": 403}
REPORTERS_ONLY = {**CREATED, "other": 403, "owner": 403, "staff": 403, "operator": 403, "viewer": 403}
OWN_OBJECT = {
    "anonymous": 401,
    "other": 404,
    "owner": 200,
    "staff": 404,
    "operator": 404,
    "viewer": 200,
    "superuser": 200,
}
# A succeeded job cannot be retried or cancelled, a confirmed order cannot be cancelled: 409 shows
# the caller got past the access check to the service. A viewer sees it but may not change it.
OWN_ACTION = {**OWN_OBJECT, "owner": 409, "viewer": 403, "superuser": 409}
# Pausing and resuming hold everyone's jobs: staff with tasks.add_pause / tasks.delete_pause, which
# of these roles only the superuser has.
FLOW_CONTROL = {"anonymous": 401} | dict.fromkeys(USERS, 403) | {"superuser": 200}

# Editing a job's payload, and deciding another's edit, need the permission to change jobs even
# for the job's owner; the succeeded job, and the edit already approved, answer 409.
OWN_EDIT = {**OWN_ACTION, "owner": 403}

#: url_name -> the status each role gets
API_EXPECTED = {
    "job_create": OPERATORS_ONLY,
    "job_create_batch": OPERATORS_ONLY,
    "job_list": LISTED,
    "job_get": OWN_OBJECT,
    "job_retry": OWN_ACTION,
    "job_cancel": OWN_ACTION,
    "job_edit": OWN_EDIT,
    "job_edit_approve": OWN_EDIT,
    "job_edit_reject": OWN_EDIT,
    # Everyone's jobs at once: staff with the permission to change jobs.
    "job_bulk": {"anonymous": 401} | dict.fromkeys(USERS, 403) | {"superuser": 202},
    "queue_list": LISTED,
    "queue_pause": FLOW_CONTROL,
    "queue_resume": FLOW_CONTROL,
    "task_pause": FLOW_CONTROL,
    "task_resume": FLOW_CONTROL,
    "pause_list": LISTED,
    # Everyone's figures: staff who may view every job.
    "metric_history": {"anonymous": 401} | dict.fromkeys(USERS, 403) | {"viewer": 200, "superuser": 200},
    "order_create": CREATED,
    "order_list": LISTED,
    "order_get": OWN_OBJECT,
    "order_cancel": OWN_ACTION,
    "report_create": REPORTERS_ONLY,
    "report_list": LISTED,
    "report_get": OWN_OBJECT,
}
#: list endpoint -> the path parameter of the owner's item it lists
LISTS = {"job_list": "job", "order_list": "order", "report_list": "report"}


def api_operations() -> list[tuple[str, str, str]]:
    """(method, path template, url_name) of every operation registered on the API."""
    found = []
    for prefix, router in api._routers:
        for path, path_view in router.path_operations.items():
            for operation in path_view.operations:
                for method in operation.methods:
                    found.append((method, f"/api{prefix}{path}", operation.url_name))
    return found


def test_every_api_endpoint_has_expected_outcomes():
    operations = {url_name for _, _, url_name in api_operations()}
    assert operations == set(API_EXPECTED), (
        f"endpoints without an access expectation: {sorted(operations - set(API_EXPECTED))}; "
        f"expected but gone: {sorted(set(API_EXPECTED) - operations)}"
    )


#: the queue or task a flow endpoint's path names
FLOW_NAMES = {"queues": "critical", "tasks": "ops.ping"}


def _fill(template: str, things: dict) -> str:
    path = re.sub(r"\{(\w+)_id\}", lambda m: str(things[m[1]].pk), template)
    return re.sub(r"/(queues|tasks)/\{name\}/", lambda m: f"/{m[1]}/{FLOW_NAMES[m[1]]}/", path)


@pytest.mark.parametrize(("method", "template", "url_name"), api_operations(), ids=lambda v: str(v))
def test_api_access_matrix(method, template, url_name, people, things):
    path = _fill(template, things)
    for role in ROLES:
        for credentials in ("bearer", "session"):
            # The test client skips the CSRF check of a session post (tested on its own below).
            client, headers = client_as(role, people, credentials)
            if method == "GET":
                response = client.get(path, **headers)
            else:
                response = client.post(path, BODIES.get(url_name, {}), content_type="application/json", **headers)

            expected = API_EXPECTED[url_name][role]
            assert response.status_code == expected, (
                f"{role} ({credentials}) {method} {path}: {response.status_code} {response.content[:300]!r}"
            )
            assert response["Content-Type"].startswith("application/json")
            if expected in (401, 404):
                code = {401: "unauthenticated", 404: "not_found"}[expected]
                assert response.json()["code"] == code
            if expected == 403:
                assert response.json()["code"] in ("task_not_allowed", "permission_required")
                assert str(things["job"].pk) not in response.content.decode()
            if url_name in LISTS and expected == 200:
                listed = {item["id"] for item in response.json()["items"]}
                own = str(things[LISTS[url_name]].pk)
                assert (own in listed) == (role in SEES_ALL), f"{role} list of {url_name}: {listed}"
            if url_name == "queue_list" and expected == 200:
                scope = response.json()["ledger_scope"]
                assert scope == ("all" if role in ("viewer", "superuser") else "own")


def test_a_session_post_without_the_csrf_token_is_refused(people):
    client = Client(enforce_csrf_checks=True)
    client.force_login(people["owner"])

    response = client.post("/api/jobs", {"task": "ops.ping"}, content_type="application/json")

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"
    assert not Job.objects.filter(owner=people["owner"]).exists()


def test_openapi_schema_and_docs_are_for_anyone_the_api_authenticates(people):
    """A token holder can generate a client from the schema; anonymous gets 401 (the docs page sends
    a browser to sign in), and the docs' Swagger UI comes from the platform's own static files."""
    for role in ROLES:
        for credentials in ("bearer", "session"):
            client, headers = client_as(role, people, credentials)
            schema = client.get("/api/openapi.json", **headers)
            docs = client.get("/api/docs", **headers)
            if role == "anonymous":
                assert (schema.status_code, schema.json()["code"]) == (401, "unauthenticated")
                assert docs.status_code == 302
                assert docs["Location"] == f"{reverse('login')}?next=/api/docs"
                continue
            assert schema.status_code == 200, (role, credentials, schema.content[:200])
            assert "/api/orders" in schema.json()["paths"]
            assert docs.status_code == 200, (role, credentials)
            page = docs.content.decode()
            assert "/static/ninja/swagger-ui-bundle.js" in page and "/static/ninja/swagger-ui.css" in page
            assert not re.search(r"""(src|href)=["'](https?:)?//""", page), page  # nothing from another host
    bad_token = Client().get("/api/openapi.json", HTTP_AUTHORIZATION="Bearer not-a-token")
    assert (bad_token.status_code, bad_token.json()["code"]) == (401, "unauthenticated")
    owner, headers = client_as("owner", people, "bearer")
    assert owner.post("/api/openapi.json", **headers).status_code == 405  # reads only


# --- the event stream, pages and the report download -----------------------------------------


# Async views: their database connection is not the test's transaction.
@pytest.mark.django_db(transaction=True)
def test_the_event_stream_is_for_the_owner_and_staff(people, things):
    path = f"/api/jobs/{things['job'].pk}/events"
    expected = OWN_OBJECT
    for role in ROLES:
        for credentials in ("bearer", "session"):
            client, headers = client_as(role, people, credentials)
            response = client.get(path, **headers)
            assert response.status_code == expected[role], (role, credentials, response.status_code)
            if expected[role] == 200:
                assert response["Content-Type"].startswith("text/event-stream")
            else:
                assert response.json()["code"] == {401: "unauthenticated", 404: "not_found"}[expected[role]]
            response.close()  # not read: the job's stream is not opened


@pytest.mark.parametrize(("page", "object_name"), [("job_page", "job"), ("order_page", "order"), ("order_form", None)])
def test_pages_send_anonymous_to_sign_in_and_hide_other_peoples_objects(page, object_name, people, things):
    path = reverse(page, kwargs={f"{object_name}_id": things[object_name].pk}) if object_name else reverse(page)
    for role in ROLES:
        client, _ = client_as(role, people)
        response = client.get(path)
        if role == "anonymous":
            assert response.status_code == 302
            assert response["Location"].startswith(f"{reverse('login')}?next=")
        elif object_name is None or role in SEES_ALL:
            assert response.status_code == 200, (role, path)
        else:
            assert response.status_code == 404, (role, path)


# Async views: their database connection is not the test's transaction.
@pytest.mark.django_db(transaction=True)
def test_the_report_download_is_for_the_owner_and_staff(people, things):
    path = reverse("report_download", kwargs={"report_id": things["report"].pk})
    expected = OWN_OBJECT
    for role in ROLES:
        for credentials in ("bearer", "session"):
            client, headers = client_as(role, people, credentials)
            response = client.get(path, **headers)
            assert response.status_code == expected[role], (role, credentials)
            if expected[role] == 200:
                assert response["Content-Type"] == "application/pdf"
            else:
                assert response.json()["code"] == {401: "unauthenticated", 404: "not_found"}[expected[role]]
            response.close()


def test_the_web_app_serves_no_metrics(people):
    for role in ("anonymous", "superuser"):
        client, headers = client_as(role, people)
        for path in ("/metrics", "/api/metrics"):
            assert client.get(path, **headers).status_code in (401, 404), (role, path)
    assert Client().get("/metrics").status_code == 404


# --- Django admin ----------------------------------------------------------------------------


def _admin_pages(things: dict, webhook: WebhookEndpoint, schedule: PeriodicTask) -> dict[str, tuple[str, int]]:
    """Admin page -> (path, what a superuser gets). Staff without model permissions get 403 on each."""
    change = {
        "tasks_job": things["job"],
        "tasks_order": things["order"],
        "tasks_report": things["report"],
        "tasks_webhookendpoint": webhook,
        "django_celery_beat_periodictask": schedule,
    }
    # The ledger, orders and reports are written by the platform only: no add page, for anyone.
    addable = {"tasks_webhookendpoint", "django_celery_beat_periodictask"}
    pages = {}
    for model, obj in change.items():
        pages[f"{model} list"] = (reverse(f"admin:{model}_changelist"), 200)
        pages[f"{model} add"] = (reverse(f"admin:{model}_add"), 200 if model in addable else 403)
        pages[f"{model} change"] = (reverse(f"admin:{model}_change", args=[obj.pk]), 200)
    return pages


@pytest.fixture
def schedule() -> PeriodicTask:
    every = IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name="Access ping", task="ops.ping", interval=every, kwargs="{}")


@pytest.fixture
def webhook() -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        name="Access hook", url="https://example.com/hook", event_types=["order.paid"]
    )


def test_admin_needs_staff_and_model_permissions(people, things, webhook, schedule):
    for name, (path, for_superuser) in _admin_pages(things, webhook, schedule).items():
        for role in ROLES:
            client, _ = client_as(role, people)
            response = client.get(path)
            if role in ("anonymous", "other", "owner"):
                assert response.status_code == 302, (name, role)
                assert response["Location"].startswith("/admin/login/"), (name, role)
            elif role in ("staff", "operator"):
                assert response.status_code == 403, (name, role, response.status_code)
            elif role == "viewer":
                viewable = name.split()[0] in ("tasks_job", "tasks_order", "tasks_report")
                expected = 200 if viewable and not name.endswith(" add") else 403
                assert response.status_code == expected, (name, role, response.status_code)
            else:
                assert response.status_code == for_superuser, (name, role, response.status_code)


def _staff_with(*codenames: str):
    user = get_user_model().objects.create_user("beat-staff", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_celery_beat", codename__in=codenames)
    )
    return user


def test_schedules_view_permission_alone_cannot_add_change_or_run(people, schedule):
    client = Client()
    client.force_login(_staff_with("view_periodictask", "view_intervalschedule"))
    change = reverse("admin:django_celery_beat_periodictask_change", args=[schedule.pk])

    assert client.get(reverse("admin:django_celery_beat_periodictask_changelist")).status_code == 200
    assert client.get(reverse("admin:django_celery_beat_periodictask_add")).status_code == 403
    page = client.get(change)
    assert page.status_code == 200
    assert 'name="kwargs"' not in page.content.decode()  # read-only: no form fields
    assert (
        client.post(change, {"name": "Renamed", "task": "ops.fail", "kwargs": '{"mode": "permanent"}'}).status_code
        == 403
    )
    run_now = reverse("admin:django_celery_beat_periodictask_run_now", args=[schedule.pk])
    assert client.post(run_now).status_code == 403
    action = client.post(
        reverse("admin:django_celery_beat_periodictask_changelist"),
        {"action": "run_now", "_selected_action": [schedule.pk]},
    )
    assert action.status_code in (200, 302)
    schedule.refresh_from_db()
    assert (schedule.name, schedule.task) == ("Access ping", "ops.ping")
    assert not Job.objects.exists(), "a view-only user made a schedule run"


def test_schedules_can_be_added_with_the_beat_permissions(schedule):
    client = Client()
    client.force_login(_staff_with("add_periodictask", "view_periodictask", "view_intervalschedule"))
    assert client.get(reverse("admin:django_celery_beat_periodictask_add")).status_code == 200


# --- Flower ----------------------------------------------------------------------------------

#: Flower paths open without credentials, on purpose: the health check (for probes), Flower's own
#: CSS/JS, logout (clears a cookie, shows nothing) and login (404: only for OAuth, unused here)
FLOWER_OPEN = {"/healthcheck", "/static/x", "/logout", "/login"}


def _flower_routes() -> list[tuple[str, list[str]]]:
    """(path, methods) of every Flower handler, Flower's own and the platform's."""
    from flower.urls import handlers

    from tasks.platform.flower.alerts import alert_handlers
    from tasks.platform.flower.edits import edit_handlers
    from tasks.platform.flower.handlers import platform_handlers

    routes = []
    for spec in [*handlers, *platform_handlers(), *alert_handlers(), *edit_handlers()]:
        pattern, handler = (spec.regex.pattern, spec.handler_class) if hasattr(spec, "regex") else spec[:2]
        if pattern == ".*":
            continue  # the catch-all 404
        path = re.sub(r"\(\.[*+]\)", "x", pattern).rstrip("$").replace("/?", "")
        methods = [m for m in ("get", "post") if getattr(handler, m) is not getattr(RequestHandler, m)]
        routes.append((path, methods))
    return routes


def test_flower_wants_its_credentials_on_every_page_and_api_call(process_env, tmp_path):
    process, base = launch_flower(process_env, tmp_path)
    try:
        _check_flower(base)
    finally:
        process.stop()


def _check_flower(base: str) -> None:
    wrong = (FLOWER_AUTH[0], "not-the-password")
    routes = _flower_routes()
    assert len(routes) > 30, routes  # Flower's pages and API, and the platform's
    for path, methods in routes:
        for method in methods:
            url = f"{base}{path}"
            anonymous = requests.request(method, url, timeout=5)
            if path in FLOWER_OPEN:
                assert anonymous.status_code in (200, 404), (method, path, anonymous.status_code)
                continue
            assert anonymous.status_code == 401, (method, path, anonymous.status_code)
            assert requests.request(method, url, auth=wrong, timeout=5).status_code == 401, (method, path)
            if method == "get":  # reads only: a POST with credentials could act
                assert requests.get(url, auth=FLOWER_AUTH, timeout=5).status_code != 401, path
    assert requests.get(f"{base}/metrics", auth=FLOWER_AUTH, timeout=5).status_code == 200


# --- secrets ---------------------------------------------------------------------------------


def test_api_tokens_and_webhook_secrets_are_shown_once_and_never_logged(people, caplog):
    caplog.set_level(logging.DEBUG)
    owner, root = people["owner"], people["superuser"]
    out = StringIO()
    call_command("create_api_token", owner.username, stdout=out)
    token = out.getvalue().strip()
    row = ApiToken.objects.get(digest=token_digest(token))
    assert token not in {row.digest, row.prefix} and len(token) >= 40  # only its hash is stored

    api_client = Client()
    quote = {"task": "orders.quote", "payload": {"items": [{"sku": "ANY", "quantity": 1}]}}
    created = api_client.post("/api/jobs", quote, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert created.status_code == 202
    assert api_client.get("/api/jobs", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    # A refused request is logged (django.request): its log line must not carry the credentials either.
    missing = api_client.get(f"/api/jobs/{NO_JOB}", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert missing.status_code == 404

    admin = Client()
    admin.force_login(root)
    tokens_page = admin.get(reverse("admin:tasks_apitoken_changelist")).content.decode()
    assert row.prefix in tokens_page and token not in tokens_page

    # A webhook endpoint: the generated secret is in the message after adding it, then never again.
    added = admin.post(
        reverse("admin:tasks_webhookendpoint_add"),
        {"name": "Shop hook", "url": "https://example.com/hook", "event_types": ["order.paid"], "secret": ""},
        follow=True,
    )
    assert added.status_code == 200
    hook = WebhookEndpoint.objects.get(name="Shop hook")
    secret = hook.secret
    assert added.content.decode().count(secret) == 1, "the secret is shown once, in the message"
    change = reverse("admin:tasks_webhookendpoint_change", args=[hook.pk])
    for path in (change, reverse("admin:tasks_webhookendpoint_changelist"), reverse("admin:index")):
        html = admin.get(path).content.decode()
        assert secret not in html, path
    assert f"{secret[:4]}…" in admin.get(change).content.decode()

    # Saving the change form keeps the secret: it is not a field there.
    saved = admin.post(change, {"name": "Shop hook", "url": "https://example.com/hook2", "event_types": ["order.paid"]})
    assert saved.status_code == 302
    hook.refresh_from_db()
    assert (hook.url, hook.secret) == ("https://example.com/hook2", secret)

    # Rotating makes a new secret, shown once.
    rotated = admin.post(
        reverse("admin:tasks_webhookendpoint_changelist"),
        {"action": "rotate_secrets", "_selected_action": [hook.pk]},
        follow=True,
    )
    hook.refresh_from_db()
    assert hook.secret != secret
    assert rotated.content.decode().count(hook.secret) == 1
    assert hook.secret not in admin.get(change).content.decode()

    logged = caplog.text
    for value in (token, secret, hook.secret):
        assert value not in logged
    assert caplog.records, "nothing was captured: the check above would prove nothing"


def test_no_logging_call_formats_a_token_or_a_secret():
    """A static guard: no logging call in the app passes a token, secret, password or key value."""
    import tasks

    suspicious = re.compile(r"(logger|logging)\.\w+\([^)]*\b(token|secret|password|api_key)\b[^)]*\)", re.I | re.S)
    root = inspect.getfile(tasks).rsplit("/", 1)[0]
    from pathlib import Path

    offenders = []
    for path in Path(root).rglob("*.py"):
        for match in suspicious.finditer(path.read_text()):
            call = match[0]
            # the word in the message text is fine; a variable holding the value is not
            args = call.split(",", 1)[1] if "," in call else ""
            if re.search(r"\b(token|secret|password|api_key)\b", args, re.I):
                offenders.append(f"{path}: {call[:120]}")
    assert not offenders, offenders
