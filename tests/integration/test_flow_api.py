"""Flow control's doors: the pause and resume endpoints (who may use them, what they answer and
record), a held job's ``blocked`` in the API, and ``manage.py flow``."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from tasks.models import FlowEvent, Job, Pause
from tasks.platform.services.jobs import job_enqueue
from tests.fixtures import bearer, grant

pytestmark = pytest.mark.django_db

#: (scope, a name of that scope that exists)
TARGETS = {"queue": "bulk", "task": "ops.ping"}
#: the four flow endpoints, as (path, action)
ENDPOINTS = [
    (f"/api/{scope}s/{name}/{action}", action) for scope, name in TARGETS.items() for action in ("pause", "resume")
]


def make_user(username: str, *permissions: str, **fields):
    user = get_user_model().objects.create_user(username, password="unused-pass-123", **fields)
    return grant(user, *permissions) if permissions else user


@pytest.fixture
def users():
    """Bearer headers of each kind of caller."""
    return {
        "plain": bearer(make_user("plain")),
        "staff": bearer(make_user("staff", is_staff=True)),
        "pauser": bearer(make_user("pauser", "add_pause", is_staff=True)),
        "resumer": bearer(make_user("resumer", "delete_pause", is_staff=True)),
        "pauser_not_staff": bearer(make_user("pauser_not_staff", "add_pause", "delete_pause")),
        "inactive": bearer(make_user("inactive", "add_pause", "delete_pause", is_staff=True, is_active=False)),
        "superuser": bearer(get_user_model().objects.create_superuser("root", password="unused-pass-123")),
    }


def post(client, path: str, auth: dict | None = None):
    return client.post(path, content_type="application/json", **(auth or {}))


# --- who may ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "action"), ENDPOINTS)
def test_anonymous_answers_401(client, path, action):
    response = post(client, path)

    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    assert not Pause.objects.exists()


@pytest.mark.parametrize(("path", "action"), ENDPOINTS)
@pytest.mark.parametrize("caller", ["plain", "staff", "pauser_not_staff"])
def test_without_the_permission_or_staff_answers_403(client, users, caller, path, action):
    response = post(client, path, users[caller])

    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "permission_required"
    assert ("tasks.add_pause" if action == "pause" else "tasks.delete_pause") in body["detail"]
    assert not Pause.objects.exists()
    assert not FlowEvent.objects.exists()


@pytest.mark.parametrize(("path", "action"), ENDPOINTS)
def test_an_inactive_users_token_answers_401(client, users, path, action):
    assert post(client, path, users["inactive"]).status_code == 401
    assert not Pause.objects.exists()


@pytest.mark.parametrize("scope", TARGETS)
def test_add_pause_may_pause_but_not_resume(client, users, scope):
    name = TARGETS[scope]

    assert post(client, f"/api/{scope}s/{name}/pause", users["pauser"]).status_code == 200
    refused = post(client, f"/api/{scope}s/{name}/resume", users["pauser"])

    assert refused.status_code == 403
    assert refused.json()["code"] == "permission_required"
    assert Pause.objects.filter(scope=scope, name=name).exists()


@pytest.mark.parametrize("scope", TARGETS)
def test_delete_pause_may_resume_but_not_pause(client, users, scope):
    name = TARGETS[scope]

    refused = post(client, f"/api/{scope}s/{name}/pause", users["resumer"])
    assert refused.status_code == 403
    assert refused.json()["code"] == "permission_required"
    assert post(client, f"/api/{scope}s/{name}/resume", users["resumer"]).status_code == 200


@pytest.mark.parametrize("scope", TARGETS)
def test_a_superuser_may_pause_and_resume(client, users, scope):
    name = TARGETS[scope]

    assert post(client, f"/api/{scope}s/{name}/pause", users["superuser"]).status_code == 200
    assert post(client, f"/api/{scope}s/{name}/resume", users["superuser"]).status_code == 200
    assert not Pause.objects.exists()


# --- what they answer and record -------------------------------------------------------------


@pytest.mark.parametrize(("path", "action"), ENDPOINTS)
def test_an_unknown_queue_or_task_answers_404(client, users, path, action):
    scope = path.split("/")[2].removesuffix("s")
    unknown = path.replace(TARGETS[scope], "nosuch")

    response = post(client, unknown, users["superuser"])

    assert response.status_code == 404
    body = response.json()
    assert body["code"] == "not_found"
    assert f"unknown {scope} 'nosuch'" in body["detail"]
    assert not Pause.objects.exists()
    assert not FlowEvent.objects.exists()


@pytest.mark.parametrize("name", [".hidden", "x" * 201, "a b"])
def test_a_name_outside_the_schema_answers_404(client, users, name):
    response = post(client, f"/api/queues/{name}/pause", users["superuser"])

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_an_unknown_queue_names_the_queues(client, users):
    body = post(client, "/api/queues/nosuch/pause", users["superuser"]).json()

    assert all(queue in body["detail"] for queue in ("critical", "default", "bulk"))


@pytest.mark.parametrize("scope", TARGETS)
def test_pause_answers_and_records_the_pause(client, users, scope):
    name = TARGETS[scope]

    response = post(client, f"/api/{scope}s/{name}/pause", users["pauser"])

    assert response.status_code == 200
    body = response.json()
    pause = Pause.objects.get()
    assert body == {
        "scope": scope,
        "name": name,
        "paused": True,
        "by": "pauser",
        "via": "api",
        "since": body["since"],
    }
    assert (pause.scope, pause.name, pause.by.username, pause.via) == (scope, name, "pauser", "api")
    assert body["since"].startswith(pause.at.strftime("%Y-%m-%dT%H:%M:%S"))
    event = FlowEvent.objects.get()
    assert (event.action, event.scope, event.name, event.by.username, event.via) == (
        "paused",
        scope,
        name,
        "pauser",
        "api",
    )


def test_pausing_twice_keeps_the_first_pause(client, users):
    first = post(client, "/api/queues/bulk/pause", users["pauser"]).json()

    again = post(client, "/api/queues/bulk/pause", users["superuser"])

    assert again.status_code == 200
    assert again.json() == first  # by pauser, since the first time
    assert Pause.objects.count() == 1
    assert FlowEvent.objects.count() == 1


@pytest.mark.parametrize("scope", TARGETS)
def test_resume_answers_and_records_the_resume(client, users, scope):
    name = TARGETS[scope]
    post(client, f"/api/{scope}s/{name}/pause", users["pauser"])

    response = post(client, f"/api/{scope}s/{name}/resume", users["resumer"])

    assert response.status_code == 200
    assert response.json() == {"scope": scope, "name": name, "paused": False, "released": 0}
    assert not Pause.objects.exists()
    event = FlowEvent.objects.order_by("-pk").first()
    assert (event.action, event.by.username, event.via) == ("resumed", "resumer", "api")


def test_resuming_what_is_not_paused_answers_200_releasing_nothing(client, users):
    response = post(client, "/api/tasks/ops.ping/resume", users["resumer"])

    assert response.status_code == 200
    assert response.json()["released"] == 0
    assert not FlowEvent.objects.exists()


def test_pause_list_shows_the_current_pauses_to_any_user(client, users):
    post(client, "/api/tasks/ops.ping/pause", users["pauser"])
    post(client, "/api/queues/bulk/pause", users["superuser"])

    response = client.get("/api/flow/pauses", **users["plain"])

    assert response.status_code == 200
    pauses = response.json()["pauses"]
    assert [(p["scope"], p["name"], p["by"], p["via"]) for p in pauses] == [
        ("queue", "bulk", "root", "api"),
        ("task", "ops.ping", "pauser", "api"),
    ]
    assert all(p["since"] for p in pauses)


def test_pause_list_answers_401_without_credentials(client):
    assert client.get("/api/flow/pauses").status_code == 401


def test_a_pause_by_a_deleted_user_shows_by_null(client, users):
    post(client, "/api/queues/bulk/pause", users["pauser"])
    get_user_model().objects.filter(username="pauser").delete()

    pauses = client.get("/api/flow/pauses", **users["plain"]).json()["pauses"]

    assert pauses[0]["by"] is None
    assert post(client, "/api/queues/bulk/pause", users["superuser"]).json()["by"] is None


# --- a held job in the API -------------------------------------------------------------------


def test_a_job_enqueued_while_its_queue_is_paused_is_held_blocked_and_released(client, users, auth, broker):
    post(client, "/api/queues/bulk/pause", users["pauser"])

    created = [
        client.post("/api/jobs", {"task": "ops.ping", "queue": "bulk"}, content_type="application/json", **auth)
        for _ in range(2)
    ]

    assert [response.status_code for response in created] == [202, 202]
    assert broker.llen("bulk:5") == 0  # Redis never sees a held job
    shown = client.get(created[0].json()["url"], **auth).json()
    assert shown["state"] == "held"
    assert shown["blocked"]["code"] == "paused"
    assert "queue bulk is paused, by pauser via api" in shown["blocked"]["message"]
    listed = client.get("/api/jobs?state=held", **auth).json()["items"]
    assert len(listed) == 2
    assert all(item["blocked"] is None for item in listed)  # the list does not fill it

    resumed = post(client, "/api/queues/bulk/resume", users["resumer"])

    assert resumed.json() == {"scope": "queue", "name": "bulk", "paused": False, "released": 2}
    # bulk takes turns between owners: the first goes to the queue, the second waits its turn
    first, second = (client.get(response.json()["url"], **auth).json() for response in created)
    assert (first["state"], first["blocked"]["code"]) == ("queued", "no_worker")  # no bulk worker here
    assert (second["state"], second["blocked"]["code"]) == ("held", "fair_share")
    assert "owners take turns on queue bulk" in second["blocked"]["message"]
    assert "1 of its owner's jobs are ahead of it" in second["blocked"]["message"]


def test_a_job_of_a_paused_task_is_blocked_by_the_task(client, users, auth):
    post(client, "/api/tasks/ops.ping/pause", users["pauser"])

    created = client.post("/api/jobs", {"task": "ops.ping"}, content_type="application/json", **auth).json()

    shown = client.get(created["url"], **auth).json()
    assert shown["state"] == "held"
    assert shown["blocked"]["code"] == "paused"
    assert "task ops.ping is paused" in shown["blocked"]["message"]


def test_a_finished_job_is_not_blocked(client, user, auth):
    job = Job.objects.create(task_name="ops.ping", queue="default", owner=user, state=Job.State.SUCCEEDED)

    assert client.get(f"/api/jobs/{job.pk}", **auth).json()["blocked"] is None


# --- manage.py flow --------------------------------------------------------------------------


def flow(*args: str) -> str:
    out = StringIO()
    call_command("flow", *args, stdout=out)
    return out.getvalue()


def test_command_pauses_resumes_and_shows_status():
    assert flow("status").startswith("paused: nothing\npauses and resumes: none yet")

    paused = flow("pause", "--queue", "bulk")
    assert paused.startswith("queue bulk: paused (by the system via command since ")
    assert "task ops.ping: paused" in flow("pause", "--task", "ops.ping")
    pause = Pause.objects.get(scope="queue", name="bulk")
    assert (pause.by, pause.via) == (None, "command")

    status = flow("status")
    assert "  queue bulk: by the system via command since " in status
    assert "  task ops.ping: by the system via command since " in status
    assert "latest pauses and resumes (at most 20):" in status
    assert "queue bulk paused by the system via command" in status

    assert flow("resume", "--queue", "bulk") == "queue bulk: resumed, 0 held job(s) released\n"
    assert not Pause.objects.filter(scope="queue").exists()
    event = FlowEvent.objects.order_by("-pk").first()
    assert (event.action, event.scope, event.name, event.by, event.via) == ("resumed", "queue", "bulk", None, "command")
    assert "queue bulk resumed by the system via command" in flow("status")


def test_command_status_lists_at_most_20_events():
    for _ in range(11):
        flow("pause", "--queue", "bulk")
        flow("resume", "--queue", "bulk")

    lines = flow("status").splitlines()

    assert sum(" UTC queue bulk " in line for line in lines) == 20


def test_command_releases_held_jobs(user):
    flow("pause", "--queue", "bulk")
    job = job_enqueue(task_name="ops.ping", payload={}, owner=user, queue="bulk")
    assert Job.objects.get(pk=job.pk).state == Job.State.HELD

    assert flow("resume", "--queue", "bulk") == "queue bulk: resumed, 1 held job(s) released\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pause", "--queue", "nosuch"), "unknown queue 'nosuch'"),
        (("resume", "--queue", "nosuch"), "unknown queue 'nosuch'"),
        (("pause", "--task", "no.such"), "unknown task 'no.such'"),
        (("resume", "--task", "no.such"), "unknown task 'no.such'"),
    ],
)
def test_command_refuses_an_unknown_name(args, message):
    with pytest.raises(CommandError, match=message):
        flow(*args)
    assert not Pause.objects.exists()
    assert not FlowEvent.objects.exists()


@pytest.mark.parametrize("args", [("pause",), ("resume", "--queue", "bulk", "--task", "ops.ping"), ()])
def test_command_needs_one_target(args):
    with pytest.raises(CommandError):
        flow(*args)
