"""GET /api/queues and GET /api/jobs: per-queue figures from Redis and the ledger; listing jobs."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from tasks.models import Job
from tasks.platform.selectors import counts
from tasks.platform.selectors.queues import queue_ledger_counts
from tests.fixtures import bearer, create_operator, grant
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)

FIGURES = ("waiting", "scheduled", "active", "retrying", "failed", "dead", "succeeded_24h")


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", password="unused-pass-123")


@pytest.fixture
def bob():
    """An operator: he posts ops.ping jobs to the bulk queue at any priority."""
    return create_operator("bob", password="unused-pass-123")


@pytest.fixture
def staff():
    """Staff whose scope is every job (the permission to view jobs)."""
    return grant(get_user_model().objects.create_user("ops", password="unused-pass-123", is_staff=True), "view_job")


def make_job(owner, queue="default", state=Job.State.QUEUED, task="ops.ping", **fields) -> Job:
    return Job.objects.create(task_name=task, queue=queue, state=state, owner=owner, **fields)


def figures(response) -> dict[str, dict[str, int]]:
    return {row.pop("queue"): row for row in response.json()["queues"]}


# --- /api/queues ---------------------------------------------------------------------------


def test_queue_figures_count_redis_and_the_ledger(client, alice, bob, staff, broker):
    now = timezone.now()
    for owner in (alice, bob):
        make_job(owner, "bulk", Job.State.SCHEDULED, run_at=now + timedelta(hours=1))
        make_job(owner, "bulk", Job.State.STARTED)
        make_job(owner, "critical", Job.State.RETRYING)
        make_job(owner, "critical", Job.State.FAILED)
        make_job(owner, "default", Job.State.DEAD)
        make_job(owner, "default", Job.State.SUCCEEDED, finished_at=now - timedelta(hours=1))
        make_job(owner, "default", Job.State.SUCCEEDED, finished_at=now - timedelta(days=2))  # too old
        make_job(owner, "default", Job.State.CANCELLED)  # counted nowhere
    make_job(alice, "bulk", Job.State.STARTED)
    # Published to queues no worker consumes, at several priorities: lists bulk, bulk:5, bulk:9
    # (an operator each, as bulk takes turns between owners: one job of each goes to Redis at once).
    posters = [bob, *(create_operator(f"poster-{n}", password="unused-pass-123") for n in range(3))]
    for owner, priority in zip(posters, (0, 5, 5, 9), strict=True):
        response = client.post(
            "/api/jobs",
            {"task": "ops.ping", "queue": "bulk", "priority": priority},
            content_type="application/json",
            **bearer(owner),
        )
        assert response.status_code == 202
    assert (broker.llen("bulk"), broker.llen("bulk:5"), broker.llen("bulk:9")) == (1, 2, 1)

    everyone = client.get("/api/queues", **bearer(staff))
    own = client.get("/api/queues", **bearer(alice))

    assert everyone.status_code == own.status_code == 200
    assert everyone.json()["ledger_scope"] == "all"
    assert [row["queue"] for row in everyone.json()["queues"]] == ["critical", "default", "bulk"]
    zero = dict.fromkeys(FIGURES, 0)
    assert figures(everyone) == {
        "critical": {**zero, "retrying": 2, "failed": 2},
        "default": {**zero, "dead": 2, "succeeded_24h": 2},
        "bulk": {**zero, "waiting": 4, "scheduled": 2, "active": 3},
    }
    assert own.json()["ledger_scope"] == "own"
    assert figures(own) == {
        "critical": {**zero, "retrying": 1, "failed": 1},
        "default": {**zero, "dead": 1, "succeeded_24h": 1},
        "bulk": {**zero, "waiting": 4, "scheduled": 1, "active": 2},  # waiting is global: everyone's messages
    }


def test_queue_figures_are_zero_when_nothing_happened(client, alice, broker):
    response = client.get("/api/queues", **bearer(alice))

    assert response.status_code == 200
    assert all(set(row.values()) == {0} for row in figures(response).values())


def test_the_ledger_counts_are_one_query(alice, django_assert_num_queries):
    make_job(alice, "bulk", Job.State.FAILED)
    make_job(alice, "critical", Job.State.DEAD)

    with django_assert_num_queries(1):
        counts = queue_ledger_counts(owner=alice)

    assert (counts["bulk"]["failed"], counts["critical"]["dead"], counts["default"]["failed"]) == (1, 1, 0)


def test_redis_down_answers_503_naming_redis(client, alice, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    response = client.get("/api/queues", **bearer(alice))

    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "redis_unavailable"
    assert "redis" in body["detail"]


# --- /api/jobs (list) ------------------------------------------------------------------------


def test_jobs_are_listed_newest_first_and_paginated(client, alice):
    start = timezone.now() - timedelta(hours=1)
    jobs = [make_job(alice) for _ in range(5)]
    for minutes, job in enumerate(jobs):
        Job.objects.filter(pk=job.pk).update(created_at=start + timedelta(minutes=minutes))
    same_time = [make_job(alice), make_job(alice)]  # a tie on created_at: the id decides, stably
    Job.objects.filter(pk__in=[job.pk for job in same_time]).update(created_at=start + timedelta(minutes=10))
    expected = sorted((str(job.pk) for job in same_time), reverse=True) + [str(job.pk) for job in reversed(jobs)]

    pages = [client.get("/api/jobs", {"page": page, "page_size": 3}, **bearer(alice)).json() for page in (1, 2, 3)]

    assert [(page["count"], page["count_capped"]) for page in pages] == [(7, False)] * 3
    assert [len(page["items"]) for page in pages] == [3, 3, 1]
    assert [item["id"] for page in pages for item in page["items"]] == expected
    whole = client.get("/api/jobs", **bearer(alice)).json()
    assert [item["id"] for item in whole["items"]] == expected
    first = whole["items"][0]
    assert {"task", "state", "queue", "attempts", "progress", "progress_message", "idempotency_key", "run_at"} <= set(
        first
    )


def test_a_list_counts_up_to_its_cap_and_says_when_more_match(client, alice, monkeypatch):
    """Counting every match read the whole ledger on each list request (seconds at 10M rows: the
    ledger_size bench); the count stops at COUNT_CAP, and the answer says when it stopped."""
    monkeypatch.setattr(counts, "COUNT_CAP", 4)
    for _ in range(4):
        make_job(alice)
    at_cap = client.get("/api/jobs", {"page_size": 2}, **bearer(alice)).json()
    make_job(alice)
    past_cap = client.get("/api/jobs", {"page": 3, "page_size": 2}, **bearer(alice)).json()

    assert (at_cap["count"], at_cap["count_capped"], len(at_cap["items"])) == (4, False, 2)
    assert (past_cap["count"], past_cap["count_capped"], len(past_cap["items"])) == (4, True, 1)


def test_jobs_are_filtered_by_state_task_and_queue(client, alice):
    failed_bulk = make_job(alice, "bulk", Job.State.FAILED)
    make_job(alice, "bulk", Job.State.SUCCEEDED)
    failed_default = make_job(alice, "default", Job.State.FAILED, task="reports.build")
    auth = bearer(alice)

    def ids(**query) -> set[str]:
        response = client.get("/api/jobs", query, **auth)
        assert response.status_code == 200
        return {item["id"] for item in response.json()["items"]}

    assert ids(state="failed") == {str(failed_bulk.pk), str(failed_default.pk)}
    assert ids(state="failed", queue="bulk") == {str(failed_bulk.pk)}
    assert ids(task="reports.build") == {str(failed_default.pk)}
    assert ids(task="ops.ping", state="failed", queue="default") == set()
    assert len(ids()) == 3


@pytest.mark.parametrize(("query", "named"), [({"state": "exploded"}, "state"), ({"queue": "urgent"}, "queue")])
def test_an_unknown_state_or_queue_filter_answers_422(client, alice, query, named):
    response = client.get("/api/jobs", query, **bearer(alice))

    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "invalid_request"
    assert [error["field"] for error in body["errors"]] == [named]


def test_users_list_only_their_own_jobs_and_staff_list_all(client, alice, bob, staff):
    mine = make_job(alice)
    theirs = make_job(bob)

    listed = client.get("/api/jobs", **bearer(alice)).json()

    assert [item["id"] for item in listed["items"]] == [str(mine.pk)]
    assert listed["count"] == 1
    assert client.get(f"/api/jobs/{theirs.pk}", **bearer(alice)).status_code == 404
    assert {item["id"] for item in client.get("/api/jobs", **bearer(staff)).json()["items"]} == {
        str(mine.pk),
        str(theirs.pk),
    }
