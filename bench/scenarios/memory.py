"""Worker memory as jobs go through: resident memory after 1,000 jobs and after 100,000.

One worker in the default queue's topology, fed through job_enqueue_many while it runs. The
figure is the resident set of the worker and its pool processes, summed (psutil), once the
ledger has every job succeeded.
"""

from __future__ import annotations

from bench.context import Bench
from bench.figures import Results, ratio_at_most
from bench.jobs import drain_timeout, ours_enqueue_many, wait_ours_done
from bench.processes import DEFAULT_TOPOLOGY, OURS, Workers

MIB = 2**20
#: jobs per job_enqueue_many call while the worker runs
CALL_SIZE = 5_000


def run(bench: Bench, results: Results) -> None:
    small, large = bench.sizes.memory_small, bench.sizes.memory_large
    with Workers(OURS, DEFAULT_TOPOLOGY, queues=[OURS.queue], log_dir=bench.log_dir) as workers:
        ours_enqueue_many(small, bench.owner)
        wait_ours_done(small, timeout=drain_timeout(small), interval=0.1)
        after_small = workers.rss_bytes() / MIB
        ours_enqueue_many(large - small, bench.owner, call_size=CALL_SIZE)
        wait_ours_done(large, timeout=drain_timeout(large), interval=0.2)
        after_large = workers.rss_bytes() / MIB
    bench.reset()
    figure = results.figure(
        "memory.rss",
        f"Worker resident memory ({DEFAULT_TOPOLOGY.label}) after {large:,} jobs, vs after {small:,}",
        "MiB",
        goal=ratio_at_most(1.1),
        baseline=f"after {small:,} jobs",
    )
    figure.record(after_large, after_small, small=small, large=large)
    print(f"    {after_small:.1f} MiB after {small:,} jobs, {after_large:.1f} MiB after {large:,}")
