"""The API's limits: request body size on every POST, batch size, the per-user enqueue rate (429
with Retry-After, shared by every web process through Redis) and the size of a job's payload."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import threading

import pytest
import requests
from django.conf import settings as django_settings
from django.test import Client

from tasks.api import api
from tasks.models import Job, Order, Product, Report
from tasks.platform import ratelimit
from tasks.platform.api.jobs import BATCH_MAX_JOBS
from tasks.platform.services.jobs import PayloadTooLarge, job_enqueue, job_payload_validate
from tests.fixtures import bearer, create_operator, grant
from tests.support.processes import BASE_DIR, BIN_DIR, free_port

# Non-transactional: enqueues never publish (their on-commit never comes), so nothing runs.
pytestmark = pytest.mark.django_db

NO_ID = "00000000-0000-0000-0000-000000000000"
#: a valid body of each POST endpoint (the limiter runs after the body is validated)
BODIES = {
    "job_create": {"task": "ops.ping"},
    "job_create_batch": {"jobs": [{"task": "ops.ping"}]},
    "order_create": {"items": [{"sku": "LIMIT-1", "quantity": 1}], "payment_token": "tok_ok"},
    "report_create": {"date_from": "2024-02-01", "days": 3},
    "job_bulk": {"action": "retry", "filter": {}},
}
#: POST endpoints that enqueue, so count towards the caller's rate and active-job cap
ENQUEUEING = {"job_bulk", "job_create", "job_create_batch", "job_retry", "order_create", "report_create"}
#: staff-only POST endpoints that run a job again: admitted like job_retry, after their editor check
STAFF_ENQUEUEING = {"job_edit", "job_edit_approve"}
#: POST endpoints that enqueue nothing, so are not rate limited (a resume sends jobs already counted)
NOT_ENQUEUEING = {
    "job_cancel",
    "job_edit_reject",
    "order_cancel",
    "queue_pause",
    "queue_resume",
    "task_pause",
    "task_resume",
}


def post_operations() -> list[tuple[str, str]]:
    """(path with ids filled in, url_name) of every POST endpoint of the API."""
    found = []
    for prefix, router in api._routers:
        for path, path_view in router.path_operations.items():
            for operation in path_view.operations:
                if "POST" in operation.methods:
                    found.append((re.sub(r"\{\w+\}", NO_ID, f"/api{prefix}{path}"), operation.url_name))
    return found


@pytest.fixture
def customer(broker):
    """An operator with an e-mail (orders need one) who may ask for reports; ``broker`` empties the
    rate-limit buckets."""
    return grant(create_operator("limits", email="limits@example.com"), "add_report")


@pytest.fixture
def headers(customer) -> dict[str, str]:
    return bearer(customer)


def take_one(user) -> ratelimit.Verdict:
    """One job from ``user``'s enqueue bucket, as an API enqueue takes it."""
    return ratelimit.take(bucket=f"enqueue:user:{user.pk}", limit_per_minute=django_settings.API_RATE_LIMIT_PER_MINUTE)


def post(client, path, body, headers):
    return client.post(path, body, content_type="application/json", **headers)


# --- request body and batch size ---------------------------------------------------------------


# Django's own check (the second line): endpoints that read a body. Over HTTP every path is refused
# before Django reads anything (tests/integration/test_body_limit.py).
@pytest.mark.parametrize(
    ("path", "url_name"), [op for op in post_operations() if op[1] in BODIES], ids=lambda v: str(v)
)
def test_a_body_over_the_limit_is_refused_by_every_post_endpoint_that_reads_one(
    path, url_name, client, headers, settings
):
    settings.API_MAX_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    oversized = {**BODIES.get(url_name, {}), "padding": "x" * 4096}

    response = post(client, path, oversized, headers)

    assert response.status_code == 413
    assert response.json()["code"] == "body_too_large"
    assert not Job.objects.exists()
    # Just under the limit it is the endpoint that answers (not 413).
    assert post(client, path, BODIES.get(url_name, {}), headers).status_code != 413


def test_a_batch_over_the_limit_is_refused_whole(client, headers):
    response = post(client, "/api/jobs/batch", {"jobs": [{"task": "ops.ping"}] * (BATCH_MAX_JOBS + 1)}, headers)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    assert not Job.objects.exists()


