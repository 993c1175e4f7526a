"""Flow control (issue #23): a concurrency limit and a rate as the platform keeps them, and what
declaring a limit costs a drain.

Limit: ops.account jobs (a limit per account) over ACCOUNTS accounts, sent by enqueue_many to two
threads workers on the default queue, with a relay; while they drain, the bench samples the
ledger's started jobs per account every SAMPLE_SECONDS. Reported: the most seen running at once
for one account (at most the declared limit if the limit holds, though a sample can miss a peak),
and the time from the enqueue to the last finish.

Rate: ops.paced jobs (a rate for the task) sent at once to one prefork worker, with a relay, which
publishes each job delayed by the rate when its turn comes. Reported: the rate of their starts,
(jobs - 1) over the time from the first start to the last, and the most starts within any one
second (a window from each start).

Cost: drain.py's single-message drain (workers idle on an empty queue while it fills) of
ops.account jobs, each of an account of its own so that the limit never holds one back, against
ops.noop jobs, which declare no limit; the same workers measure both, and which side goes first
alternates from run to run.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter

from django.utils import timezone

from bench.context import Bench
from bench.figures import Results
from bench.jobs import NOOP, drain_timeout, ensure_published, ours_enqueue, wait_ours_done
from bench.processes import DEFAULT_TOPOLOGY, OURS, Topology, Workers, relay_running
from bench.scenarios.drain import Drain

LIMITED = "ops.account"
PACED = "ops.paced"
#: the accounts the limited jobs are spread over, round robin
ACCOUNTS = 3
#: how long each limited job runs
HOLD_SECONDS = 0.05
#: time between two samples of the running jobs
SAMPLE_SECONDS = 0.02
LIMIT_TOPOLOGY = Topology("threads-c8-x2", "threads", 8, processes=2)
RATE_TOPOLOGY = Topology("prefork-c4", "prefork", 4)


def reset(bench: Bench) -> None:
    """bench.reset(), and the flow keys (a key's lock and its rate's next turn) go too: they
    outlive the ledger, and each measurement starts with none."""
    from tasks.platform.models import FlowKey

    bench.reset()
    FlowKey.objects.all().delete()


def most_running(jobs: int, *, timeout: float) -> Counter[str]:
    """Until ``jobs`` limited jobs have finished, every SAMPLE_SECONDS, how many of them run per
    key: the most seen at once, per key."""
    from tasks.models import Job
    from tasks.platform.models.jobs import FINISHED_STATES

    ledger = Job.objects.filter(task_name=LIMITED)
    most: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while ledger.filter(state__in=FINISHED_STATES).count() < jobs:
        most |= Counter(ledger.filter(state=Job.State.STARTED).values_list("flow_key", flat=True))
        if time.monotonic() > deadline:
            raise SystemExit(f"{jobs} {LIMITED} jobs did not finish within {timeout}s")
        time.sleep(SAMPLE_SECONDS)
    return most


def concurrency_limit(bench: Bench, results: Results) -> None:
    from tasks.platform.concurrency import CONCURRENCY
    from tasks.platform.services.jobs import JobRequest, job_enqueue_many

    jobs, limit = bench.sizes.flow_limited, CONCURRENCY[LIMITED]
    requests = [
        JobRequest(LIMITED, {"account_id": f"account-{n % ACCOUNTS}", "hold_seconds": HOLD_SECONDS})
        for n in range(jobs)
    ]
    # drain_timeout's floor rate, plus the time the limit alone makes the jobs take
    timeout = drain_timeout(jobs) + jobs * HOLD_SECONDS / (ACCOUNTS * limit.running)
    with relay_running(bench.log_dir), Workers(OURS, LIMIT_TOPOLOGY, queues=[OURS.queue], log_dir=bench.log_dir):
        start = timezone.now()
        ensure_published(job_enqueue_many(requests=requests, owner=bench.owner, origin="bench"))
        most = most_running(jobs, timeout=timeout)
        last = wait_ours_done(jobs, timeout=timeout)
    reset(bench)
    seconds = (last - start).total_seconds()
    observed = max(most.values(), default=0)
    what = f"Concurrency limit: {jobs:,} {LIMITED} jobs of {HOLD_SECONDS:g} s over {ACCOUNTS} keys"
    results.figure(
        "flow.limit_running",
        f"{what}, {LIMIT_TOPOLOGY.label}, observed max running per key (declared {limit.running})",
        "jobs",
        baseline=None,
    ).record(observed, per_key=dict(most))
    results.figure("flow.limit_drain", f"{what}, {LIMIT_TOPOLOGY.label}, drain time", "s", baseline=None).record(
        seconds, jobs=jobs
    )
    print(f"    limit: max running per key {dict(most)} (declared {limit.running}), drained in {seconds:.2f} s")


def rate_limit(bench: Bench, results: Results) -> None:
    from tasks.models import Job
    from tasks.platform.concurrency import RATES
    from tasks.platform.services.jobs import JobRequest, job_enqueue_many

    jobs, rate = bench.sizes.flow_paced, RATES[PACED]
    requests = [JobRequest(PACED, {"hold_seconds": 0.0})] * jobs
    timeout = drain_timeout(jobs) + jobs * rate.interval.total_seconds()
    with relay_running(bench.log_dir), Workers(OURS, RATE_TOPOLOGY, queues=[OURS.queue], log_dir=bench.log_dir):
        ensure_published(job_enqueue_many(requests=requests, owner=bench.owner, origin="bench"))
        wait_ours_done(jobs, timeout=timeout)
    starts = sorted(
        moment.timestamp() for moment in Job.objects.filter(task_name=PACED).values_list("started_at", flat=True)
    )
    reset(bench)
    achieved = (jobs - 1) / (starts[-1] - starts[0])
    busiest = max(bisect.bisect_left(starts, start + 1) - index for index, start in enumerate(starts))
    what = f"Rate: {jobs:,} {PACED} jobs sent at once, {RATE_TOPOLOGY.label}"
    results.figure("flow.rate", f"{what}, achieved start rate (declared {rate.rate})", "jobs/s", baseline=None).record(
        achieved, jobs=jobs, seconds=starts[-1] - starts[0]
    )
    results.figure(
        "flow.rate_busiest_second",
        f"{what}, most starts in any one second (declared {rate.rate})",
        "starts",
        baseline=None,
    ).record(busiest, jobs=jobs)
    print(f"    rate: {achieved:.2f} starts/s, at most {busiest} in one second (declared {rate.rate})")


def drain_single(bench: Bench, workers: Workers, task_name: str, payloads: list) -> Drain:
    """drain.py's single-message drain, of ``task_name`` jobs with these payloads."""
    for payload in payloads:
        ours_enqueue(bench.owner, task_name, payload=payload)
    start = timezone.now()
    workers.consume(OURS.queue, instead_of=OURS.idle_queue)
    last = wait_ours_done(len(payloads), timeout=drain_timeout(len(payloads)))
    workers.consume(OURS.idle_queue, instead_of=OURS.queue)
    reset(bench)
    return Drain(len(payloads), (last - start).total_seconds())


