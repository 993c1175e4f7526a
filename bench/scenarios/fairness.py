"""Fair share (issue #23): user B's single job on the bulk queue, enqueue to start, while user A's
backlog sits on the same queue, against the same with the queue idle.

One bulk worker (BULK_TOPOLOGY) and a relay. Idle: B's ops.noop jobs one at a time, each waited
for. Loaded: A enqueues ``fair_backlog`` ops.noop jobs on bulk (enqueue_many, 1,000 a call); once
the worker is on them, B's jobs are measured the same way, and the bench checks that A's backlog
had not drained by the last sample. A's jobs are short, so the worker is never idle and B's job
waits behind what is in the queue ahead of it: A's share (FAIR_SHARE_DEPTH) and the run under way.
"""

from __future__ import annotations

import time

from bench.context import Bench
from bench.figures import Results, percentile, ratio_at_most
from bench.processes import BULK_TOPOLOGY, OURS, Workers, relay_running
from bench.scenarios.latency import GAP_SECONDS, WARM_UP, JobEvents, ours_start_ms
from tests.support.processes import wait_until

#: user B: the bench user is user A
SECOND_USER = "bench-b"


def b_starts(bench: Bench, listener: JobEvents, owner, count: int) -> list[float]:
    """B's ops.noop jobs on bulk, one at a time, each waited for: ms from the call to each start."""
    starts = []
    for _ in range(count):
        starts.append(ours_start_ms(bench, listener, queue="bulk", owner=owner))
        time.sleep(GAP_SECONDS)
    return starts


def run(bench: Bench, results: Results) -> None:
    from django.contrib.auth import get_user_model

    from tasks.models import Job
    from tasks.platform.services.jobs import JobRequest, job_enqueue_many

    sizes = bench.sizes
    b_user, _ = get_user_model().objects.get_or_create(username=SECOND_USER)
    listener = JobEvents()
    try:
        with relay_running(bench.log_dir), Workers(OURS, BULK_TOPOLOGY, queues=["bulk"], log_dir=bench.log_dir):
            b_starts(bench, listener, b_user, WARM_UP)
            idle = b_starts(bench, listener, b_user, sizes.fair_samples)
            backlog = [JobRequest("ops.noop", queue="bulk")]
            for start in range(0, sizes.fair_backlog, 1000):
                count = min(1000, sizes.fair_backlog - start)
                job_enqueue_many(requests=backlog * count, owner=bench.owner, origin="bench")
            a_jobs = Job.objects.filter(queue="bulk", owner=bench.owner)
            wait_until(a_jobs.filter(started_at__isnull=False).exists, timeout=30, what="the worker on A's backlog")
            loaded = b_starts(bench, listener, b_user, sizes.fair_samples)
            a_waiting = a_jobs.filter(started_at__isnull=True).count()
    finally:
        listener.close()
    bench.reset()
    if a_waiting == 0:
        raise SystemExit("A's backlog drained before B's last sample: the loaded figure is not under load")
    figure = results.figure(
        "fairness.b_start_p95",
        f"User B's bulk job: enqueue to start, p95, while {sizes.fair_backlog:,} of user A's wait "
        f"({BULK_TOPOLOGY.label}), vs idle",
        "ms",
        goal=ratio_at_most(2),
        baseline="idle",
    )
    figure.record(
        percentile(loaded, 95),
        percentile(idle, 95),
        loaded_p50=percentile(loaded, 50),
        idle_p50=percentile(idle, 50),
        a_jobs_still_waiting=a_waiting,
    )
    figure.add_samples("idle", idle)
    figure.add_samples(f"{sizes.fair_backlog:,} of A's jobs waiting", loaded)
    results.figure(
        "fairness.b_start_p50",
        f"User B's bulk job: enqueue to start, p50, while {sizes.fair_backlog:,} of user A's wait "
        f"({BULK_TOPOLOGY.label}), vs idle",
        "ms",
        goal=ratio_at_most(2),
        baseline="idle",
    ).record(percentile(loaded, 50), percentile(idle, 50))
    print(
        f"    B's start p50/p95: {percentile(loaded, 50):.2f}/{percentile(loaded, 95):.2f} ms with A's backlog, "
        f"{percentile(idle, 50):.2f}/{percentile(idle, 95):.2f} ms idle ({a_waiting:,} of A's still waiting)"
    )
