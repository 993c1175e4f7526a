"""Alerts from the ledger, in-process against the real test database and Redis: each rule opens
and resolves, an alert held over several evaluations is one row and one delivery, thresholds per
queue and per task beat the settings, and two overlapping evaluations open an alert once."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks.models import Alert, AlertThreshold, Job, WebhookDelivery, WebhookEndpoint
from tasks.platform.models import AlertRule, AlertScope
from tasks.platform.queues import CONSUMER_TTL_SECONDS, consumer_key, worker_key
from tasks.platform.selectors import alerts as rules
from tasks.platform.selectors.schedules import schedule_origins
from tasks.platform.services.alerts import alert_mail, alerts_evaluate, soft_time_limit

pytestmark = pytest.mark.django_db

State = Job.State


@pytest.fixture(autouse=True)
def clean_redis() -> redis.Redis:
    """The test Redis without consumer or heartbeat keys, and every queue consumed (so only the
    rule under test finds something); each test removes what it needs gone."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    stale = [*client.scan_iter("platform:consumers:*"), *client.scan_iter("platform:workers:*")]
    if stale:
        client.delete(*stale)
    for queue in ("critical", "default", "bulk"):
        client.set(consumer_key(queue), "1", ex=CONSUMER_TTL_SECONDS * 30)
    return client


@pytest.fixture(autouse=True)
def alert_settings(settings) -> None:
    settings.ALERT_LATENCY_SECONDS = 60
    settings.ALERT_NO_CONSUMER_SECONDS = 30
    settings.ALERT_STALLED_SECONDS = 600
    settings.ALERT_DEAD_LETTERS = 3
    settings.ALERT_DEAD_LETTERS_WINDOW_SECONDS = 300
    settings.ALERT_SCHEDULE_LATE_SECONDS = 120
    settings.ALERT_OVERRUN_SECONDS = 60
    settings.ALERT_RESOLVE_AFTER_SECONDS = 60
    settings.ALERT_EMAILS = []


@pytest.fixture
def endpoint() -> WebhookEndpoint:
    # The deliveries' own jobs stay queued here (no worker runs them): judged apart, and never late.
    AlertThreshold.objects.create(
        rule=AlertRule.LATENCY, scope=AlertScope.TASK, name="webhooks.deliver", threshold=1, enabled=False
    )
    return WebhookEndpoint.objects.create(
        name="ops", url="http://127.0.0.1:9/hook", event_types=["alert.opened", "alert.resolved"]
    )


def job(*, state: str, queue: str = "default", task: str = "ops.ping", **fields) -> Job:
    return Job.objects.create(task_name=task, queue=queue, state=state, **fields)


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def open_alerts(rule: str | None = None) -> list[tuple[str, str]]:
    rows = Alert.objects.filter(state=Alert.State.OPEN)
    if rule:
        rows = rows.filter(rule=rule)
    return sorted(rows.values_list("rule", "subject"))


def deliveries(event: str) -> list[dict]:
    return [d.payload for d in WebhookDelivery.objects.filter(event=event).order_by("created_at")]


# --- opening, holding, resolving ------------------------------------------------------------


def test_latency_opens_once_holds_as_one_row_and_resolves_once_after_the_clear_period(endpoint):
    job(state=State.QUEUED, queued_at=ago(90))
    job(state=State.QUEUED, queued_at=ago(10))

    first = alerts_evaluate()
    assert [(a.rule, a.subject) for a in first.opened] == [(AlertRule.LATENCY, "queue:default")]
    alert = Alert.objects.get()
    assert alert.threshold == 60 and 89 <= alert.value <= 95
    assert "ops.ping" in alert.message and "threshold 60 s" in alert.message

    for _ in range(3):  # held: one row, no new delivery
        outcome = alerts_evaluate()
        assert outcome.opened == [] and outcome.resolved == [] and outcome.held == 1
    assert Alert.objects.count() == 1
    assert [d["subject"] for d in deliveries("alert.opened")] == ["queue:default"]

    Job.objects.filter(state=State.QUEUED).update(state=State.STARTED, started_at=timezone.now())
    # The first clear reading within ALERT_RESOLVE_AFTER_SECONDS resolves nothing (no flapping).
    assert alerts_evaluate().resolved == []
    assert open_alerts() == [(AlertRule.LATENCY, "queue:default")]
    later = alerts_evaluate(now=timezone.now() + timedelta(seconds=61))
    assert [a.subject for a in later.resolved] == ["queue:default"]
    alert.refresh_from_db()
    assert alert.state == Alert.State.RESOLVED and alert.resolved_at is not None
    assert alerts_evaluate(now=timezone.now() + timedelta(seconds=120)).resolved == []
    assert [d["state"] for d in deliveries("alert.resolved")] == ["resolved"]
    assert len(deliveries("alert.opened")) == 1


