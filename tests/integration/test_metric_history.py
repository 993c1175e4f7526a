"""The metric history with real processes: a worker runs jobs of known outcome (batched and alone,
succeeded, retried, dead), the relay copies the counts from Redis into the database, and the
history, its JSON and Flower's /metrics count them exactly, with every duration in its bucket.
Real Redis, worker, relay and Flower; nothing mocked."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tasks.models import Job, JobAttempt, JobMetric
from tasks.platform import histogram
from tasks.platform.models import MetricPeriod
from tasks.platform.queues import QueueName
from tasks.platform.selectors.metric_history import metric_history
from tasks.platform.services.jobs import JobRequest, job_enqueue, job_enqueue_many
from tests.support.flower import FLOWER_AUTH
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

NOOPS, DEAD, PINGS, RETRIED = 20, 10, 4, 2
PING_HOLD = 0.3


def summed(period: str, task: str) -> dict[str, object]:
    """A task's counts and histograms over every row of ``period`` (the test spans few of them)."""
    rows = JobMetric.objects.filter(period=period, queue=QueueName.DEFAULT, task_name=task)
    out: dict[str, object] = {
        name: sum(getattr(row, name) for row in rows) for name in ("enqueued", "started", "succeeded", "failed", "dead")
    }
    out["wait"] = histogram.merged(row.wait for row in rows)
    out["run"] = histogram.merged(row.run for row in rows)
    return out


def buckets(durations) -> list[int]:
    counts = histogram.empty()
    for seconds in durations:
        counts[histogram.bucket_of(seconds)] += 1
    return counts


def run_buckets(task: str) -> list[int]:
    """Each ended run's duration as the ledger recorded it (attempt start to end), bucketed."""
    attempts = JobAttempt.objects.filter(
        job__task_name=task, outcome__in=[JobAttempt.Outcome.SUCCEEDED, JobAttempt.Outcome.FAILED]
    )
    return buckets((attempt.finished_at - attempt.started_at).total_seconds() for attempt in attempts)


def wait_buckets(task: str) -> list[int]:
    """Enqueue to start of jobs run once, from the ledger (queued at, the attempt's start), bucketed."""
    attempts = JobAttempt.objects.filter(job__task_name=task).select_related("job")
    return buckets((attempt.started_at - attempt.job.queued_at).total_seconds() for attempt in attempts)


