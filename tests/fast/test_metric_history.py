"""The metric history: histogram buckets and percentiles, the counts each engine transition adds in
Redis, the relay's copy into minute and hour rows (idempotent, late counts, bounded), pruning,
a Redis outage, and the JSON endpoint's access and input checks."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone

from tasks.models import Job, JobMetric
from tasks.platform import histogram, metric_counts
from tasks.platform.api.metrics import HistoryFilters
from tasks.platform.models import MetricPeriod
from tasks.platform.selectors.metric_history import RANGES, metric_history
from tasks.platform.services.metric_history import HOURS_KEPT, MINUTES_KEPT, metrics_flush, metrics_prune
from tests.fast.conftest import claim, enqueue, fail, noops, run
from tests.fixtures import grant

pytestmark = pytest.mark.django_db

#: 10:00 UTC on a fixed day, and its minute since the epoch
TEN = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def at(moment: datetime) -> float:
    return moment.timestamp()


def totals(queue: str, task: str) -> metric_counts.Tally:
    return metric_counts.totals().get((queue, task), metric_counts.Tally())


def bucket_range(seconds: float) -> tuple[float, float]:
    index = histogram.bucket_of(seconds)
    return (histogram.BOUNDS[index - 1] if index else 0.0), histogram.BOUNDS[index]


# -- histogram -------------------------------------------------------------------------------------


def test_buckets_are_log_spaced_and_hold_their_upper_bound():
    bounds = histogram.BOUNDS
    assert bounds[0] == 0.001
    assert all(1.18 < later / earlier < 1.2 for earlier, later in itertools.pairwise(bounds))
    assert bounds[-1] > 3600  # an hour's run still has a bucket of its own
    assert histogram.bucket_of(0.001) == 0  # le: a bound is in its own bucket
    assert histogram.bucket_of(0.0010001) == 1
    assert histogram.bucket_of(-5) == 0  # clocks apart
    assert histogram.bucket_of(10**6) == len(bounds)  # the overflow
    assert len(bounds) + 1 == histogram.SIZE


def test_percentiles_from_bucket_counts_are_within_a_bucket_of_the_truth():
    values = [0.005 * 1.01**i for i in range(500)]  # 5 ms to about 0.7 s
    counts = histogram.empty()
    for value in values:
        counts[histogram.bucket_of(value)] += 1
    for q in (0.5, 0.95, 0.99):
        truth = sorted(values)[math.ceil(q * len(values)) - 1]
        low, high = bucket_range(truth)
        assert low <= histogram.percentile(counts, q) <= high * 1.0001, q
    assert histogram.percentiles(histogram.empty()) == {"p50": None, "p95": None, "p99": None}


def test_histograms_add_up_and_their_percentile_is_that_of_all_values():
    fast, slow = histogram.empty(), histogram.empty()
    for _ in range(90):
        fast[histogram.bucket_of(0.01)] += 1
    for _ in range(10):
        slow[histogram.bucket_of(2.0)] += 1
    both = histogram.merged([fast, slow])
    assert sum(both) == 100
    low, high = bucket_range(0.01)
    assert low <= histogram.percentile(both, 0.5) <= high
    low, high = bucket_range(2.0)
    assert low <= histogram.percentile(both, 0.95) <= high
    cumulative = histogram.cumulative(both)
    assert cumulative[-1] == (math.inf, 100)
    assert [count for _, count in cumulative] == sorted(count for _, count in cumulative)  # never decreasing
    assert dict(cumulative)[1.024] == 90  # an exposed bound between the two


# -- counts in Redis, from the engine's transitions -----------------------------------------------


def test_each_transition_counts_once_with_its_durations(engine, broker):
    job = enqueue("ops.ping")
    Job.objects.filter(pk=job.pk).update(queued_at=timezone.now() - timedelta(seconds=3))
    attempt = run(engine, job)
    after_start = totals("default", "ops.ping")
    assert after_start.started == 1
    assert sum(after_start.wait) == 1
    low, high = bucket_range(3.0)
    assert low < histogram.percentile(after_start.wait, 0.5) <= high * 1.2  # one bucket further: the test's time
    assert 3_000_000 <= after_start.wait_us < 4_000_000

    engine.succeed(job_id=str(job.pk), attempt=attempt, result={"ok": True})
    ended = totals("default", "ops.ping")
    assert (ended.succeeded, ended.failed, ended.dead) == (1, 0, 0)
    assert sum(ended.run) == 1

    other = enqueue("ops.ping")
    fail(engine, other, run(engine, other), Job.State.RETRYING, retry_at=timezone.now())
    again = enqueue("ops.ping")
    fail(engine, again, run(engine, again), Job.State.DEAD)
    ended = totals("default", "ops.ping")
    assert (ended.started, ended.succeeded, ended.failed, ended.dead) == (3, 1, 1, 1)
    assert sum(ended.run) == 3


def test_a_batch_counts_each_of_its_jobs_in_one_call_per_transition(engine, broker, monkeypatch):
    jobs = noops(5)
    calls = []
    original = metric_counts.count
    monkeypatch.setattr(metric_counts, "count", lambda **kw: calls.append(kw) or original(**kw))
    attempts = claim(engine, jobs)
    engine.succeed_many(results={job_id: None for job_id in list(attempts)[:4]}, attempts=attempts)
    last = jobs[-1]
    fail(engine, last, attempts[str(last.pk)], Job.State.FAILED)
    assert len(calls) == 3  # the claim, the successes, the failure
    counted = totals("default", "ops.noop")
    assert (counted.started, counted.succeeded, counted.failed) == (5, 4, 1)
    assert sum(counted.wait) == 5 and sum(counted.run) == 5


def test_an_insert_counts_its_new_jobs_once_after_commit(broker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        noops(7)
        enqueue("ops.ping", idempotency_key="k")
        enqueue("ops.ping", idempotency_key="k")  # the same job again: not a new one
    for callback in callbacks:
        if getattr(callback, "func", None) is metric_counts.count:
            callback()
    assert totals("default", "ops.noop").enqueued == 7
    assert totals("default", "ops.ping").enqueued == 1


def test_a_redis_outage_loses_counts_and_fails_nothing(engine, broker, monkeypatch, caplog):
    from tests.support.processes import free_port

    dead = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    monkeypatch.setattr(metric_counts, "platform_redis", lambda: dead)
    monkeypatch.setitem(metric_counts._outage, "until", 0.0)
    monkeypatch.setitem(metric_counts._outage, "logged_at", float("-inf"))
    monkeypatch.setitem(metric_counts._outage, "lost", 0)
    job = enqueue("ops.ping")
    attempt = run(engine, job)
    engine.succeed(job_id=str(job.pk), attempt=attempt, result=None)
    assert Job.objects.get(pk=job.pk).state == Job.State.SUCCEEDED
    assert "metric history: 1 count(s) lost" in caplog.text  # logged once; the next loss comes in the pause
    assert metric_counts._outage["lost"] == 2
    monkeypatch.undo()  # Redis back, and the outage forgotten
    assert totals("default", "ops.ping").succeeded == 0


# -- the relay's copy: minute rows, hour rows, pruning ---------------------------------------------


def minute_row(start: datetime, queue: str = "default", task: str = "ops.noop") -> JobMetric:
    return JobMetric.objects.get(period=MetricPeriod.MINUTE, start=start, queue=queue, task_name=task)


def hour_row(start: datetime, queue: str = "default", task: str = "ops.noop") -> JobMetric:
    return JobMetric.objects.get(period=MetricPeriod.HOUR, start=start, queue=queue, task_name=task)


def test_the_copy_writes_minutes_and_their_hours_exactly_and_again_the_same(broker):
    noop = ("default", "ops.noop")
    metric_counts.count(enqueued=[noop] * 3, at=at(TEN + timedelta(minutes=1, seconds=5)))
    metric_counts.count(started=[(*noop, 0.2)] * 2, at=at(TEN + timedelta(minutes=1, seconds=50)))
    metric_counts.count(ended=[("succeeded", *noop, 1.5)], at=at(TEN + timedelta(minutes=2)))
    metric_counts.count(ended=[("dead", *noop, None)], at=at(TEN + timedelta(hours=1, minutes=3)))

    now = TEN + timedelta(hours=1, minutes=10)
    assert metrics_flush(now=now) == 3
    first = minute_row(TEN + timedelta(minutes=1))
    assert (first.enqueued, first.started, first.succeeded) == (3, 2, 0)
    assert first.wait[histogram.bucket_of(0.2)] == 2 and sum(first.wait) == 2
    assert first.wait_us == 400_000
    assert minute_row(TEN + timedelta(minutes=2)).run[histogram.bucket_of(1.5)] == 1
    ten = hour_row(TEN)
    assert (ten.enqueued, ten.started, ten.succeeded, ten.dead) == (3, 2, 1, 0)
    assert sum(ten.wait) == 2 and sum(ten.run) == 1
    assert hour_row(TEN + timedelta(hours=1)).dead == 1
    assert metric_counts.minutes_listed(until=10**12) == []  # every minute copied for good

    # A count that arrives late (a process whose clock is behind) lists its minute again: the next
    # copy writes the minute's whole count, the hour follows, and nothing is counted twice.
    metric_counts.count(enqueued=[noop], at=at(TEN + timedelta(minutes=1, seconds=30)))
    metrics_flush(now=now)
    metrics_flush(now=now)
    assert minute_row(TEN + timedelta(minutes=1)).enqueued == 4
    assert hour_row(TEN).enqueued == 4
    assert JobMetric.objects.count() == 5


def test_the_open_minute_is_copied_as_it_grows_and_kept_listed(broker):
    now = TEN + timedelta(minutes=5, seconds=30)
    metric_counts.count(enqueued=[("bulk", "ops.noop")], at=at(now))
    metrics_flush(now=now)
    assert minute_row(TEN + timedelta(minutes=5), queue="bulk").enqueued == 1
    metric_counts.count(enqueued=[("bulk", "ops.noop")] * 2, at=at(now))
    metrics_flush(now=now)
    assert minute_row(TEN + timedelta(minutes=5), queue="bulk").enqueued == 3
    assert hour_row(TEN, queue="bulk").enqueued == 3
    assert metric_counts.minutes_listed(until=10**12) == [int(at(now) // 60)]


def test_storage_is_one_row_per_period_and_pair_whatever_the_job_count(broker):
    noop = ("default", "ops.noop")
    moment = at(TEN + timedelta(minutes=7))
    for _ in range(20):
        metric_counts.count(
            enqueued=[noop] * 500,
            started=[(*noop, 0.01 * i) for i in range(500)],
            ended=[("succeeded", *noop, 0.02 * i) for i in range(500)],
            at=moment,
        )
    metrics_flush(now=TEN + timedelta(minutes=8))
    assert JobMetric.objects.count() == 2  # the minute and its hour
    row = minute_row(TEN + timedelta(minutes=7))
    assert (row.enqueued, row.started, row.succeeded) == (10_000, 10_000, 10_000)
    assert len(row.wait) == len(row.run) == histogram.SIZE
    assert len(broker.hgetall(metric_counts.TOTALS)) < 3 * histogram.SIZE


def test_prune_keeps_72_hours_of_minutes_and_30_days_of_hours(broker):
    now = TEN
    for period, kept in ((MetricPeriod.MINUTE, MINUTES_KEPT), (MetricPeriod.HOUR, HOURS_KEPT)):
        for start in (now - kept - timedelta(minutes=1), now - kept + timedelta(minutes=1)):
            JobMetric.objects.create(period=period, start=start, queue="default", task_name="ops.noop")
    assert metrics_prune(now=now) == 2
    kept_rows = JobMetric.objects.values_list("period", "start")
    assert set(kept_rows) == {
        (MetricPeriod.MINUTE, now - MINUTES_KEPT + timedelta(minutes=1)),
        (MetricPeriod.HOUR, now - HOURS_KEPT + timedelta(minutes=1)),
    }
    assert timedelta(hours=72) <= MINUTES_KEPT
    assert timedelta(days=30) <= HOURS_KEPT


# -- reads for the charts --------------------------------------------------------------------------


def test_history_has_every_step_and_filters_by_queue_and_task(broker):
    metric_counts.count(enqueued=[("default", "ops.noop")] * 2, at=at(TEN - timedelta(minutes=3)))
    metric_counts.count(enqueued=[("critical", "ops.ping")], at=at(TEN - timedelta(minutes=3)))
    metric_counts.count(started=[("critical", "ops.ping", 0.05)], at=at(TEN - timedelta(minutes=3)))
    metrics_flush(now=TEN)

    every = metric_history(range_name="1h", now=TEN)
    assert len(every["points"]) == 60 and every["step_seconds"] == 60
    assert every["points"][-1]["start"] == TEN
    assert every["total"]["enqueued"] == 3
    assert every["queues"] == ["critical", "default"] and every["tasks"] == ["ops.noop", "ops.ping"]
    point = next(point for point in every["points"] if point["start"] == TEN - timedelta(minutes=3))
    assert point["enqueued"] == 3
    low, high = bucket_range(0.05)
    assert low <= point["wait_seconds"]["p99"] <= high

    ping = metric_history(range_name="1h", task="ops.ping", now=TEN)
    assert ping["total"]["enqueued"] == 1
    assert metric_history(range_name="1h", queue="bulk", now=TEN)["total"]["enqueued"] == 0
    assert metric_history(range_name="72h", now=TEN)["total"]["enqueued"] == 3  # from the hour rows
    assert len(metric_history(range_name="30d", now=TEN)["points"]) == 120
    assert set(RANGES) == set(HistoryFilters.model_fields["range"].annotation.__args__)


# -- the JSON endpoint -----------------------------------------------------------------------------


def test_the_history_endpoint_is_for_staff_who_see_every_job(broker):
    User = get_user_model()
    url = "/api/metrics/history?range=1h"
    assert Client().get(url).status_code == 401
    customer = Client()
    customer.force_login(User.objects.create_user("customer"))
    refused = customer.get(url)
    assert refused.status_code == 403 and refused.json()["code"] == "permission_required"
    bare_staff = Client()
    bare_staff.force_login(User.objects.create_user("bare-staff", is_staff=True))
    assert bare_staff.get(url).status_code == 403
    viewer = Client()
    viewer.force_login(grant(User.objects.create_user("viewer", is_staff=True), "view_job"))
    answer = viewer.get(url)
    assert answer.status_code == 200
    assert answer.json()["range"] == "1h" and len(answer.json()["points"]) == 60
    one = viewer.get("/api/metrics/history?range=30d&queue=default&task=ops.noop").json()
    assert (one["queue"], one["task"], one["step_seconds"], len(one["points"])) == ("default", "ops.noop", 21600, 120)


@pytest.mark.parametrize(
    ("query", "field"),
    [("range=2h", "range"), ("queue=nope", "queue"), ("task=%20bad", "task"), (f"task={'a' * 201}", "task")],
)
def test_the_history_endpoint_names_a_bad_parameter(broker, query, field):
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", "root@example.com", None))
    answer = client.get(f"/api/metrics/history?{query}")
    assert answer.status_code == 422
    body = answer.json()
    assert body["code"] == "invalid_request"
    assert [error["field"] for error in body["errors"]] == [field]


# -- admin -----------------------------------------------------------------------------------------


def test_admin_shows_each_queues_charts_above_the_read_only_rows(broker):
    metric_counts.count(enqueued=[("bulk", "ops.noop")] * 3, started=[("bulk", "ops.noop", 0.4)])
    metrics_flush()
    User = get_user_model()
    root = Client()
    root.force_login(User.objects.create_superuser("root", "root@example.com", None))
    page = root.get("/admin/tasks/jobmetric/")
    assert page.status_code == 200
    text = page.content.decode()
    assert text.count('<svg class="platform-chart"') == 2 * 3  # throughput and latency of each queue
    bulk = text.split('id="queue-charts-bulk"', 1)[1].split("</section>", 1)[0]
    assert "3 enqueued, 0 succeeded" in bulk
    assert root.get("/admin/tasks/jobmetric/add/").status_code == 403  # the relay writes the rows
    staff = Client()
    staff.force_login(User.objects.create_user("staff-only", is_staff=True))
    assert staff.get("/admin/tasks/jobmetric/").status_code == 403
