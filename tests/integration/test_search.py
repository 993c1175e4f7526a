"""Job search and bulk actions (issue #24) through their doors: GET /api/jobs's filters, POST
/api/jobs/bulk, the admin job list's search and its bulk actions; who may use each; the indexes the
PostgreSQL planner picks; and a bulk retry run by a real worker over more jobs than a page or a chunk.
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from tasks.models import Job, JobAction
from tasks.platform.selectors import counts
from tasks.platform.selectors.search import JobSearch, jobs_search_visible
from tasks.platform.services.bulk import BULK_ACTION_TASK, CHUNK_SIZE
from tasks.platform.services.recovery import job_retry
from tests.fixtures import bearer, grant

CHANGELIST = "/admin/tasks/job/"


def failed(count: int, **fields) -> list[Job]:
    """Failed jobs of ops.fail (a retry publishes them to the default queue, which no test worker reads)."""
    values = {"task_name": "ops.fail", "queue": "default", "state": Job.State.FAILED, "error": "TransientOpsError: x"}
    return Job.objects.bulk_create(
        [Job(**{**values, "payload": {"mode": "transient", "note": f"n{i}"}, **fields}) for i in range(count)]
    )


@pytest.fixture
def roles(broker) -> dict:
    """anonymous, a plain user, staff without a permission, staff who may view jobs, staff who may
    change them; ``broker`` empties the rate-limit buckets."""
    User = get_user_model()
    return {
        "anonymous": None,
        "user": User.objects.create_user("plain"),
        "staff": User.objects.create_user("staff", is_staff=True),
        "viewer": grant(User.objects.create_user("viewer", is_staff=True), "view_job"),
        "changer": grant(User.objects.create_user("changer", is_staff=True), "view_job", "change_job"),
    }


def signed_in(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


# --- the API's job list ------------------------------------------------------------------------


@pytest.mark.django_db
class TestJobListFilters:
    def test_filters_narrow_the_list_within_what_the_caller_may_see(self, roles):
        plain, viewer = roles["user"], roles["viewer"]
        own = Job.objects.create(task_name="ops.ping", queue="default", owner=plain, payload={"order_id": 42})
        other = Job.objects.create(task_name="ops.ping", queue="default", owner=viewer, payload={"order_id": 42})
        Job.objects.create(task_name="ops.ping", queue="default", owner=plain, payload={"order_id": 43})
        dead = Job.objects.create(
            task_name="ops.fail", queue="bulk", owner=plain, state=Job.State.DEAD, error="Card REFUSED by bank"
        )
        query = {"payload": json.dumps({"order_id": 42})}

        def ids(user, **params) -> set[str]:
            response = signed_in(user).get("/api/jobs", params)
            assert response.status_code == 200, response.content
            return {item["id"] for item in response.json()["items"]}

        assert ids(plain, **query) == {str(own.pk)}
        assert ids(viewer, **query) == {str(own.pk), str(other.pk)}
        assert ids(plain, owner="viewer") == set()  # another's jobs stay out of a plain user's search
        assert ids(viewer, owner="viewer") == {str(other.pk)}
        assert ids(plain, error="refused", state="dead", queue="bulk", task="ops.fail") == {str(dead.pk)}
        assert ids(plain, error="refused", state="failed") == set()
        future = (timezone.now() + timedelta(hours=1)).isoformat()
        assert ids(plain, created_before=future, payload='{"order_id": 43}') == {
            str(Job.objects.get(payload__order_id=43).pk)
        }

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"payload": "[1]"}, "payload"),
            ({"payload": "{order_id: 42}"}, "payload"),
            ({"payload": '{"ids": [1]}'}, "payload"),
            ({"error": "ab"}, "error"),
            ({"state": "asleep"}, "state"),
            ({"owner": "x\x00"}, "owner"),
            ({"finished_before": "soon"}, "finished_before"),
        ],
    )
    def test_a_bad_filter_answers_422_naming_it(self, roles, params, field):
        response = Client().get("/api/jobs", params, **bearer(roles["user"]))

        assert response.status_code == 422
        body = response.json()
        assert body["code"] == "invalid_request"
        assert [error["field"] for error in body["errors"]] == [field]


# --- POST /api/jobs/bulk -------------------------------------------------------------------------


@pytest.mark.django_db
class TestBulkEndpoint:
    BODY = {"action": "retry", "filter": {"state": "failed", "error": "TransientOps"}}

    def test_only_staff_who_may_change_jobs_may_act_in_bulk(self, roles):
        failed(3)
        expected = {"anonymous": 401, "user": 403, "staff": 403, "viewer": 403, "changer": 202}

        for role, status in expected.items():
            for client, headers in (
                (signed_in(roles[role]), {}),
                (Client(), bearer(roles[role]) if roles[role] else {}),
            ):
                response = client.post("/api/jobs/bulk", self.BODY, content_type="application/json", **headers)
                assert response.status_code == status, (role, response.content)

        bulk_jobs = Job.objects.filter(task_name=BULK_ACTION_TASK)
        assert bulk_jobs.count() == 2  # the changer's, by session and by token
        bulk = bulk_jobs.first()
        assert (bulk.owner, bulk.queue) == (roles["changer"], "bulk")
        assert bulk.payload["action"] == "retry"
        assert JobSearch(**bulk.payload["filter"]) == JobSearch(state="failed", error="TransientOps")
        # Its progress reads like any job's, for whoever asked.
        page = signed_in(roles["changer"]).get(f"/api/jobs/{bulk.pk}")
        assert (page.status_code, page.json()["progress"]) == (200, 0)

    @pytest.mark.parametrize(
        ("body", "code", "field"),
        [
            ({"action": "delete", "filter": {}}, "invalid_request", "action"),
            ({"action": "retry", "filter": {"payload": "x"}}, "invalid_request", "filter.payload"),
            ({"action": "retry", "filter": {"payload": [1]}}, "invalid_request", "filter.payload"),
            ({"action": "retry", "filter": {"colour": "red"}}, "invalid_request", "filter.colour"),
            ({"action": "retry"}, "invalid_request", "filter"),
            ({"action": "retry", "filter": {"state": "dead"}}, "no_match", None),
        ],
    )
    def test_bad_input_is_refused_before_anything_is_enqueued(self, roles, body, code, field):
        failed(1)
        response = signed_in(roles["changer"]).post("/api/jobs/bulk", body, content_type="application/json")

        assert response.status_code == (409 if code == "no_match" else 422), response.content
        assert response.json()["code"] == code
        if field:
            assert field in [error["field"] for error in response.json()["errors"]]
        assert not Job.objects.filter(task_name=BULK_ACTION_TASK).exists()

    def test_a_filter_matching_more_than_the_cap_is_refused(self, roles, settings):
        settings.JOB_BULK_MAX_JOBS = 4
        failed(5)
        client = signed_in(roles["changer"])

        refused = client.post("/api/jobs/bulk", self.BODY, content_type="application/json")
        settings.JOB_BULK_MAX_JOBS = 5
        accepted = client.post("/api/jobs/bulk", self.BODY, content_type="application/json")

        assert (refused.status_code, refused.json()["code"]) == (409, "too_many_jobs")
        assert "more than 4 jobs" in refused.json()["detail"]
        assert accepted.status_code == 202


# --- the admin job list --------------------------------------------------------------------------


def admin_action(client: Client, action: str, query: str, selected: list, *, follow: bool = False, **fields):
    """Post an action from the job list filtered by ``query``, ``selected`` ticked."""
    data = {"action": action, "index": "0", "_selected_action": selected, **fields}
    return client.post(f"{CHANGELIST}?{query}", data, follow=follow)


@pytest.mark.django_db
class TestAdminSearchAndBulk:
    def test_the_search_box_finds_payloads_ids_and_errors_and_says_what_is_wrong(self, roles):
        client = signed_in(roles["viewer"])
        wanted = Job.objects.create(task_name="ops.ping", queue="default", payload={"order_id": 42}, error="Boom")
        unwanted = Job.objects.create(task_name="ops.ping", queue="default", payload={"order_id": 7}, error="Kaboom!")

        def listed(**params) -> str:
            response = client.get(CHANGELIST, params)
            assert response.status_code == 200
            return response.content.decode()

        page = listed(q='{"order_id": 42}')
        assert str(wanted.pk) in page and str(unwanted.pk) not in page
        page = listed(q=str(unwanted.pk))
        assert str(unwanted.pk) in page and str(wanted.pk) not in page
        page = listed(q="kaboom")
        assert str(unwanted.pk) in page and str(wanted.pk) not in page
        page = listed(q="[1, 2]")  # not an object: searched as error text, matches nothing
        assert str(wanted.pk) not in page
        page = listed(q='{"order_id": [42]}')
        assert "Search: payload" in page and "only strings, numbers and objects" in page
        assert str(wanted.pk) not in page
        page = listed(state="succeeded", queue="default", task="ops.ping", created="24h")
        assert str(wanted.pk) not in page  # pending
        page = listed(state="pending", created="24h", task="ops.ping")
        assert str(wanted.pk) in page and str(unwanted.pk) in page

    def test_only_staff_who_may_change_jobs_get_the_bulk_actions(self, roles):
        job = failed(1)[0]
        for role in ("anonymous", "user"):
            response = admin_action(signed_in(roles[role]), "retry_all_matching", "state=failed", [job.pk])
            assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), role
        staff = admin_action(signed_in(roles["staff"]), "retry_all_matching", "state=failed", [job.pk])
        assert staff.status_code == 403
        viewer = signed_in(roles["viewer"])
        offered = viewer.get(CHANGELIST).content.decode()
        assert "retry_all_matching" not in offered
        # Offered no action, a viewer's post of one only shows the list again.
        refused = admin_action(viewer, "retry_all_matching", "state=failed", [job.pk], bulk_confirmed="yes")
        assert refused.status_code == 200
        assert "retry_all_matching" in signed_in(roles["changer"]).get(CHANGELIST).content.decode()
        assert not Job.objects.filter(task_name=BULK_ACTION_TASK).exists()

    def test_a_bulk_action_names_the_count_of_the_whole_filter_then_enqueues_the_bulk_job(self, roles):
        jobs = failed(7, payload={"mode": "transient", "note": "wave-1"})
        failed(2)  # other payloads: outside the filter
        client = signed_in(roles["changer"])
        query = "state=failed&q=" + json.dumps({"note": "wave-1"})

        # One ticked row; the question is about all seven the filter matches.
        question = admin_action(client, "cancel_all_matching", query, [jobs[0].pk])

        assert question.status_code == 200
        page = question.content.decode()
        assert "<strong>7</strong> job(s)" in page
        assert "wave-1" in page
        assert not Job.objects.filter(task_name=BULK_ACTION_TASK).exists()

        bulk_filter = question.context["bulk_filter"]
        confirmed = admin_action(
            client,
            "cancel_all_matching",
            query,
            [jobs[0].pk],
            follow=True,
            bulk_confirmed="yes",
            bulk_filter=bulk_filter,
        )

        bulk = Job.objects.get(task_name=BULK_ACTION_TASK)
        assert (bulk.owner, bulk.origin, bulk.payload["action"]) == (roles["changer"], "admin", "cancel")
        assert JobSearch(**bulk.payload["filter"]) == JobSearch(state="failed", payload={"note": "wave-1"})
        assert "Bulk cancel started as job" in confirmed.content.decode()
        assert reverse("admin:tasks_job_change", args=[bulk.pk]) in confirmed.content.decode()
        assert set(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("state", flat=True)) == {"failed"}

    def test_a_bulk_action_on_a_filter_matching_nothing_or_too_much_starts_nothing(self, roles, settings):
        job = failed(3)[0]
        client = signed_in(roles["changer"])

        nothing = admin_action(client, "retry_all_matching", "state=dead", [job.pk], follow=True)
        settings.JOB_BULK_MAX_JOBS = 2
        too_many = admin_action(client, "retry_all_matching", "state=failed", [job.pk], follow=True)

        assert "Not started: it matches no job." in nothing.content.decode()
        assert "Not started: it matches more than 2 jobs" in too_many.content.decode()
        assert not Job.objects.filter(task_name=BULK_ACTION_TASK).exists()


# --- the admin's count ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_job_list_counts_up_to_its_cap_and_says_more_than(roles, monkeypatch):
    """Django's changelist counted every job twice a page (the filtered list and "N total"): over a
    second at 10M rows. It counts up to COUNT_CAP, once, and says "more than" past it."""
    monkeypatch.setattr(counts, "COUNT_CAP", 3)
    client = signed_in(roles["viewer"])
    failed(2)
    with CaptureQueriesContext(connection) as queries:
        within = client.get(CHANGELIST)
    # Read now: each request of the test client clears the connection's log.
    counting = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper() and "tasks_job" in q["sql"]]
    failed(2)
    past = client.get(CHANGELIST)
    narrowed = client.get(CHANGELIST, {"state": "failed", "task": "ops.fail"})

    assert within.status_code == past.status_code == narrowed.status_code == 200
    assert "2 jobs" in within.text and "more than" not in within.text
    assert "more than 3 jobs" in past.text and "more than 3 jobs" in narrowed.text
    assert past.context["cl"].result_list.count() == 4  # every job still listed
    assert len(counting) == 1 and "LIMIT" in counting[0].upper(), counting


# --- the PostgreSQL planner ----------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.skipif(connection.vendor != "postgresql", reason="the search's indexes are PostgreSQL's")
def test_the_planner_serves_payload_and_error_searches_from_their_gin_indexes(roles):
    """Enough rows that a scan is the planner's worse choice; the first page, as the API reads it."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO tasks_job (id, task_name, queue, priority, payload, state, attempts, attempts_before_retry,
                held_reason, flow_key, share_key, progress, progress_message, error, traceback, worker, origin,
                waiting_for, created_at)
            SELECT gen_random_uuid(), 'ops.fail', 'default', 5,
                jsonb_build_object('order_id', n, 'mode', 'transient'), 'failed', 1, 0, '', '', '', 0, '',
                'TransientOpsError: gateway ' || md5(n::text), '', '', '', 0, now() - n * interval '1 second'
            FROM generate_series(1, 30000) AS n
            """
        )
        # What autovacuum does after a load: the GIN indexes' pending lists merged (fast update), so
        # the planner costs them as they will be, and statistics of the new rows.
        cursor.execute(
            "SELECT gin_clean_pending_list('job_payload_contains'), gin_clean_pending_list('job_error_trigram')"
        )
        cursor.execute("ANALYZE tasks_job")
    viewer = roles["viewer"]

    by_payload = jobs_search_visible(user=viewer, search=JobSearch(payload={"order_id": 4242}))[:50]
    by_error = jobs_search_visible(user=viewer, search=JobSearch(error="ab12cd"))[:50]

    assert "job_payload_contains" in by_payload.explain()
    assert "job_error_trigram" in by_error.explain()
    assert [job.payload["order_id"] for job in by_payload] == [4242]


# --- a bulk job run by a real worker -------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_bulk_retry_runs_as_a_job_and_retries_every_matching_job_once(roles, start_worker, wait_for_job):
    """More matching jobs than a page of the list or a chunk of the walk; each retried through the
    engine with its JobAction; a second run of the bulk job changes nothing, not even the jobs that
    failed again since (10 here), which this action already retried."""
    changer = roles["changer"]
    matching = failed(CHUNK_SIZE + 37, payload={"mode": "transient", "note": "bulk-me"})
    outside = failed(5) + failed(3, state=Job.State.SUCCEEDED, payload={"mode": "transient", "note": "bulk-me"})
    start_worker("bulk")

    response = Client().post(
        "/api/jobs/bulk",
        {"action": "retry", "filter": {"payload": {"note": "bulk-me"}}},
        content_type="application/json",
        **bearer(changer),
    )

    assert response.status_code == 202, response.content
    bulk = wait_for_job(response.json()["id"], Job.State.SUCCEEDED, Job.State.DEAD, Job.State.FAILED, timeout=90)
    assert bulk.state == Job.State.SUCCEEDED, bulk.error
    total = len(matching) + 3
    assert bulk.result == {"action": "retry", "matched": total, "applied": len(matching), "skipped": 3}
    assert (bulk.progress, bulk.progress_message) == (100, f"retry: {len(matching)} changed, 3 skipped of {total}")
    retried = Job.objects.filter(pk__in=[job.pk for job in matching])
    assert set(retried.values_list("state", flat=True)) == {Job.State.QUEUED}
    actions = JobAction.objects.filter(job__in=matching)
    assert actions.count() == len(matching)
    assert set(actions.values_list("kind", "by", "via")) == {(JobAction.Kind.RETRIED, changer.pk, "bulk")}
    assert not JobAction.objects.filter(job__in=outside).exists()

    # The same bulk job runs again, as after a failure midway: every job is already retried, and
    # those that failed again since were retried by this very action, so nothing changes.
    Job.objects.filter(pk__in=[job.pk for job in matching[:10]]).update(state=Job.State.FAILED)
    Job.objects.filter(pk=bulk.pk).update(state=Job.State.FAILED)
    job_retry(job_id=bulk.pk, by=changer, via="api")  # queued again before it returns
    again = wait_for_job(bulk.pk, Job.State.SUCCEEDED, timeout=90)
    assert again.attempts == 2
    assert again.result == {"action": "retry", "matched": total, "applied": 0, "skipped": total}
    assert JobAction.objects.filter(job__in=matching).count() == len(matching)
