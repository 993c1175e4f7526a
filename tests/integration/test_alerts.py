"""Alerts with real processes: beat fires the evaluation, a worker runs it, another delivers.

The only worker of a queue stops while a job waits there: the "no consumer" alert opens within its
threshold (once the queue's consumer key lapsed), is delivered, signed, to a webhook receiver once
and mailed once, stays one alert over many evaluations, and resolves (delivered once) when a
worker is back.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import requests
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks.models import Alert, Job, WebhookEndpoint
from tasks.platform.models import AlertRule
from tasks.platform.queues import CONSUMER_TTL_SECONDS, consumer_key
from tasks.platform.services.jobs import job_enqueue
from tasks.platform.services.schedules import ALERTS_EVALUATE_SCHEDULE
from tests.support.flower import FLOWER_AUTH
from tests.support.http_receiver import HttpReceiver
from tests.support.processes import BIN_DIR, ManagedProcess, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

NO_CONSUMER_SECONDS = 3
ALERT_ENV = {
    "ALERT_NO_CONSUMER_SECONDS": str(NO_CONSUMER_SECONDS),
    "ALERT_RESOLVE_AFTER_SECONDS": "2",
    # Only the rule under test: the waiting job is late too, by design.
    "ALERT_LATENCY_SECONDS": "3600",
    "ALERT_EMAILS": "ops@example.com",
}


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    server = HttpReceiver().start()
    yield server
    server.stop()


@pytest.fixture
def start_beat(process_env: dict[str, str], broker: redis.Redis) -> Iterator[Callable[..., ManagedProcess]]:
    started: list[ManagedProcess] = []

    def start(env: dict[str, str]) -> ManagedProcess:
        argv = [str(BIN_DIR / "celery"), "-A", "project", "beat", "--loglevel", "INFO"]
        process = ManagedProcess(argv, {**process_env, **env}, "beat").start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def evaluate_every_second() -> None:
    """The seeded evaluation schedule, every second instead of every 30 s (as an admin would edit it)."""
    interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.filter(name=ALERTS_EVALUATE_SCHEDULE).update(interval=interval, enabled=True)


def alert_requests(receiver: HttpReceiver, event: str) -> list[dict]:
    return [json.loads(r.body) for r in receiver.received("/alerts") if r.headers["x-webhook-event"] == event]


def test_a_queue_without_its_only_worker_alerts_once_delivered_once_and_resolves_when_a_worker_is_back(
    start_worker, start_beat, receiver, smtp_server, broker
):
    env = {**ALERT_ENV, **smtp_server.env}
    hook = WebhookEndpoint.objects.create(
        name="ops", url=receiver.url + "/alerts", event_types=["alert.opened", "alert.resolved"]
    )
    evaluate_every_second()
    start_worker("critical,default", name="alerts-main", env=env)  # evaluations, deliveries, mail
    bulk = start_worker("bulk", name="alerts-bulk", env=env)
    start_beat(env)
    wait_until(lambda: broker.exists(consumer_key("bulk")), timeout=10, what="the bulk worker's consumer key")

    bulk.stop()
    waiting = job_enqueue(task_name="ops.ping", queue="bulk")
    queued_at = time.monotonic()

    [opened] = receiver.wait_for(1, path="/alerts", timeout=NO_CONSUMER_SECONDS + CONSUMER_TTL_SECONDS + 20)
    took = opened.at - time.time() + time.monotonic() - queued_at
    # The key lapses at most CONSUMER_TTL_SECONDS after the worker's last heartbeat; then the job has
    # waited past the threshold, and the next evaluation (every second) opens it.
    assert took <= NO_CONSUMER_SECONDS + CONSUMER_TTL_SECONDS + 5, took
    body = json.loads(opened.body)
    assert opened.headers["x-webhook-event"] == "alert.opened"
    assert body["data"]["rule"] == AlertRule.NO_CONSUMER and body["data"]["subject"] == "queue:bulk"
    timestamp = opened.headers["x-webhook-timestamp"]
    expected = hmac.new(hook.secret.encode(), timestamp.encode() + b"." + opened.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(opened.headers["x-webhook-signature"], "sha256=" + expected)

    time.sleep(5)  # about five more evaluations while the condition holds
    assert len(alert_requests(receiver, "alert.opened")) == 1
    assert Alert.objects.filter(rule=AlertRule.NO_CONSUMER, subject="queue:bulk").count() == 1
    alert = Alert.objects.get(rule=AlertRule.NO_CONSUMER)
    assert alert.state == Alert.State.OPEN and alert.last_seen_at > alert.opened_at
    assert Job.objects.get(pk=waiting.pk).state == Job.State.QUEUED
    wait_until(lambda: smtp_server.inbox.to("ops@example.com"), timeout=20, what="the alert's e-mail")

    start_worker("bulk", name="alerts-bulk-again", env=env)
    wait_until(
        lambda: Job.objects.filter(pk=waiting.pk, state=Job.State.SUCCEEDED).exists(), timeout=30, what="the job"
    )
    receiver.wait_for(2, path="/alerts", timeout=30)
    [resolved] = alert_requests(receiver, "alert.resolved")
    assert resolved["data"]["id"] == alert.pk and resolved["data"]["state"] == "resolved"
    time.sleep(3)
    assert len(alert_requests(receiver, "alert.opened")) == 1
    assert len(alert_requests(receiver, "alert.resolved")) == 1
    alert.refresh_from_db()
    assert alert.state == Alert.State.RESOLVED
    wait_until(lambda: len(smtp_server.inbox.to("ops@example.com")) >= 2, timeout=20, what="the second e-mail")
    subjects = sorted(str(message["Subject"]) for message in smtp_server.inbox.to("ops@example.com"))
    assert subjects == [
        "[alert opened] Jobs waiting, no worker consuming: queue:bulk",
        "[alert resolved] Jobs waiting, no worker consuming: queue:bulk",
    ]


def test_flower_lists_open_and_resolved_alerts_behind_its_basic_auth(start_flower):
    Alert.objects.create(
        rule=AlertRule.NO_CONSUMER, subject="queue:bulk", message="queue:bulk: 3 job(s) queued", value=61, threshold=60
    )
    Alert.objects.create(
        rule=AlertRule.LATENCY,
        subject="queue:critical",
        message="queue:critical: the oldest queued job has waited",
        value=400,
        threshold=300,
        state=Alert.State.RESOLVED,
        resolved_at=timezone.now(),
    )
    _, base = start_flower()

    page = requests.get(f"{base}/alerts", auth=FLOWER_AUTH, timeout=5)
    assert page.status_code == 200
    html = page.text
    open_part, _, resolved_part = html.partition('id="alerts-resolved"')
    assert 'id="alerts-open"' in open_part and "queue:bulk: 3 job(s) queued" in open_part
    assert "queue:critical" not in open_part and "queue:critical" in resolved_part
    assert 'id="nav-alerts"' in html and 'aria-current="page">Alerts' in html
    # Every Flower page links to it.
    assert 'id="nav-alerts"' in requests.get(f"{base}/dead-letters", auth=FLOWER_AUTH, timeout=5).text

    assert requests.get(f"{base}/alerts", timeout=5).status_code == 401
    assert requests.get(f"{base}/alerts", auth=(FLOWER_AUTH[0], "wrong"), timeout=5).status_code == 401