def test_the_history_counts_jobs_of_known_outcome_exactly(start_worker, start_relay, start_flower, broker):
    noops = job_enqueue_many(requests=[JobRequest("ops.noop", {}) for _ in range(NOOPS)])  # batched
    dead = job_enqueue_many(requests=[JobRequest("ops.fail", {"mode": "permanent"}) for _ in range(DEAD)])
    pings = [job_enqueue(task_name="ops.ping", payload={"hold_seconds": PING_HOLD}) for _ in range(PINGS)]
    retried = [job_enqueue(task_name="ops.fail", payload={"mode": "transient"}, max_attempts=2) for _ in range(RETRIED)]
    start_relay()
    start_worker(QueueName.DEFAULT, concurrency=2)

    every = [*noops, *dead, *pings, *retried]
    wait_until(
        lambda: (
            Job.objects.filter(
                pk__in=[job.pk for job in every], state__in=[Job.State.SUCCEEDED, Job.State.DEAD]
            ).count()
            == len(every)
        ),
        timeout=60,
        what="every job to end",
    )
    assert set(Job.objects.filter(pk__in=[job.pk for job in retried]).values_list("state", flat=True)) == {"dead"}
    expected = {
        "ops.noop": {"enqueued": NOOPS, "started": NOOPS, "succeeded": NOOPS, "failed": 0, "dead": 0},
        "ops.ping": {"enqueued": PINGS, "started": PINGS, "succeeded": PINGS, "failed": 0, "dead": 0},
        # the transient ones: a failed first run, a dead second one; the permanent ones dead at once
        "ops.fail": {
            "enqueued": DEAD + RETRIED,
            "started": DEAD + 2 * RETRIED,
            "succeeded": 0,
            "failed": RETRIED,
            "dead": DEAD + RETRIED,
        },
    }

    def copied() -> bool:
        return all(
            {name: summed(MetricPeriod.HOUR, task)[name] for name in counts} == counts
            for task, counts in expected.items()
        )

    wait_until(copied, timeout=30, what="the relay to copy every count into the history")
    for task, counts in expected.items():
        for period in (MetricPeriod.MINUTE, MetricPeriod.HOUR):
            history = summed(period, task)
            assert {name: history[name] for name in counts} == counts, (task, period)
            # every run in the bucket of its duration as the ledger recorded it
            assert history["run"] == run_buckets(task), (task, period)
            assert sum(history["wait"]) == counts["started"]
        if task != "ops.fail":  # run once each: the ledger still has when they were queued
            assert summed(MetricPeriod.MINUTE, task)["wait"] == wait_buckets(task), task
    ping_runs = summed(MetricPeriod.MINUTE, "ops.ping")["run"]
    assert sum(ping_runs[: histogram.bucket_of(PING_HOLD)]) == 0  # none shorter than its hold

    # The JSON for the charts: the same totals, and the percentiles inside the buckets.
    ping = metric_history(range_name="1h", task="ops.ping")["total"]
    assert (ping["enqueued"], ping["succeeded"]) == (PINGS, PINGS)
    hold_bucket_floor = histogram.BOUNDS[histogram.bucket_of(PING_HOLD) - 1]  # a percentile is within its bucket
    assert hold_bucket_floor <= ping["run_seconds"]["p50"] <= ping["run_seconds"]["p99"] < PING_HOLD + 5

    # Flower's /metrics: the running totals as counters and histograms, which the parser reads.
    _, flower = start_flower()
    text = requests.get(f"{flower}/metrics", auth=FLOWER_AUTH, timeout=10).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["platform_job_events"].type == "counter"
    assert families["platform_job_wait_seconds"].type == "histogram"
    assert families["platform_job_run_seconds"].type == "histogram"
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families.values()
        for sample in family.samples
    }
    for task, counts in expected.items():
        for event, value in counts.items():
            labels = (("event", event), ("queue", "default"), ("task", task))
            assert samples[("platform_job_events_total", labels)] == value, (task, event)
        pair = (("queue", "default"), ("task", task))
        assert samples[("platform_job_run_seconds_count", pair)] == sum(run_buckets(task))
        every_run = (("le", "+Inf"), *pair)
        assert samples[("platform_job_run_seconds_bucket", every_run)] == sum(run_buckets(task))
        assert samples[("platform_job_wait_seconds_count", pair)] == counts["started"]
    below_hold = ("platform_job_run_seconds_bucket", (("le", "0.256"), ("queue", "default"), ("task", "ops.ping")))
    assert samples[below_hold] == 0
    assert samples[("platform_metrics_source_up", (("source", "history"),))] == 1

    # Flower's Metrics page: in the navigation, four charts, and the range's totals per task.
    assert requests.get(f"{flower}/charts", timeout=10).status_code == 401
    page = requests.get(f"{flower}/charts?range=1h", auth=FLOWER_AUTH, timeout=10)
    assert page.status_code == 200
    assert 'id="nav-metrics"' in page.text
    assert page.text.count('<svg class="platform-chart"') == 4
    row = page.text.split('id="metrics-per-task"', 1)[1].split("ops.noop</a>", 1)[1].split("</tr>", 1)[0]
    assert [cell.split("</td>")[0] for cell in row.split("<td>")[1:6]] == ["20", "20", "20", "0", "0"]
    one = requests.get(f"{flower}/charts?range=72h&queue=default&task=ops.ping", auth=FLOWER_AUTH, timeout=10)
    assert one.status_code == 200 and f"{PINGS} enqueued" in one.text
    for bad in ("range=2h", "queue=nope"):
        assert requests.get(f"{flower}/charts?{bad}", auth=FLOWER_AUTH, timeout=10).status_code == 400
