"""Live job events: the SSE stream and the job page, over HTTP from the real ASGI web process,
with a real worker and Redis."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from tasks.models import ApiToken, Job
from tasks.platform.engine.events import job_channel
from tasks.platform.live import QUIET_SECONDS, REDIS_RETRY_SECONDS, REDIS_TIMEOUT_SECONDS, JobWatch
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.fixtures import HOSTNAME, grant
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

#: (connect, read) timeouts of every request; a stream that stops answering fails the test
TIMEOUT = (5, 20)


# --- fixtures and helpers --------------------------------------------------------------------


def make_user(username: str, **fields) -> Any:
    return get_user_model().objects.create_user(username, password="unused-pass-123", **fields)


@pytest.fixture
def owner():
    return make_user("owner")


@pytest.fixture
def bearer(owner) -> dict[str, str]:
    _, token = ApiToken.issue(owner)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def web(start_web, broker) -> str:
    _, base = start_web()
    return base


def session_of(client, user) -> dict[str, str]:
    """Cookies of a logged-in session, for requests to the web process."""
    client.force_login(user)
    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


def open_stream(base: str, job_id, **kwargs) -> requests.Response:
    return requests.get(f"{base}/api/jobs/{job_id}/events", stream=True, timeout=TIMEOUT, **kwargs)


def sse_events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """Parse a text/event-stream: each event as {"event", "data" (decoded JSON), "at" (arrival)}."""
    kind, data = None, []
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if data:
                yield {"event": kind or "message", "data": json.loads("\n".join(data)), "at": time.monotonic()}
            kind, data = None, []
        elif line.startswith(":"):
            continue  # a comment (keep-alive)
        elif line.startswith("event:"):
            kind = line.removeprefix("event:").strip()
        elif line.startswith("data:"):
            data.append(line.removeprefix("data:").removeprefix(" "))


class Reader(threading.Thread):
    """Reads the rest of a stream in the background, so the test can start a worker meanwhile."""

    def __init__(self, events: Iterator[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.source, self.events, self.error = events, [], None

    def run(self) -> None:
        try:
            self.events.extend(self.source)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def subscribers(broker, job_id) -> int:
    return dict(broker.pubsub_numsub(job_channel(job_id))).get(job_channel(job_id).encode(), 0)


# --- the stream ------------------------------------------------------------------------------


def test_stream_sends_the_state_then_progress_in_order_and_ends_with_the_result(
    web, broker, bearer, owner, start_worker
):
    job = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 2}, owner=owner, queue=QueueName.CRITICAL)

    with open_stream(web, job.id, headers=bearer) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        events = sse_events(response)
        first = next(events)  # the ledger row, before any worker runs the job
        assert first["event"] == "state"
        assert {k: first["data"][k] for k in ("state", "progress", "progress_message", "finished")} == {
            "state": "queued",
            "progress": 0,
            "progress_message": "",
            "finished": False,
        }
        assert subscribers(broker, job.id) == 1

        reader = Reader(events)
        reader.start()
        start_worker(QueueName.CRITICAL)
        reader.join(40)
        assert not reader.is_alive(), "the stream did not end with the job"
        assert reader.error is None, reader.error

    rest = reader.events
    kinds = [(event["event"], event["data"]["state"]) for event in rest]
    assert kinds[0] == ("state", "started")
    assert rest[0]["data"]["worker"] == f"critical-test@{HOSTNAME}"
    assert kinds[-1] == ("state", "succeeded")
    assert set(kinds[1:-1]) == {("progress", "started")}
    percents = [event["data"]["progress"] for event in rest[1:-1]]
    assert percents == sorted(percents)
    assert len([p for p in percents if 0 < p < 100]) >= 3, percents
    assert percents[-1] == 100
    assert rest[-2]["data"]["progress_message"] == "held 2.0 of 2s"
    # Live, not buffered to the end: the first report arrived well before the result.
    assert rest[-1]["at"] - rest[1]["at"] > 1.0

    final = rest[-1]["data"]
    assert final["finished"] is True
    assert final["progress"] == 100
    assert final["result"] == {"worker": f"critical-test@{HOSTNAME}", "queue": "critical", "held_seconds": 2}
    assert final["error"] == ""
    # The stream's subscription is gone with it.
    wait_until(lambda: subscribers(broker, job.id) == 0, timeout=5, what="the subscription to close")

    # A client that connects after the end gets the final state, once, and the stream ends.
    with open_stream(web, job.id, headers=bearer) as response:
        late = list(sse_events(response))
    assert [(event["event"], event["data"]) for event in late] == [("state", final)]


def test_late_client_with_a_session_gets_the_final_state_and_staff_see_every_job(web, client, owner):
    other = make_user("other")
    staff = grant(make_user("ops", is_staff=True), "view_job")
    job = Job.objects.create(
        task_name="ops.ping",
        queue=QueueName.DEFAULT,
        owner=other,
        state=Job.State.FAILED,
        progress=40,
        progress_message="half way there",
        error="RuntimeError: boom",
        finished_at=timezone.now(),
    )

    for user in (other, staff):
        with open_stream(web, job.id, cookies=session_of(client, user)) as response:
            assert response.status_code == 200
            events = list(sse_events(response))
        assert len(events) == 1
        assert events[0]["event"] == "state"
        data = events[0]["data"]
        assert (data["state"], data["progress"], data["progress_message"]) == ("failed", 40, "half way there")
        assert (data["finished"], data["error"], data["result"]) == (True, "RuntimeError: boom", None)

    with open_stream(web, job.id, cookies=session_of(client, owner)) as response:
        assert response.status_code == 404


def test_a_missed_message_only_delays_the_stream(web, bearer, owner):
    """Transitions written to the ledger without an event (queued, or a lost publish) still arrive."""
    job = Job.objects.create(task_name="ops.ping", queue=QueueName.DEFAULT, owner=owner, state=Job.State.QUEUED)

    with open_stream(web, job.id, headers=bearer) as response:
        events = sse_events(response)
        assert next(events)["data"]["state"] == "queued"

        Job.objects.filter(pk=job.id).update(state=Job.State.STARTED, progress=30, progress_message="a third")
        asked = time.monotonic()
        started = next(events)
        assert started["event"] == "state"
        assert (started["data"]["state"], started["data"]["progress"]) == ("started", 30)
        assert started["at"] - asked < 5

        Job.objects.filter(pk=job.id).update(state=Job.State.SUCCEEDED, progress=100, result={"ok": True})
        rest = list(events)
    assert [(event["event"], event["data"]["state"], event["data"]["result"]) for event in rest] == [
        ("state", "succeeded", {"ok": True})
    ]


def test_without_redis_the_stream_follows_the_ledger(start_web, bearer, owner):
    _, web = start_web(env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})  # nothing listens there
    job = Job.objects.create(task_name="ops.ping", queue=QueueName.DEFAULT, owner=owner, state=Job.State.STARTED)

    with open_stream(web, job.id, headers=bearer) as response:
        assert response.status_code == 200
        events = sse_events(response)
        assert next(events)["data"]["state"] == "started"

        Job.objects.filter(pk=job.id).update(progress=50, progress_message="half way")
        progress = next(events)
        assert progress["event"] == "progress"
        assert (progress["data"]["progress"], progress["data"]["progress_message"]) == (50, "half way")

        Job.objects.filter(pk=job.id).update(state=Job.State.FAILED, error="RuntimeError: boom")
        rest = list(events)
    assert [(event["event"], event["data"]["state"], event["data"]["error"]) for event in rest] == [
        ("state", "failed", "RuntimeError: boom")
    ]


def test_a_client_that_leaves_releases_its_subscription(web, broker, bearer, owner):
    job = Job.objects.create(task_name="ops.ping", queue=QueueName.DEFAULT, owner=owner, state=Job.State.QUEUED)

    response = open_stream(web, job.id, headers=bearer)
    # Kept until the end: a parser dropped here would close the connection as it is collected.
    events = sse_events(response)
    assert next(events)["data"]["state"] == "queued"
    # Normally subscribed before the first event. On a loaded machine the subscription may have
    # timed out (REDIS_TIMEOUT_SECONDS), and the stream, reading the ledger meanwhile, subscribes
    # again after REDIS_RETRY_SECONDS, at its next quiet-spell read: allow for all of that.
    patience = REDIS_TIMEOUT_SECONDS + REDIS_RETRY_SECONDS + QUIET_SECONDS + 10
    wait_until(lambda: subscribers(broker, job.id) == 1, timeout=patience, what="the stream to subscribe")
    # Still subscribed a while later: only the client leaving ends it.
    time.sleep(QUIET_SECONDS + 1)
    assert subscribers(broker, job.id) == 1
    events.close()
    response.close()

    wait_until(lambda: subscribers(broker, job.id) == 0, timeout=10, what="the server to drop the subscription")


def test_stream_answers_401_without_credentials_and_404_for_another_users_job(web, client, bearer, owner):
    theirs = Job.objects.create(task_name="ops.ping", queue=QueueName.DEFAULT, owner=make_user("other"))
    mine = Job.objects.create(task_name="ops.ping", queue=QueueName.DEFAULT, owner=owner)

    for credentials in ({}, {"headers": {"Authorization": "Bearer wrong"}}):
        response = requests.get(f"{web}/api/jobs/{mine.id}/events", timeout=TIMEOUT, **credentials)
        assert response.status_code == 401
        assert response.json()["code"] == "unauthenticated"

    for credentials in ({"headers": bearer}, {"cookies": session_of(client, owner)}):
        response = requests.get(f"{web}/api/jobs/{theirs.id}/events", timeout=TIMEOUT, **credentials)
        assert response.status_code == 404
        assert response.json() == {"detail": "not found", "code": "not_found"}
    missing = requests.get(f"{web}/api/jobs/00000000-0000-0000-0000-000000000000/events", headers=bearer, timeout=5)
    assert missing.status_code == 404
    assert requests.post(f"{web}/api/jobs/{mine.id}/events", headers=bearer, timeout=5).status_code == 405


# --- the page --------------------------------------------------------------------------------


def test_job_page_sends_anonymous_users_to_log_in_and_hides_other_users_jobs(web, client, owner):
    job = Job.objects.create(
        task_name="ops.ping",
        queue=QueueName.CRITICAL,
        owner=owner,
        state=Job.State.STARTED,
        progress=25,
        progress_message="<script>alert('x')</script>",
    )
    page = f"{web}/jobs/{job.id}"

    anonymous = requests.get(page, allow_redirects=False, timeout=TIMEOUT)
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"] == f"/accounts/login/?next=/jobs/{job.id}"

    other = requests.get(page, cookies=session_of(client, make_user("other")), timeout=TIMEOUT)
    assert other.status_code == 404

    for user in (owner, grant(make_user("ops", is_staff=True), "view_job")):
        shown = requests.get(page, cookies=session_of(client, user), timeout=TIMEOUT)
        assert shown.status_code == 200
        assert "ops.ping" in shown.text
        assert '<progress id="job-progress" max="100" value="25"' in shown.text
        assert f'"events_url": "/api/jobs/{job.id}/events"' in shown.text
        # Data is escaped in the HTML and in the script's JSON.
        assert "<script>alert" not in shown.text
        assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in shown.text


def test_messages_the_first_read_already_had_are_dropped_until_one_is_newer():
    """Between subscribing and reading the row, a report can be both in the row and on its way;
    such messages are dropped, but once the stream has caught up every new report goes out."""
    watch = JobWatch(uuid.uuid4())
    watch.view = {"state": "started", "progress": 40, "progress_message": "b", "worker": "w", "finished": False}
    watch._caught_up = False  # just read the row

    def apply(event: dict) -> str | None:
        return asyncio.run(watch._apply_message(event))

    assert apply({"type": "state", "state": "started", "worker": "w"}) is None
    assert apply({"type": "progress", "progress": 30, "message": "a"}) is None
    assert apply({"type": "progress", "progress": 40, "message": "b"}) is None
    assert apply({"type": "progress", "progress": 50, "message": "c"}).startswith("event: progress\n")
    # Caught up: a task that reports less than before is shown as it reports.
    assert '"progress": 45' in apply({"type": "progress", "progress": 45, "message": "d"})
    assert apply({"type": "progress", "progress": 45, "message": "d"}) is None  # a repeat changes nothing
