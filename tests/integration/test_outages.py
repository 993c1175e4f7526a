"""What the web process answers when Redis or the database is down."""

import pytest
import requests

from tasks.models import ApiToken, Job, JobOutbox
from tests.fixtures import create_operator
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def test_redis_down_while_enqueueing_answers_503_and_keeps_the_job_pending(start_web):
    _, token = ApiToken.issue(create_operator("dev", password="unused-pass-123"))
    _, base = start_web({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})  # nothing listens there

    response = requests.post(
        f"{base}/api/jobs", json={"task": "ops.ping"}, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )

    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["code"] == "broker_unavailable"
    assert body["state"] == "pending"
    job = Job.objects.get(pk=body["id"])
    assert job.state == Job.State.PENDING
    assert job.payload == {"hold_seconds": 0, "ignore_soft_limit": False}  # stored with its defaults
    # The failed publish freed its claim: the relay takes it at once.
    assert list(JobOutbox.objects.filter(job=job).values_list("claimed_at", flat=True)) == [None]

    ready = requests.get(f"{base}/readyz", timeout=10)
    assert ready.status_code == 503
    assert list(ready.json()["down"]) == ["redis"]


def test_database_down_makes_readyz_503_naming_the_database(start_web):
    _, base = start_web({"DATABASE_URL": f"postgres://nobody@127.0.0.1:{free_port()}/absent"})

    ready = requests.get(f"{base}/readyz", timeout=10)

    assert ready.status_code == 503
    assert list(ready.json()["down"]) == ["database"]


def test_database_down_while_enqueueing_answers_503_json_to_ask_again(start_web):
    _, base = start_web({"DATABASE_URL": f"postgres://nobody@127.0.0.1:{free_port()}/absent"})

    response = requests.post(
        f"{base}/api/jobs", json={"task": "ops.ping"}, headers={"Authorization": "Bearer any-token"}, timeout=30
    )

    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/json; charset=utf-8"
    assert response.headers["Retry-After"] == "5"
    assert response.json()["code"] == "database_unavailable"