def limit_cost(bench: Bench, results: Results) -> None:
    jobs = bench.sizes.drain_single
    figure = results.figure(
        "flow.limit_cost",
        f"Single-message drain with a concurrency limit declared (a key per job) vs none, {DEFAULT_TOPOLOGY.label}",
        "jobs/s",
        baseline="no limit",
    )
    payloads = {LIMITED: [{"account_id": f"account-{n}"} for n in range(jobs)], NOOP: [None] * jobs}
    order = [LIMITED, NOOP] if len(figure.ours_runs) % 2 == 0 else [NOOP, LIMITED]
    with Workers(OURS, DEFAULT_TOPOLOGY, queues=[OURS.idle_queue], log_dir=bench.log_dir) as workers:
        drained = {task_name: drain_single(bench, workers, task_name, payloads[task_name]) for task_name in order}
    limited, unlimited = drained[LIMITED], drained[NOOP]
    figure.record(
        limited.rate,
        unlimited.rate,
        jobs=jobs,
        first=order[0],
        limited_seconds=limited.seconds,
        unlimited_seconds=unlimited.seconds,
    )
    print(f"    limit declared: {limited.rate:,.0f}/s, none: {unlimited.rate:,.0f}/s")


def run(bench: Bench, results: Results) -> None:
    concurrency_limit(bench, results)
    rate_limit(bench, results)
    limit_cost(bench, results)