def test_a_bad_reading_within_the_clear_period_keeps_the_alert_open():
    late = job(state=State.QUEUED, queued_at=ago(90))
    alerts_evaluate()
    Job.objects.filter(pk=late.pk).update(queued_at=ago(5))
    alerts_evaluate(now=timezone.now() + timedelta(seconds=30))  # clear, within 60 s: still open
    Job.objects.filter(pk=late.pk).update(queued_at=ago(200))
    alerts_evaluate(now=timezone.now() + timedelta(seconds=40))  # bad again: refreshed
    assert alerts_evaluate(now=timezone.now() + timedelta(seconds=80)).resolved == []  # late again
    assert Alert.objects.count() == 1


def test_a_condition_that_comes_back_after_resolving_opens_a_new_alert(endpoint):
    late = job(state=State.QUEUED, queued_at=ago(90))
    alerts_evaluate()
    Job.objects.filter(pk=late.pk).update(state=State.SUCCEEDED)
    alerts_evaluate(now=timezone.now() + timedelta(seconds=61))
    job(state=State.QUEUED, queued_at=ago(100))
    assert len(alerts_evaluate(now=timezone.now() + timedelta(seconds=62)).opened) == 1
    assert Alert.objects.filter(rule=AlertRule.LATENCY).count() == 2
    assert len(deliveries("alert.opened")) == 2 and len(deliveries("alert.resolved")) == 1


def test_no_consumer_opens_while_no_worker_consumes_and_resolves_once_one_does(clean_redis):
    job(state=State.QUEUED, queue="bulk", task="reports.build", queued_at=ago(40))
    assert open_alerts(AlertRule.NO_CONSUMER) == []  # consumed: latency's business only
    alerts_evaluate()
    assert open_alerts(AlertRule.NO_CONSUMER) == []

    clean_redis.delete(consumer_key("bulk"))
    alerts_evaluate()
    assert open_alerts(AlertRule.NO_CONSUMER) == [(AlertRule.NO_CONSUMER, "queue:bulk")]
    assert "no live worker consumes" in Alert.objects.get(rule=AlertRule.NO_CONSUMER).message

    clean_redis.set(consumer_key("bulk"), "1", ex=CONSUMER_TTL_SECONDS)
    assert alerts_evaluate(now=timezone.now() + timedelta(seconds=61)).resolved[0].subject == "queue:bulk"


def test_no_consumer_waits_for_its_threshold(clean_redis):
    clean_redis.delete(consumer_key("bulk"))
    job(state=State.QUEUED, queue="bulk", task="reports.build", queued_at=ago(5))
    alerts_evaluate()
    assert open_alerts(AlertRule.NO_CONSUMER) == []


def test_a_rule_that_cannot_tell_neither_opens_nor_resolves(clean_redis, monkeypatch):
    clean_redis.delete(consumer_key("bulk"))
    job(state=State.QUEUED, queue="bulk", task="reports.build", queued_at=ago(40))
    alerts_evaluate()
    monkeypatch.setattr(rules, "queues_consumed", lambda: None)  # Redis does not answer
    outcome = alerts_evaluate(now=timezone.now() + timedelta(seconds=120))
    assert outcome.unknown == [AlertRule.NO_CONSUMER] and outcome.resolved == []
    assert open_alerts(AlertRule.NO_CONSUMER) == [(AlertRule.NO_CONSUMER, "queue:bulk")]


