"""Tracing and JSON logs with real web and worker processes: one API enqueue is one trace from the
HTTP request to the worker's run (an OTLP/HTTP receiver in the test plays the collector); without
OTEL_* nothing is instrumented; a worker with LOG_FORMAT=json names the job on each task line."""

from __future__ import annotations

import json

import pytest
import redis
import requests
from django.conf import settings
from django.db import connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks.models import ApiToken, Job
from tasks.platform import tracing
from tasks.platform.services.jobs import JobRequest, job_enqueue, job_enqueue_many
from tests.support.otlp import CONSUMER, PRODUCER, SERVER, OtlpReceiver, ReceivedSpan
from tests.support.processes import BIN_DIR, ManagedProcess, free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

#: the SDK's default OTLP/HTTP port: a process that traced without being told where would post here
OTLP_DEFAULT_PORT = 4318


@pytest.fixture
def collector():
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


#: tracing off, whatever the developer's shell exports (an empty endpoint is none)
UNTRACED = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "",
    "OTEL_BSP_SCHEDULE_DELAY": "100",
}


def traced_env(collector: OtlpReceiver, **extra: str) -> dict[str, str]:
    # Spans leave every 100 ms instead of the SDK's 5 s, so the test waits less.
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", **extra}


def api_enqueue(web: str, user, **body) -> str:
    _, token = ApiToken.issue(user)
    accepted = requests.post(f"{web}/api/jobs", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert accepted.status_code == 202, accepted.text
    return accepted.json()["id"]


def run_span_of(collector: OtlpReceiver, job_id: str) -> ReceivedSpan:
    return wait_until(
        lambda: next(
            (span for span in collector.spans() if span.kind == CONSUMER and span.attributes.get("job.id") == job_id),
            None,
        ),
        timeout=20,
        what=f"the worker's run span of job {job_id}",
    )


def queued_message_headers(queue: str) -> list[dict]:
    """The headers of every message waiting on ``queue``'s Redis lists (one per priority step)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    lists = [key for key in client.scan_iter(f"{queue}*") if client.type(key) == b"list"]
    return [json.loads(raw)["headers"] for key in lists for raw in client.lrange(key, 0, -1)]


def test_one_api_enqueue_is_one_trace_from_the_web_request_to_the_worker_run(
    collector, start_web, start_worker, broker, user, wait_for_job
):
    env = traced_env(collector)
    worker = start_worker("critical", env={**env, "LOG_FORMAT": "json"})
    web_process, web = start_web(env={**env, "LOG_FORMAT": "json"})

    job_id = api_enqueue(web, user, task="ops.ping", queue="critical")
    wait_for_job(job_id, "succeeded")
    run = run_span_of(collector, job_id)

    # One trace holds the web's server span, its publish and the worker's run.
    def whole_trace() -> list[ReceivedSpan] | None:
        spans = [span for span in collector.spans() if span.trace_id == run.trace_id]
        return spans if any(span.kind == SERVER for span in spans) else None

    trace = wait_until(whole_trace, timeout=20, what="the web's server span in the run's trace")
    [server] = [span for span in trace if span.kind == SERVER]
    assert server.service == tracing.WEB
    assert server.attributes.get("http.request.method", server.attributes.get("http.method")) == "POST"
    [publish] = [span for span in trace if span.kind == PRODUCER and span.attributes.get("job.id") == job_id]
    assert publish.service == tracing.WEB
    assert publish.name == "apply_async/ops.ping"
    assert publish.attributes["job.attempt"] == 1
    assert publish.attributes["job.queue"] == "critical"

    # The worker's run is the publish's child, and names the job, its task, attempt and queue.
    assert run.service == tracing.WORKER
    assert run.name == "run/ops.ping"
    assert run.parent_span_id == publish.span_id
    assert run.attributes["job.task"] == "ops.ping"
    assert run.attributes["job.attempt"] == 1
    assert run.attributes["job.queue"] == "critical"
    # The ledger's statements of the run (begin_attempt, succeed) are its children (psycopg: PostgreSQL only).
    if connection.vendor == "postgresql":
        ledger = wait_until(
            lambda: [
                span
                for span in collector.spans()
                if span.parent_span_id == run.span_id
                and span.attributes.get("db.system") == "postgresql"
                and any("tasks_job" in str(value) for value in span.attributes.values())
            ],
            timeout=10,
            what="the run's ledger statements",
        )
        assert {span.service for span in ledger} == {tracing.WORKER}

    # The task's log line carries the run's trace id.
    [ping] = [line for line in json_lines(worker.log()) if line.get("message", "").startswith("ping on")]
    assert ping["trace_id"] == run.trace_id
    assert ping["job_id"] == job_id
    # The web's lines are JSON too, uvicorn's access line included.
    assert any("POST /api/jobs" in line["message"] for line in json_lines(web_process.log()))


def test_without_otel_settings_nothing_is_instrumented_or_exported(start_web, start_worker, broker, user, wait_for_job):
    try:
        default_port = OtlpReceiver(port=OTLP_DEFAULT_PORT).start()
    except OSError:
        pytest.skip(f"port {OTLP_DEFAULT_PORT} is taken: a collector runs on this machine")
    try:
        web_process, web = start_web(env=UNTRACED)
        job_id = api_enqueue(web, user, task="ops.ping", queue="critical")

        # The message went out with no trace context: the Celery instrumentation is not installed.
        [headers] = wait_until(lambda: queued_message_headers("critical"), timeout=10, what="the message")
        assert headers["id"] == job_id
        assert "traceparent" not in headers

        worker = start_worker("critical", env=UNTRACED)
        wait_for_job(job_id, "succeeded")
        worker.stop()
        web_process.stop()
        assert default_port.posts == []
        assert "tracing:" not in worker.log() + web_process.log()
    finally:
        default_port.stop()


def test_a_traced_relay_publish_names_the_job_in_a_trace_of_its_own(collector, start_relay, broker):
    """A job the relay publishes (here: delayed, then due) starts a trace in the relay's service."""
    job = job_enqueue(task_name="ops.ping", queue="critical", delay=0.5)
    start_relay(env=traced_env(collector))

    publish = wait_until(
        lambda: next((span for span in collector.spans() if span.attributes.get("job.id") == str(job.id)), None),
        timeout=20,
        what="the relay's publish span",
    )
    assert publish.service == tracing.RELAY
    assert publish.kind == PRODUCER
    assert publish.parent_span_id == ""
    [headers] = queued_message_headers("critical")
    assert headers["traceparent"].split("-")[1] == publish.trace_id


def test_a_worker_with_json_logs_names_job_task_and_attempt_on_each_task_line(start_worker, broker, wait_for_job):
    worker = start_worker("critical", env={**UNTRACED, "LOG_FORMAT": "json"})
    job = job_enqueue(task_name="ops.ping", queue="critical")
    wait_for_job(job.id, "succeeded")

    lines = wait_until(
        lambda: named_the_job(json_lines(worker.log()), str(job.id)),
        timeout=10,
        what="the task's JSON log lines",
    )
    [ping] = [line for line in lines if line.get("message", "").startswith("ping on")]
    assert ping["job_id"] == str(job.id)
    assert ping["task"] == "ops.ping"
    assert ping["attempt"] == 1
    assert ping["level"] == "INFO"
    assert "trace_id" not in ping  # no tracing without OTEL_*
    # Celery's own line about the run is the task's too; every line naming the job names its task.
    assert any(line["message"].startswith("Task ops.ping[") and line.get("job_id") == str(job.id) for line in lines)
    assert {line["task"] for line in lines if line.get("job_id") == str(job.id)} == {"ops.ping"}
    # The worker's own lines (start-up, the consumer) are JSON too, and name no job.
    assert any("ready" in line.get("message", "") and "job_id" not in line for line in lines)


def named_the_job(lines: list[dict], job_id: str) -> list[dict] | None:
    return lines if any(line.get("job_id") == job_id for line in lines) else None


def json_lines(log: str) -> list[dict]:
    """The log's lines that are JSON objects (the Celery banner is printed, not logged)."""
    lines = []
    for text in log.splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def test_the_receiver_listens_where_it_is_told():
    # The no-OTEL test relies on it to play a collector on the SDK's default port.
    receiver = OtlpReceiver(port=free_port()).start()
    try:
        assert requests.post(f"{receiver.endpoint}/v1/traces", data=b"", timeout=5).status_code == 200
        assert receiver.posts == ["/v1/traces"]
    finally:
        receiver.stop()


def test_a_worker_pool_process_flushes_its_spans_when_the_worker_stops(collector, start_worker, broker, wait_for_job):
    # A minute between exports: only the flush at the pool process's exit can send the run's span.
    worker = start_worker("critical", env=traced_env(collector, OTEL_BSP_SCHEDULE_DELAY="60000"))
    job = job_enqueue(task_name="ops.ping", queue="critical")
    wait_for_job(job.id, "succeeded")
    assert not [span for span in collector.spans() if span.attributes.get("job.id") == str(job.id)]

    worker.stop()

    [run] = [
        span for span in collector.spans() if span.kind == CONSUMER and span.attributes.get("job.id") == str(job.id)
    ]
    assert run.service == tracing.WORKER
    # The test process is not traced: the run starts a trace of its own.
    assert run.parent_span_id == ""


def test_each_job_of_a_batch_message_has_its_span_under_the_batch_run(collector, start_worker, broker, wait_for_job):
    start_worker("default", env=traced_env(collector))
    jobs = job_enqueue_many(requests=[JobRequest("ops.noop", {}) for _ in range(3)])
    for job in jobs:
        wait_for_job(job.id, "succeeded")

    def job_spans() -> list[ReceivedSpan] | None:
        spans = [span for span in collector.spans() if span.name == "run_job/ops.noop"]
        return spans if len(spans) == 3 else None

    spans = wait_until(job_spans, timeout=20, what="a span for each job of the batch")
    assert {span.attributes["job.id"] for span in spans} == {str(job.id) for job in jobs}
    assert {span.attributes["job.attempt"] for span in spans} == {1}
    # The batch's own span ends after its jobs' spans, so it may reach the collector later.
    [batch_run] = wait_until(
        lambda: [span for span in collector.spans() if span.name == "run/jobs.run_batch"] or None,
        timeout=20,
        what="the batch run's span",
    )
    assert {span.parent_span_id for span in spans} == {batch_run.span_id}


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_a_worker_without_pool_processes_traces_its_runs_too(pool, collector, start_worker, broker, wait_for_job):
    start_worker("critical", pool=pool, env=traced_env(collector))
    job = job_enqueue(task_name="ops.ping", queue="critical")
    wait_for_job(job.id, "succeeded")

    run = run_span_of(collector, str(job.id))

    assert run.service == tracing.WORKER
    assert run.attributes["job.attempt"] == 1


def test_a_traced_beat_names_the_job_of_each_run_it_publishes(collector, process_env, broker):
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(name="traced", task="ops.ping", interval=every_second, kwargs=json.dumps({}))
    argv = [str(BIN_DIR / "celery"), "-A", "project", "beat", "--loglevel", "INFO"]
    beat = ManagedProcess(argv, {**process_env, **traced_env(collector)}, "beat").start()
    try:
        job = wait_until(lambda: Job.objects.filter(origin="beat:traced").first(), timeout=30, what="a fired run")
        publish = wait_until(
            lambda: next((span for span in collector.spans() if span.attributes.get("job.id") == str(job.id)), None),
            timeout=20,
            what="beat's publish span",
        )
    finally:
        beat.stop()
    assert publish.service == tracing.BEAT
    assert publish.kind == PRODUCER
    assert publish.attributes["job.task"] == "ops.ping"