# --- the enqueue rate -------------------------------------------------------------------------


def test_every_post_endpoint_is_known_to_enqueue_or_not():
    posts = {url_name for _, url_name in post_operations()}
    assert posts == ENQUEUEING | STAFF_ENQUEUEING | NOT_ENQUEUEING, (
        "a POST endpoint is neither limited nor known as harmless"
    )


def test_over_the_limit_answers_429_with_retry_after_and_enqueues_nothing(client, customer, headers, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 3
    for _ in range(3):
        assert post(client, "/api/jobs", {"task": "ops.ping"}, headers).status_code == 202

    refused = post(client, "/api/jobs", {"task": "ops.ping"}, headers)

    assert refused.status_code == 429
    assert refused.json()["code"] == "throttled"
    assert set(refused.json()) == {"detail", "code"}
    # 3 a minute: one job back every 20 s.
    assert 1 <= int(refused["Retry-After"]) <= 20
    assert Job.objects.filter(owner=customer).count() == 3
    # Someone else has a bucket of their own; operators are limited like anyone.
    other = create_operator("other-limits")
    other_headers = bearer(other)
    for _ in range(3):
        assert post(client, "/api/jobs", {"task": "ops.ping"}, other_headers).status_code == 202
    assert post(client, "/api/jobs", {"task": "ops.ping"}, other_headers).status_code == 429


def test_a_batch_counts_each_job(client, customer, headers, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 5
    three = {"jobs": [{"task": "ops.ping"}] * 3}
    assert post(client, "/api/jobs/batch", three, headers).status_code == 202

    assert post(client, "/api/jobs/batch", three, headers).status_code == 429  # 3 more than the 2 left
    assert post(client, "/api/jobs/batch", {"jobs": [{"task": "ops.ping"}] * 2}, headers).status_code == 202
    assert post(client, "/api/jobs", {"task": "ops.ping"}, headers).status_code == 429
    too_big = post(client, "/api/jobs/batch", {"jobs": [{"task": "ops.ping"}] * 6}, headers)
    assert too_big.status_code == 429
    assert "split it" in too_big.json()["detail"]
    assert Job.objects.filter(owner=customer).count() == 5


def test_each_enqueueing_endpoint_refuses_over_the_limit(client, customer, headers, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 1
    Product.objects.create(sku="LIMIT-1", name="Widget", price="2.50", stock=10)
    failed = Job.objects.create(task_name="ops.ping", queue="critical", owner=customer, state=Job.State.FAILED)
    assert take_one(customer).allowed  # the one job of the minute, used up
    paths = {url_name: path for path, url_name in post_operations()}
    paths["job_retry"] = f"/api/jobs/{failed.pk}/retry"

    for url_name in sorted(ENQUEUEING):
        response = post(client, paths[url_name], BODIES.get(url_name, {}), headers)
        assert response.status_code == 429, (url_name, response.status_code, response.content[:200])
        assert response["Retry-After"].isdigit()

    failed.refresh_from_db()
    assert failed.state == Job.State.FAILED  # not retried
    assert Job.objects.count() == 1
    assert not Order.objects.exists()
    assert not Report.objects.exists()


def test_the_limit_is_atomic_under_concurrent_requests(customer, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 10
    verdicts = []
    start = threading.Barrier(25)

    def take() -> None:
        start.wait()
        verdicts.append(take_one(customer).allowed)

    threads = [threading.Thread(target=take) for _ in range(25)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert verdicts.count(True) == 10


def test_zero_turns_the_limit_off(client, customer, headers, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 0
    for _ in range(5):
        assert post(client, "/api/jobs", {"task": "ops.ping"}, headers).status_code == 202


def test_without_redis_requests_are_let_through_with_a_warning(client, customer, headers, settings, caplog):
    settings.API_RATE_LIMIT_PER_MINUTE = 1
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    with caplog.at_level(logging.WARNING, logger="tasks.platform.ratelimit"):
        for _ in range(2):
            assert post(client, "/api/jobs", {"task": "ops.ping"}, headers).status_code == 202

    warnings = [r for r in caplog.records if r.name == "tasks.platform.ratelimit" and r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "let through" in warnings[0].getMessage()


@pytest.mark.django_db(transaction=True)  # the web process must see the user and the token
def test_web_processes_share_the_limit_through_redis(start_web, broker, settings, caplog):
    caplog.set_level(logging.DEBUG)
    customer = create_operator("shared-limit", email="shared@example.com")
    auth = bearer(customer)
    token = auth["HTTP_AUTHORIZATION"].removeprefix("Bearer ")
    web, base = start_web(env={"API_RATE_LIMIT_PER_MINUTE": "3"})
    http_headers = {"Authorization": f"Bearer {token}"}
    for _ in range(2):
        answered = requests.post(f"{base}/api/jobs", json={"task": "ops.ping"}, headers=http_headers, timeout=10)
        assert answered.status_code == 202

    settings.API_RATE_LIMIT_PER_MINUTE = 3
    assert post(Client(), "/api/jobs", {"task": "ops.ping"}, auth).status_code == 202  # this process: the 3rd

    refused = requests.post(f"{base}/api/jobs", json={"task": "ops.ping"}, headers=http_headers, timeout=10)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["code"] == "throttled"
    # The token is never written to a log: not the web process's, not this one's.
    assert token not in web.log()
    assert token not in caplog.text


# --- payload size -------------------------------------------------------------------------------


def test_payload_size_check(settings):
    settings.JOB_MAX_PAYLOAD_BYTES = 1024
    # 960 bytes of UTF-8 plus the other fields: within
    job_payload_validate(task_name="ops.fail", payload={"mode": "permanent", "note": "é" * 480})

    with pytest.raises(PayloadTooLarge) as refused:
        job_payload_validate(task_name="ops.fail", payload={"mode": "permanent", "note": "é" * 600})

    assert refused.value.code == "payload_too_large"
    # Bytes of the payload as compact UTF-8 JSON, as the message carries it.
    stored = {"mode": "permanent", "succeed_on_attempt": None, "note": "é" * 600}
    assert refused.value.size == len(json.dumps(stored, separators=(",", ":"), ensure_ascii=False).encode()) > 1024
    assert refused.value.details["errors"][0]["field"] == "payload"


def test_a_payload_over_the_limit_is_refused_by_the_api_and_the_service(client, customer, headers, settings):
    settings.JOB_MAX_PAYLOAD_BYTES = 2048
    big = {"task": "ops.fail", "payload": {"mode": "permanent", "note": "x" * 4000}}

    response = post(client, "/api/jobs", big, headers)

    assert response.status_code == 422, response.content[:300]
    assert response.json()["code"] == "payload_too_large"
    assert response.json()["errors"][0]["field"] == "payload"
    assert post(client, "/api/jobs/batch", {"jobs": [{"task": "ops.ping"}, big]}, headers).status_code == 422
    with pytest.raises(PayloadTooLarge):
        job_enqueue(task_name="ops.fail", payload=big["payload"], owner=customer)
    assert not Job.objects.exists()
    small = {"task": "ops.fail", "payload": {"mode": "permanent", "note": "x" * 1000}}
    assert post(client, "/api/jobs", small, headers).status_code == 202


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [("API_RATE_LIMIT_PER_MINUTE", "-1"), ("API_RATE_LIMIT_PER_MINUTE", "many"), ("JOB_MAX_PAYLOAD_BYTES", "100")],
)
def test_a_bad_limit_stops_start_up_naming_it(process_env, variable, value):
    env = {**process_env, variable: value}
    done = subprocess.run(
        [str(BIN_DIR / "python"), "-c", "import django; django.setup()"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(f"configuration error: {variable}")


def test_limits_come_from_the_environment(process_env):
    env = {**process_env, "API_RATE_LIMIT_PER_MINUTE": "7", "JOB_MAX_PAYLOAD_BYTES": "4096"}
    code = "import django; django.setup(); from django.conf import settings as s; "
    code += "print(s.API_RATE_LIMIT_PER_MINUTE, s.JOB_MAX_PAYLOAD_BYTES, s.API_MAX_BODY_BYTES)"
    env["API_MAX_BODY_BYTES"] = "5000"
    done = subprocess.run(
        [str(BIN_DIR / "python"), "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.split() == ["7", "4096", "5000"], done.stderr
