"""Flow control with real workers and a real relay: pauses hold jobs across restarts and release
them in order, a concurrency limit holds across workers and survives a killed worker, and a
job that does not run says why (tasks.platform.engine.flow)."""

import os
import signal
import threading
import time
from collections import Counter

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from tasks.models import Job, Pause
from tasks.platform.queues import QueueName
from tasks.platform.selectors.flow import job_blocked
from tasks.platform.services.flow import flow_pause, flow_resume
from tasks.platform.services.jobs import JobRequest, job_enqueue, job_enqueue_many
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = QueueName.DEFAULT
LIMITED = "ops.account"  # Limit(2, key="account_id")
SHORT_VISIBILITY = {
    "BROKER_VISIBILITY_TIMEOUT": "6",
    "TASK_TIME_LIMIT": "5",
    "TASK_SOFT_TIME_LIMIT": "4",
    "BROKER_UNACKED_RESTORE_INTERVAL": "1",
}


def pings(count: int, hold: float = 0) -> list[Job]:
    return job_enqueue_many(requests=[JobRequest("ops.ping", {"hold_seconds": hold})] * count, origin="test")


def states(jobs: list[Job]) -> Counter:
    return Counter(Job.objects.filter(pk__in=[job.pk for job in jobs]).values_list("state", flat=True))


def test_a_pause_stops_new_starts_lets_a_running_job_finish_and_a_resume_runs_each_once_in_order(
    start_worker, start_relay, wait_for_job
):
    start_worker(QUEUE, concurrency=1)
    start_relay()
    running = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 2})
    wait_for_job(running.pk, Job.State.STARTED)
    before = pings(10)  # behind the running one in Redis

    pause = flow_pause(scope="queue", name=QUEUE, via="test")
    during = pings(10)  # accepted, held in the ledger

    wait_for_job(running.pk, Job.State.SUCCEEDED, timeout=20)
    wait_until(lambda: states(before) == Counter({Job.State.HELD: 10}), timeout=20, what="the sent jobs held")
    time.sleep(1)
    assert states(during) == Counter({Job.State.HELD: 10})
    assert not Job.objects.filter(started_at__gt=pause.at).exclude(pk=running.pk).exists()
    assert job_blocked(Job.objects.get(pk=during[0].pk)).code == "paused"

    assert flow_resume(scope="queue", name=QUEUE, via="test") == 20

    jobs = [*before, *during]
    wait_until(lambda: states(jobs) == Counter({Job.State.SUCCEEDED: 20}), timeout=60, what="every job to run")
    rows = list(Job.objects.filter(pk__in=[job.pk for job in jobs]).order_by("started_at"))
    assert {row.attempts for row in rows} == {1}
    assert [row.pk for row in rows] == [job.pk for job in jobs]  # one worker process: in their order


def test_a_pause_holds_across_restarts_and_a_worker_started_later_respects_it(start_worker, start_relay):
    flow_pause(scope="task", name="ops.ping", via="test")
    relay = start_relay()
    worker = start_worker(QUEUE)
    worker.stop()
    relay.stop()
    [job] = pings(1)

    start_worker(QUEUE, name="later")
    start_relay()
    time.sleep(3)
    assert Job.objects.get(pk=job.pk).state == Job.State.HELD
    assert Pause.objects.filter(scope="task", name="ops.ping").exists()

    flow_resume(scope="task", name="ops.ping", via="test")
    wait_until(lambda: Job.objects.filter(pk=job.pk, state=Job.State.SUCCEEDED).exists(), timeout=30, what="the job")


class Sampler:
    """Counts, every 20 ms from another connection, how many jobs of each key are started; keeps the
    largest count seen per key."""

    def __init__(self) -> None:
        self.most: Counter = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.02):
                started = Counter(
                    Job.objects.filter(task_name=LIMITED, state=Job.State.STARTED).values_list("flow_key", flat=True)
                )
                for key, count in started.items():
                    self.most[key] = max(self.most[key], count)
        finally:
            connection.close()


def test_a_concurrency_limit_per_key_holds_across_two_workers_of_eight_threads(start_worker, start_relay):
    for name in ("first", "second"):
        start_worker(QUEUE, name=name, concurrency=8, pool="threads")
    start_relay()
    requests = [JobRequest(LIMITED, {"account_id": f"acct-{n % 3}", "hold_seconds": 0.3}) for n in range(30)]

    with Sampler() as sampler:
        jobs = job_enqueue_many(requests=requests, origin="test")
        wait_until(lambda: states(jobs) == Counter({Job.State.SUCCEEDED: 30}), timeout=90, what="all 30 jobs")

    assert set(sampler.most) == {"acct-0", "acct-1", "acct-2"}
    assert max(sampler.most.values()) == 2, sampler.most  # the limit, reached and never passed
    assert {row.attempts for row in Job.objects.filter(pk__in=[job.pk for job in jobs])} == {1}


def test_a_killed_worker_gives_its_slots_back_and_the_jobs_finish(start_worker, start_relay):
    victim = start_worker(QUEUE, name="victim", concurrency=2, env=SHORT_VISIBILITY)
    start_relay()
    jobs = [
        job_enqueue(task_name=LIMITED, payload={"account_id": "acct", "hold_seconds": 3}, origin="test")
        for _ in range(4)
    ]
    wait_until(lambda: states(jobs)[Job.State.STARTED] == 2, timeout=20, what="two jobs to hold the slots")
    held = [job for job in jobs if Job.objects.get(pk=job.pk).state == Job.State.HELD]
    assert len(held) == 2
    assert job_blocked(Job.objects.get(pk=held[0].pk)).code == "concurrency"

    os.killpg(victim.pid, signal.SIGKILL)
    start_worker(QUEUE, name="survivor", concurrency=2, env=SHORT_VISIBILITY)

    with Sampler() as sampler:
        wait_until(lambda: states(jobs) == Counter({Job.State.SUCCEEDED: 4}), timeout=90, what="all four jobs")
    assert sampler.most["acct"] <= 2


