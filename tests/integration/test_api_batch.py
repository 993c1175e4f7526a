"""POST /api/jobs/batch: up to 1000 jobs, all or nothing, against real Redis and a real worker."""

from uuid import UUID

import pytest
import requests
from django.conf import settings

from tasks.models import ApiToken, Job, JobOutbox
from tasks.platform.queues import QueueName
from tests.fixtures import bearer, create_operator, message_keys
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)


def post_batch(client, auth, jobs):
    return client.post("/api/jobs/batch", {"jobs": jobs}, content_type="application/json", **auth)


def test_a_batch_of_1000_is_enqueued_in_request_order_and_consumed(
    client, auth, user, broker, start_worker, wait_for_job
):
    start_worker(QueueName.CRITICAL)
    items = [
        {"task": "ops.ping", "queue": "critical" if i % 200 == 0 else "bulk", "idempotency_key": f"item-{i}"}
        for i in range(1000)
    ]

    response = post_batch(client, auth, items)

    assert response.status_code == 202
    answered = response.json()["jobs"]
    assert len(answered) == 1000
    keys = dict(Job.objects.filter(owner=user).values_list("id", "idempotency_key"))
    assert len(keys) == 1000
    assert [keys[UUID(job["id"])] for job in answered] == [f"item-{i}" for i in range(1000)]  # request order
    assert all(job["url"] == f"/api/jobs/{job['id']}" for job in answered)
    # bulk takes turns between owners: the user's share waits in Redis (no bulk worker), the rest
    # in the ledger, held, in request order
    assert broker.llen("bulk:5") == settings.FAIR_SHARE_DEPTH
    bulk = Job.objects.filter(queue="bulk")
    assert bulk.filter(state=Job.State.QUEUED).count() == settings.FAIR_SHARE_DEPTH
    assert bulk.filter(state=Job.State.HELD, held_reason="fair_share").count() == 995 - settings.FAIR_SHARE_DEPTH
    first = [UUID(job["id"]) for i, job in enumerate(answered) if i % 200][: settings.FAIR_SHARE_DEPTH]
    assert set(bulk.filter(state=Job.State.QUEUED).values_list("pk", flat=True)) == set(first)
    for i in range(0, 1000, 200):  # the critical worker runs its five
        wait_for_job(answered[i]["id"], Job.State.SUCCEEDED)
    assert Job.objects.filter(origin="api", owner=user).count() == 1000


def test_a_batch_of_1001_answers_422_naming_the_limit(client, auth, broker):
    response = post_batch(client, auth, [{"task": "ops.ping"}] * 1001)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    assert "1000" in response.content.decode()
    assert not Job.objects.exists()
    assert message_keys(broker) == []


@pytest.mark.parametrize("body", [{"jobs": []}, {}, {"jobs": {"task": "ops.ping"}}])
def test_an_empty_or_shapeless_batch_answers_422(client, auth, broker, body):
    response = client.post("/api/jobs/batch", body, content_type="application/json", **auth)

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_request"
    assert "jobs" in response.content.decode()
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("bad", "code", "named"),
    [
        ({"task": "no.such.task"}, "unknown_task", "ops.ping"),
        ({"task": "ops.ping", "payload": {"hold_seconds": -1}}, "invalid_payload", "hold_seconds"),
        ({"task": "ops.ping", "queue": "urgent"}, "invalid_request", "queue"),
        ({"task": "ops.ping", "priority": 10}, "invalid_request", "priority"),
        ({"task": "ops.ping", "delay_seconds": -5}, "invalid_request", "delay_seconds"),
        ({"task": 42}, "unknown_task", "ops.ping"),
        ({"queue": "bulk"}, "invalid_request", "task"),
        (["ops.ping"], "invalid_request", "must be a JSON object"),
    ],
)
def test_one_bad_item_answers_422_with_its_index_and_enqueues_nothing(client, auth, broker, bad, code, named):
    items = [{"task": "ops.ping", "queue": queue} for queue in QueueName.values] * 2
    items.insert(3, bad)

    response = post_batch(client, auth, items)

    assert response.status_code == 422
    body = response.json()
    assert (body["code"], body["index"]) == (code, 3)
    assert named in response.content.decode()
    assert not Job.objects.exists()
    assert message_keys(broker) == []


def test_delayed_items_are_scheduled_and_repeated_keys_answer_the_first_job(client, auth, broker):
    earlier = client.post(
        "/api/jobs", {"task": "ops.ping", "idempotency_key": "a"}, content_type="application/json", **auth
    ).json()

    response = post_batch(
        client,
        auth,
        [
            {"task": "ops.ping", "idempotency_key": "a"},
            {"task": "ops.ping", "delay_seconds": 120, "priority": 0},
            {"task": "ops.ping", "idempotency_key": "b", "priority": 9},
            {"task": "ops.ping", "idempotency_key": "b"},
        ],
    )

    assert response.status_code == 202
    jobs = response.json()["jobs"]
    assert jobs[0]["id"] == earlier["id"]
    assert jobs[1]["state"] == "scheduled"
    assert jobs[2]["id"] == jobs[3]["id"]
    assert Job.objects.count() == 3
    assert broker.llen("default:5") == 1  # the earlier job, published once
    assert broker.llen("default:9") == 1  # "b", once
    assert broker.llen("default") == 0  # the delayed job waits in the ledger


def test_keys_are_each_owners_own(client, auth, user, broker):
    other = create_operator("other", password="unused-pass-123")
    theirs = post_batch(client, bearer(other), [{"task": "ops.ping", "idempotency_key": "shared"}]).json()

    response = post_batch(
        client, auth, [{"task": "ops.ping"}, {"task": "ops.ping", "idempotency_key": "shared"}, {"task": "ops.ping"}]
    )

    assert response.status_code == 202
    mine = response.json()["jobs"][1]["id"]
    assert mine != theirs["jobs"][0]["id"]
    assert Job.objects.get(pk=mine).owner == user
    assert Job.objects.count() == 4
    assert broker.llen("default:5") == 4


def test_redis_down_answers_503_with_the_jobs_kept_pending(start_web):
    _, token = ApiToken.issue(create_operator("dev", password="unused-pass-123"))
    _, base = start_web({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})  # nothing listens there

    response = requests.post(
        f"{base}/api/jobs/batch",
        json={"jobs": [{"task": "ops.ping"}, {"task": "ops.ping", "queue": "bulk"}, {"task": "ops.ping"}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )

    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "broker_unavailable"
    assert [job["state"] for job in body["jobs"]] == ["pending"] * 3
    assert set(Job.objects.values_list("state", flat=True)) == {Job.State.PENDING}
    assert sorted(str(pk) for pk in Job.objects.values_list("pk", flat=True)) == sorted(j["id"] for j in body["jobs"])
    # The failed publish freed its claim: the relay takes the rows at once.
    assert set(JobOutbox.objects.values_list("claimed_at", flat=True)) == {None}
    assert JobOutbox.objects.count() == 3