def test_stalled_opens_when_no_running_job_started_within_the_threshold_and_resolves_on_a_start():
    job(state=State.STARTED, started_at=ago(700), worker="w@h")
    job(state=State.STARTED, started_at=ago(650), worker="w@h")
    alerts_evaluate()
    assert open_alerts(AlertRule.STALLED) == [(AlertRule.STALLED, "queue:default")]
    assert "2 job(s) running" in Alert.objects.get(rule=AlertRule.STALLED).message
    job(state=State.STARTED, started_at=timezone.now(), worker="w@h")  # a slot took a new job
    assert [a.rule for a in alerts_evaluate(now=timezone.now() + timedelta(seconds=61)).resolved] == [AlertRule.STALLED]


def test_dead_letters_open_above_the_rate_in_the_window_only():
    for _ in range(3):
        job(state=State.DEAD, finished_at=ago(60))
    job(state=State.DEAD, finished_at=ago(400))  # before the window
    alerts_evaluate()
    assert open_alerts(AlertRule.DEAD_LETTERS) == []  # 3 is not more than 3
    job(state=State.DEAD, finished_at=ago(10))
    alerts_evaluate()
    alert = Alert.objects.get(rule=AlertRule.DEAD_LETTERS)
    assert alert.subject == "queue:default" and alert.value == 4


def schedule(name: str, *, every: int = 60, **fields) -> PeriodicTask:
    interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name=name, task="ops.ping", interval=interval, kwargs="{}", **fields)


def test_a_schedule_whose_latest_finished_run_failed_alerts_until_a_run_succeeds():
    tick = schedule("tick", last_run_at=timezone.now())
    origin = schedule_origins(tick.name)[0]
    job(state=State.SUCCEEDED, origin=origin, created_at=ago(120))
    failed = job(state=State.DEAD, origin=origin, created_at=ago(60), error="ValueError: boom")
    job(state=State.QUEUED, origin=origin, created_at=ago(1), queued_at=ago(1))  # not finished: not judged
    alerts_evaluate()
    alert = Alert.objects.get(rule=AlertRule.SCHEDULE)
    assert alert.subject == "schedule:tick" and str(failed.pk) in alert.message and "boom" in alert.message
    job(state=State.SUCCEEDED, origin=origin, created_at=timezone.now())
    assert alerts_evaluate(now=timezone.now() + timedelta(seconds=61)).resolved[0].subject == "schedule:tick"


def test_a_schedule_run_not_fired_long_after_its_due_time_alerts():
    schedule("stuck", every=60, last_run_at=ago(60 + 200))  # due 200 s ago
    schedule("on-time", every=60, last_run_at=ago(30))
    alerts_evaluate()
    assert open_alerts(AlertRule.SCHEDULE) == [(AlertRule.SCHEDULE, "schedule:stuck")]
    assert "not fired" in Alert.objects.get(rule=AlertRule.SCHEDULE).message


def test_overrun_opens_past_the_soft_limit_only_without_a_heartbeat_listing_the_job(clean_redis):
    soft = soft_time_limit("ops.ping")
    listed = job(state=State.STARTED, queue="critical", started_at=ago(soft + 100), worker="alive@h")
    build = soft_time_limit("reports.build")
    job(state=State.STARTED, queue="bulk", task="reports.build", started_at=ago(build + 100), worker="gone@h")
    job(state=State.STARTED, queue="default", started_at=ago(soft + 10), worker="gone@h")  # within threshold
    heartbeat = {"beat": 1, "ttl": 30, "runs": [[str(listed.pk), 123]]}
    clean_redis.set(worker_key("alive@h"), json.dumps(heartbeat), ex=30)
    alerts_evaluate()
    assert open_alerts(AlertRule.OVERRUN) == [(AlertRule.OVERRUN, "queue:bulk")]
    assert "gone@h" in Alert.objects.get(rule=AlertRule.OVERRUN).message


# --- thresholds -----------------------------------------------------------------------------