def test_each_reason_shows_in_the_api_for_a_job_it_blocks_and_clears_with_it(
    start_worker, start_relay, client, user, auth
):
    start_relay()
    flow_pause(scope="queue", name=QueueName.BULK, via="test")
    paused = job_enqueue(task_name="ops.ping", queue=QueueName.BULK, owner=user, origin="test")
    scheduled = job_enqueue(task_name="ops.ping", delay=5, owner=user, origin="test")
    first = job_enqueue(task_name="ops.ping", payload={"hold_seconds": 1}, owner=user, origin="test")
    step = job_enqueue(task_name="ops.ping", after=first, owner=user, origin="test")
    unconsumed = job_enqueue(task_name="ops.ping", queue=QueueName.CRITICAL, owner=user, origin="test")
    limited = [
        job_enqueue(task_name=LIMITED, payload={"account_id": "x", "hold_seconds": 1}, owner=user, origin="test")
        for _ in range(3)
    ]

    def why(job: Job) -> str | None:
        blocked = client.get(f"/api/jobs/{job.pk}", **auth).json()["blocked"]
        return None if blocked is None else blocked["code"]

    assert [why(paused), why(scheduled), why(step), why(unconsumed), why(limited[2])] == [
        "paused",
        "scheduled",
        "workflow",
        "no_worker",
        "concurrency",
    ]

    flow_resume(scope="queue", name=QueueName.BULK, via="test")  # no bulk worker yet: the user's turn is taken
    shared = job_enqueue(task_name="ops.ping", queue=QueueName.BULK, owner=user, origin="test")
    assert why(shared) == "fair_share"

    start_worker(QUEUE)
    paced = [job_enqueue(task_name="ops.paced", owner=user, origin="test") for _ in range(10)]  # Rate("5/s")
    rated = Job.objects.filter(pk__in=[job.pk for job in paced], state=Job.State.SCHEDULED, held_reason="rate")
    wait_until(rated.exists, timeout=20, what="a paced job waiting for its turn")
    assert why(rated.order_by("-run_at").first()) == "rate"

    start_worker(QueueName.CRITICAL)
    start_worker(QueueName.BULK)
    for job in (paused, scheduled, first, step, unconsumed, *limited, shared, *paced):
        wait_until(lambda job=job: Job.objects.get(pk=job.pk).state == Job.State.SUCCEEDED, timeout=30, what="a job")
        assert why(job) is None
    assert Job.objects.get(pk=scheduled.pk).started_at >= scheduled.run_at
    assert timezone.now() > scheduled.run_at


def test_a_rate_of_five_a_second_holds_over_twenty_seconds_and_fails_nothing(start_worker, start_relay):
    start_worker(QUEUE, concurrency=4)
    start_relay()

    jobs = job_enqueue_many(requests=[JobRequest("ops.paced")] * 100, origin="test")  # Rate("5/s")
    wait_until(lambda: states(jobs) == Counter({Job.State.SUCCEEDED: 100}), timeout=90, what="all 100 jobs")

    rows = Job.objects.filter(pk__in=[job.pk for job in jobs])
    assert {row.attempts for row in rows} == {1}  # a wait for its turn is not an attempt
    starts = sorted(rows.values_list("started_at", flat=True))
    first = starts[0]
    per_second = Counter(int((start - first).total_seconds()) for start in starts)
    assert (starts[-1] - first).total_seconds() >= 19  # 100 starts at 5 a second
    assert max(per_second.values()) <= 6, per_second  # the rate, and one start of tolerance


def test_a_second_owners_job_starts_before_the_first_owners_backlog_drains(start_worker, start_relay):
    alice, bob = (get_user_model().objects.create_user(name) for name in ("fair-alice", "fair-bob"))
    start_worker(QueueName.BULK, concurrency=2)
    start_relay()
    backlog = job_enqueue_many(
        requests=[JobRequest("ops.ping", queue=QueueName.BULK)] * 2000, owner=alice, origin="test"
    )
    alices = Job.objects.filter(owner=alice)
    wait_until(lambda: alices.filter(state=Job.State.SUCCEEDED).count() >= 20, timeout=30, what="alice's jobs to flow")
    assert job_blocked(Job.objects.get(pk=backlog[-1].pk)).code == "fair_share"

    single = job_enqueue(task_name="ops.ping", queue=QueueName.BULK, owner=bob, origin="test")
    wait_until(lambda: Job.objects.get(pk=single.pk).state == Job.State.SUCCEEDED, timeout=30, what="bob's job")

    started = Job.objects.get(pk=single.pk).started_at
    assert alices.filter(Q(started_at__isnull=True) | Q(started_at__gt=started)).count() > 1000
    # Only alice's share of the queue (and the runs already under way) went before bob's job.
    ahead = alices.filter(started_at__gt=single.created_at, started_at__lt=started).count()
    assert ahead <= settings.FAIR_SHARE_DEPTH + 2, ahead
