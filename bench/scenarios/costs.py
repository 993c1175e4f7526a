"""What a job costs over its whole life (enqueue, run, finish): Redis commands and SQL statements.

Redis commands: the broker's INFO commandstats before N jobs are enqueued (the workers up, waiting
on an empty queue) and once the workers, told to consume them, have them all done; divided by N.
The bench's own INFO calls are left out, and so are the commands it spends watching raw Celery's
queue (counted as it makes them); the two control broadcasts that start the drain stay in.

SQL statements: the platform's workers run with bench.settings (bench.statement_counter), counting
in a Redis of its own (so the broker's commandstats do not see the counting), and the statements
of the enqueue in the bench process (insert and publish mark) are counted by a Django execute
wrapper. The bench's own polling of the ledger runs outside both.
"""

from __future__ import annotations

import redis
from django.db import connection

from bench.context import Bench
from bench.environment import broker_client
from bench.figures import Results, at_most, over_raw_at_most
from bench.jobs import drain_timeout, ours_enqueue, ours_enqueue_many, raw_delay, wait_ours_done, wait_raw_drained
from bench.processes import DEFAULT_TOPOLOGY, OURS, RAW, Workers
from bench.statement_counter import COUNTER_KEY, counted_env

#: each poll of wait_raw_drained: LLEN and HLEN
COMMANDS_PER_POLL = 2


def commands_so_far() -> int:
    """Commands the broker has run, INFO left out (the bench's own calls to read this)."""
    stats = broker_client().info("commandstats")
    return sum(entry["calls"] for name, entry in stats.items() if name != "cmdstat_info")


class StatementCount:
    """A Django execute wrapper counting the statements this process runs while it is installed."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute, sql, params, many, context):
        self.count += 1
        return execute(sql, params, many, context)


def raw_commands(bench: Bench, workers: Workers, jobs: int) -> float:
    before = commands_so_far()
    raw_delay(jobs)
    workers.consume(RAW.queue, instead_of=RAW.idle_queue)
    polls = wait_raw_drained(timeout=drain_timeout(jobs))
    spent = commands_so_far() - before - polls * COMMANDS_PER_POLL
    workers.consume(RAW.idle_queue, instead_of=RAW.queue)
    bench.reset()
    return spent / jobs


def ours_costs(bench: Bench, workers: Workers, jobs: int, *, batched: bool) -> tuple[float, float]:
    """Redis commands and SQL statements per job."""
    counter = redis.Redis.from_url(bench.counter_url)
    counter.set(COUNTER_KEY, 0)  # the workers' start-up statements, and earlier jobs', are not these jobs'
    before = commands_so_far()
    enqueue_statements = StatementCount()
    with connection.execute_wrapper(enqueue_statements):
        if batched:
            ours_enqueue_many(jobs, bench.owner)
        else:
            for _ in range(jobs):
                ours_enqueue(bench.owner)
    workers.consume(OURS.queue, instead_of=OURS.idle_queue)
    wait_ours_done(jobs, timeout=drain_timeout(jobs), interval=0.05)
    commands = commands_so_far() - before
    statements = int(counter.get(COUNTER_KEY) or 0) + enqueue_statements.count
    workers.consume(OURS.idle_queue, instead_of=OURS.queue)
    bench.reset()
    return commands / jobs, statements / jobs


def run(bench: Bench, results: Results) -> None:
    jobs = bench.sizes.cost_jobs
    # Raw alone first, so that ours' idle workers add nothing to its commands; then ours.
    with Workers(RAW, DEFAULT_TOPOLOGY, queues=[RAW.idle_queue], log_dir=bench.log_dir) as workers:
        raw = raw_commands(bench, workers, jobs)
    counted = counted_env(bench.counter_url)
    with Workers(OURS, DEFAULT_TOPOLOGY, queues=[OURS.idle_queue], log_dir=bench.log_dir, env=counted) as workers:
        measured = {batched: ours_costs(bench, workers, jobs, batched=batched) for batched in (False, True)}
    for batched, (commands, statements) in measured.items():
        how = "sent by enqueue_many" if batched else "sent one by one (job_enqueue)"
        kind = "batched" if batched else "single"
        results.figure(
            f"costs.redis_{kind}",
            f"Redis commands per no-op job {how}, enqueue to finish, vs raw .delay()",
            "commands/job",
            goal=over_raw_at_most(5),
        ).record(commands, raw, jobs=jobs)
        results.figure(
            f"costs.db_{kind}",
            f"SQL statements per no-op job {how}, enqueue to finish",
            "statements/job",
            goal=at_most(4, "statements"),
            baseline=None,
        ).record(statements, jobs=jobs)
        print(f"    {kind}: {commands:.2f} Redis commands/job (raw {raw:.2f}), {statements:.2f} SQL statements/job")