def test_a_queue_threshold_beats_the_setting_and_a_task_threshold_beats_the_queue():
    job(state=State.QUEUED, queue="default", task="ops.ping", queued_at=ago(90))
    job(state=State.QUEUED, queue="default", task="ops.fail", queued_at=ago(150))
    AlertThreshold.objects.create(rule=AlertRule.LATENCY, scope=AlertScope.QUEUE, name="default", threshold=120)
    alerts_evaluate()
    # ops.ping's 90 s is under the queue's 120 s, ops.fail's 150 s is over: the queue alerts on the oldest.
    assert open_alerts() == [(AlertRule.LATENCY, "queue:default")]
    assert Alert.objects.get().threshold == 120

    AlertThreshold.objects.create(rule=AlertRule.LATENCY, scope=AlertScope.TASK, name="ops.fail", threshold=300)
    AlertThreshold.objects.create(rule=AlertRule.LATENCY, scope=AlertScope.TASK, name="ops.ping", threshold=30)
    alerts_evaluate()
    # Each task with a threshold of its own is judged alone: ops.fail (150 s) is under its 300 s.
    assert open_alerts() == [(AlertRule.LATENCY, "queue:default"), (AlertRule.LATENCY, "task:ops.ping")]
    assert Alert.objects.get(subject="task:ops.ping").threshold == 30


def test_a_disabled_threshold_turns_the_rule_off_for_its_queue(clean_redis):
    clean_redis.delete(consumer_key("bulk"))
    job(state=State.QUEUED, queue="bulk", task="reports.build", queued_at=ago(400))
    AlertThreshold.objects.create(
        rule=AlertRule.NO_CONSUMER, scope=AlertScope.QUEUE, name="bulk", threshold=1, enabled=False
    )
    AlertThreshold.objects.create(rule=AlertRule.LATENCY, scope=AlertScope.QUEUE, name="bulk", threshold=1000)
    alerts_evaluate()
    assert open_alerts() == []


# --- delivery -------------------------------------------------------------------------------


def test_an_opened_alert_is_delivered_to_subscribed_endpoints_only_and_mailed(endpoint, settings):
    WebhookEndpoint.objects.create(name="orders-only", url="http://127.0.0.1:9/orders", event_types=["order.paid"])
    settings.ALERT_EMAILS = ["ops@example.com"]
    job(state=State.QUEUED, queued_at=ago(90))
    alert = alerts_evaluate().opened[0]
    delivery = WebhookDelivery.objects.get()
    assert delivery.endpoint == endpoint and delivery.event == "alert.opened"
    assert delivery.payload["rule"] == "latency" and delivery.payload["id"] == alert.pk
    mail = Job.objects.get(task_name="alerts.mail")
    assert mail.payload == {"alert_id": alert.pk, "event": "opened"}


def test_no_mail_job_without_recipients():
    job(state=State.QUEUED, queued_at=ago(90))
    alerts_evaluate()
    assert not Job.objects.filter(task_name="alerts.mail").exists()


def test_the_alert_mail_names_the_rule_subject_and_event(mailoutbox, settings):
    settings.ALERT_EMAILS = ["ops@example.com"]
    job(state=State.QUEUED, queued_at=ago(90))
    alert = alerts_evaluate().opened[0]
    alert_mail(alert_id=alert.pk, event="opened")
    [mail] = mailoutbox
    assert mail.to == ["ops@example.com"]
    assert mail.subject == "[alert opened] Enqueue→start latency: queue:default"
    assert alert.message in mail.body
    assert mail.extra_headers["Message-ID"].startswith(f"<alert-{alert.pk}-opened@")


# --- overlapping evaluations ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_overlapping_evaluations_open_one_alert_and_queue_one_delivery(endpoint):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent writers need PostgreSQL (SQLite serialises every write)")
    job(state=State.QUEUED, queued_at=ago(90))
    barrier, opened, errors = threading.Barrier(4), [], []

    def evaluate() -> None:
        try:
            barrier.wait()
            opened.extend(alerts_evaluate().opened)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=evaluate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(opened) == 1
    assert Alert.objects.count() == 1
    assert WebhookDelivery.objects.filter(event="alert.opened").count() == 1


def test_the_evaluation_is_seeded_every_30_seconds_on_the_critical_queue():
    from project.celery import app
    from tasks.platform.services.schedules import ALERTS_EVALUATE_SCHEDULE

    seeded = PeriodicTask.objects.get(name=ALERTS_EVALUATE_SCHEDULE)
    assert (seeded.task, seeded.queue, seeded.enabled) == ("alerts.evaluate", "critical", True)
    assert (seeded.interval.every, seeded.interval.period) == (30, IntervalSchedule.SECONDS)
    assert seeded.task in app.tasks
