"""Live-progress streams are bounded: capped per user (across web processes) and per process, ended
after their lifetime (the client reconnects and continues), and hundreds of them share a fixed
number of Redis and database connections without slowing the API. Real web processes and Redis."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Iterator

import pytest
import redis
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from tasks.models import ApiToken, Job
from tasks.platform.engine.events import job_channel
from tasks.platform.queues import QueueName
from tasks.platform.streams import QUIET_SECONDS
from tests.integration.test_events import TIMEOUT, open_stream, sse_events, subscribers
from tests.support.processes import free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)  # the web processes must see users, tokens and jobs


def make_user(username: str):
    return get_user_model().objects.create_user(username, password="unused-pass-123")


def token_of(user) -> dict[str, str]:
    _, token = ApiToken.issue(user)
    return {"Authorization": f"Bearer {token}"}


def queued_job(owner) -> Job:
    return Job.objects.create(task_name="ops.ping", queue=QueueName.DEFAULT, owner=owner, state=Job.State.QUEUED)


@contextlib.contextmanager
def stream(base: str, job: Job, headers: dict[str, str]) -> Iterator[tuple[requests.Response, Iterator[dict]]]:
    """An open stream, its first event read (so the server holds it); closed on exit."""
    response = open_stream(base, job.id, headers=headers)
    try:
        assert response.status_code == 200, (response.status_code, response.text[:200])
        events = sse_events(response)
        assert next(events)["data"]["state"] == job.state
        yield response, events
    finally:
        response.close()


def assert_too_many_streams(response: requests.Response, *, most_seconds: int) -> None:
    with response:  # closed however it went: a stream left open would outlive the test
        assert response.status_code == 429, response.status_code
        assert response.json()["code"] == "too_many_streams"
        assert set(response.json()) == {"detail", "code"}
        assert 1 <= int(response.headers["Retry-After"]) <= most_seconds


def test_the_per_user_cap_answers_429_across_web_processes_and_frees_when_a_stream_closes(start_web, broker):
    env = {"SSE_MAX_STREAMS_PER_USER": "2", "SSE_MAX_STREAM_SECONDS": "60"}
    (_, one), (_, two) = start_web(env=env), start_web(env=env)
    owner, other = make_user("owner"), make_user("other")
    mine, theirs = token_of(owner), token_of(other)
    job, their_job = queued_job(owner), queued_job(other)

    with stream(one, job, mine), stream(two, job, mine) as (second, _):
        for base in (one, two):
            assert_too_many_streams(open_stream(base, job.id, headers=mine), most_seconds=60)
        # Someone else has a cap of their own.
        with stream(one, their_job, theirs):
            pass
        second.close()
        # The server sees the client leave, closes the stream and gives its slot back.
        wait_until(lambda: opens(one, job, mine), timeout=10, what="the slot to be freed")


def opens(base: str, job: Job, headers: dict[str, str]) -> bool:
    with open_stream(base, job.id, headers=headers) as response:
        return response.status_code == 200


def test_the_per_process_cap_answers_429(start_web, broker):
    _, base = start_web(env={"SSE_MAX_STREAMS_PER_PROCESS": "2"})
    _, roomy = start_web()
    users = [make_user(f"user{i}") for i in range(3)]
    jobs = [queued_job(user) for user in users]
    tokens = [token_of(user) for user in users]

    with stream(base, jobs[0], tokens[0]), stream(base, jobs[1], tokens[1]):
        assert_too_many_streams(open_stream(base, jobs[2].id, headers=tokens[2]), most_seconds=10)
        with stream(roomy, jobs[2], tokens[2]):  # another process has room
            pass


def test_without_redis_the_per_user_cap_is_counted_in_the_process(start_web):
    _, base = start_web(env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "SSE_MAX_STREAMS_PER_USER": "1"})
    owner = make_user("owner")
    headers = token_of(owner)
    job = queued_job(owner)

    with stream(base, job, headers):  # followed from the ledger
        assert_too_many_streams(open_stream(base, job.id, headers=headers), most_seconds=330)
    wait_until(lambda: opens(base, job, headers), timeout=10, what="the slot to be freed")


def test_a_stream_ends_after_its_lifetime_and_a_reconnect_continues(start_web, broker):
    lifetime = 4
    _, base = start_web(env={"SSE_MAX_STREAM_SECONDS": str(lifetime)})
    owner = make_user("owner")
    headers = token_of(owner)
    job = queued_job(owner)

    opened = time.monotonic()
    with open_stream(base, job.id, headers=headers) as response:
        lines = list(response.iter_lines(decode_unicode=True))  # to the end: the server closes it
    lasted = time.monotonic() - opened
    assert lines[0] == "retry: 2000"  # the EventSource reconnects after 2 s
    assert [line for line in lines if line.startswith("data:")] != []
    assert all('"finished": false' in line for line in lines if line.startswith("data:"))
    assert lifetime <= lasted < lifetime + 5, lasted

    Job.objects.filter(pk=job.id).update(state=Job.State.STARTED, progress=40, progress_message="on its way")
    with open_stream(base, job.id, headers=headers) as response:
        events = sse_events(response)
        resumed = next(events)["data"]
        assert (resumed["state"], resumed["progress"], resumed["progress_message"]) == ("started", 40, "on its way")
        Job.objects.filter(pk=job.id).update(state=Job.State.SUCCEEDED, progress=100, result={"ok": True})
        final = [event["data"] for event in events]
    assert [(data["state"], data["result"]) for data in final] == [("succeeded", {"ok": True})]


def test_the_shared_subscription_comes_back_after_a_redis_restart(start_web, own_redis):
    _, base = start_web(env={"REDIS_URL": own_redis.url})
    server = redis.Redis.from_url(own_redis.url)
    owner = make_user("owner")
    job = Job.objects.create(task_name="ops.ping", queue=QueueName.DEFAULT, owner=owner, state=Job.State.STARTED)

    with stream(base, job, token_of(owner)) as (_, events):
        assert subscribers(server, job.id) == 1
        own_redis.stop()
        Job.objects.filter(pk=job.id).update(progress=30, progress_message="from the ledger")
        assert next(events)["data"]["progress_message"] == "from the ledger"  # followed without Redis

        own_redis.start_again()
        wait_until(lambda: subscribers(server, job.id) == 1, timeout=30, what="the hub to subscribe again")
        # An event only Redis carries (the ledger never has it): live again.
        sent = time.monotonic()
        server.publish(job_channel(job.id), json.dumps({"type": "progress", "progress": 60, "message": "live"}))
        live = next(events)
        assert (live["data"]["progress"], live["data"]["progress_message"]) == (60, "live")
        assert live["at"] - sent < QUIET_SECONDS


def web_redis_connections(client: redis.Redis) -> int:
    """Connections to the test Redis database (web process and this test's own)."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    return sum(1 for entry in client.client_list() if int(entry["db"]) == db)


def database_connections() -> int | None:
    if connection.vendor != "postgresql":
        return None  # SQLite: no server, no connections to count
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


def test_two_hundred_streams_share_fixed_connections_and_keep_the_api_fast(start_web, broker):
    streams_wanted, users_count = 200, 10
    _, base = start_web(env={"SSE_MAX_STREAMS_PER_USER": "1000", "SSE_MAX_STREAMS_PER_PROCESS": "1000"})
    users = [make_user(f"watcher{i}") for i in range(users_count)]
    tokens = [token_of(user) for user in users]
    jobs = Job.objects.bulk_create(
        Job(task_name="ops.ping", queue=QueueName.DEFAULT, owner=users[i % users_count], state=Job.State.QUEUED)
        for i in range(streams_wanted)
    )
    api_job = f"{base}/api/jobs/{jobs[0].id}"
    counter = redis.Redis.from_url(settings.REDIS_URL)

    def api_latencies() -> list[float]:
        took = []
        for _ in range(20):
            started = time.monotonic()
            answer = requests.get(api_job, headers=tokens[0], timeout=TIMEOUT)
            took.append(time.monotonic() - started)
            assert answer.status_code == 200
        return took

    with contextlib.ExitStack() as open_streams:
        first = open_streams.enter_context(stream(base, jobs[0], tokens[0]))
        api_latencies()  # the same requests as below: the request threads they use are counted here too
        time.sleep(QUIET_SECONDS + 0.5)  # a periodic read has run too
        redis_before, database_before = web_redis_connections(counter), database_connections()

        opened = [first] + [
            open_streams.enter_context(stream(base, job, tokens[i % users_count]))
            for i, job in enumerate(jobs[1:], start=1)
        ]
        assert len(opened) == streams_wanted
        assert all(subscribers(broker, job.id) == 1 for job in jobs)
        time.sleep(QUIET_SECONDS + 0.5)  # and with 200 open

        took = api_latencies()
        assert statistics.median(took) < 0.1, took
        assert max(took) < 0.1, took

        # As many connections as with one stream open (a request may pick one more request thread).
        assert web_redis_connections(counter) <= redis_before + 1, (redis_before, web_redis_connections(counter))
        if database_before is not None:
            assert database_connections() <= database_before + 1, (database_before, database_connections())

        # Still live, every one of them: an event reaches the last stream opened.
        broker.publish(job_channel(jobs[-1].id), json.dumps({"type": "progress", "progress": 5, "message": "hi"}))
        _, last_events = opened[-1]
        assert next(last_events)["data"]["progress_message"] == "hi"
