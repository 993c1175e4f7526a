"""Drain throughput: a queue filled while the workers wait on an empty one, then drained.

Per topology, raw Celery's workers and ours start together and wait, each on an empty queue of
their own. For each measurement the bench fills the queue, tells the workers to consume it (so
their start-up is not timed), and puts them back on the empty queue once it is drained: raw
first, then ours, the side not measured idle. Ours is done when the ledger has every job
succeeded (the time is the last ``finished_at``); raw Celery when its queue is empty and no
delivery is left unacknowledged.

The no-op drain of jobs sent one a message has a second counterpart, Celery +
django-celery-results (bench.dcr_app), whose workers start and wait with the others and are
measured between raw and ours: its queue filled by ``.delay()``, done when every task's
TaskResult row is SUCCESS (the time is the last ``date_done``). It is a figure of its own beside
the one against raw Celery, with the same runs of ours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from django.utils import timezone

from bench.context import Bench
from bench.figures import CELERY_RESULTS, Results, at_least, ratio_at_least
from bench.jobs import (
    dcr_clear,
    dcr_fill,
    dcr_migrate,
    drain_timeout,
    ours_enqueue,
    ours_enqueue_many,
    raw_fill,
    wait_dcr_done,
    wait_ours_done,
    wait_raw_drained,
)
from bench.processes import DCR, DEFAULT_TOPOLOGY, OURS, RAW, Topology, Workers, running_together

NOOP_TOPOLOGIES = [DEFAULT_TOPOLOGY, Topology("solo-x2", "solo", 1, processes=2)]
IO_TOPOLOGIES = [
    Topology("prefork-c8", "prefork", 8),
    Topology("prefork-c16", "prefork", 16),
    Topology("threads-c16", "threads", 16),
    Topology("threads-c16-x2", "threads", 16, processes=2),
]
#: --smoke: one topology each, so that the whole smoke run stays short
SMOKE_NOOP_TOPOLOGIES = NOOP_TOPOLOGIES[:1]
SMOKE_IO_TOPOLOGIES = [IO_TOPOLOGIES[2]]
NOOP_GOAL = ratio_at_least(0.8)
#: ours against Celery + django-celery-results, jobs sent one a message
CELERY_RESULTS_GOAL = ratio_at_least(2)
IO_GOAL = at_least(3500, "jobs/s")


@dataclass(frozen=True)
class Drain:
    jobs: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def both_sides(bench: Bench, topology: Topology) -> tuple[Workers, Workers]:
    return (
        Workers(RAW, topology, queues=[RAW.idle_queue], log_dir=bench.log_dir),
        Workers(OURS, topology, queues=[OURS.idle_queue], log_dir=bench.log_dir),
    )


def drain_raw(bench: Bench, workers: Workers, jobs: int, *, io_ms: float = 0) -> Drain:
    raw_fill(jobs, io_ms=io_ms)
    start = time.perf_counter()
    workers.consume(RAW.queue, instead_of=RAW.idle_queue)
    wait_raw_drained(timeout=drain_timeout(jobs))
    seconds = time.perf_counter() - start
    workers.consume(RAW.idle_queue, instead_of=RAW.queue)
    bench.reset()
    return Drain(jobs, seconds)


def drain_dcr(bench: Bench, workers: Workers, jobs: int) -> Drain:
    dcr_clear()
    dcr_fill(jobs)
    start = timezone.now()
    workers.consume(DCR.queue, instead_of=DCR.idle_queue)
    last = wait_dcr_done(jobs, timeout=drain_timeout(jobs))
    workers.consume(DCR.idle_queue, instead_of=DCR.queue)
    dcr_clear()
    bench.reset()
    return Drain(jobs, (last - start).total_seconds())


def drain_ours(bench: Bench, workers: Workers, jobs: int, *, batched: bool, io_ms: float = 0) -> Drain:
    if batched:
        ours_enqueue_many(jobs, bench.owner, io_ms=io_ms)
    else:
        payload = {"io_ms": io_ms} if io_ms else None
        for _ in range(jobs):
            ours_enqueue(bench.owner, payload=payload)
    start = timezone.now()
    workers.consume(OURS.queue, instead_of=OURS.idle_queue)
    last = wait_ours_done(jobs, timeout=drain_timeout(jobs))
    workers.consume(OURS.idle_queue, instead_of=OURS.queue)
    bench.reset()
    return Drain(jobs, (last - start).total_seconds())


def run_noop(bench: Bench, results: Results) -> None:
    sizes = bench.sizes
    dcr_migrate()
    for topology in SMOKE_NOOP_TOPOLOGIES if bench.smoke else NOOP_TOPOLOGIES:
        raw_workers, ours_workers = both_sides(bench, topology)
        dcr_workers = Workers(DCR, topology, queues=[DCR.idle_queue], log_dir=bench.log_dir)
        with running_together(raw_workers, ours_workers, dcr_workers):
            for batched, jobs in ((True, sizes.drain_batched), (False, sizes.drain_single)):
                raw = drain_raw(bench, raw_workers, jobs)
                dcr = None if batched else drain_dcr(bench, dcr_workers, jobs)
                ours = drain_ours(bench, ours_workers, jobs, batched=batched)
                how = "enqueue_many (many jobs a message)" if batched else "job_enqueue (one job a message)"
                kind = "batched" if batched else "single"
                label = f"Drain of no-op jobs sent by {how}, {topology.label}"
                figure = results.figure(f"drain_noop.{kind}.{topology.name}", label, "jobs/s", goal=NOOP_GOAL)
                figure.record(ours.rate, raw.rate, jobs=jobs, ours_seconds=ours.seconds, raw_seconds=raw.seconds)
                line = f"    {topology.name} {kind}: ours {ours.rate:,.0f}/s, raw {raw.rate:,.0f}/s"
                if dcr is not None:
                    versus = results.figure(
                        f"drain_noop.{kind}_dcr.{topology.name}",
                        f"{label}, vs {CELERY_RESULTS} (task_track_started)",
                        "jobs/s",
                        goal=CELERY_RESULTS_GOAL,
                        baseline=CELERY_RESULTS,
                    )
                    versus.record(ours.rate, dcr.rate, jobs=jobs, ours_seconds=ours.seconds, dcr_seconds=dcr.seconds)
                    line += f", {CELERY_RESULTS} {dcr.rate:,.0f}/s"
                print(line)


def run_io(bench: Bench, results: Results) -> None:
    sizes = bench.sizes
    for topology in SMOKE_IO_TOPOLOGIES if bench.smoke else IO_TOPOLOGIES:
        raw_workers, ours_workers = both_sides(bench, topology)
        with running_together(raw_workers, ours_workers):
            raw = drain_raw(bench, raw_workers, sizes.drain_io, io_ms=sizes.io_ms)
            ours = drain_ours(bench, ours_workers, sizes.drain_io, batched=True, io_ms=sizes.io_ms)
        figure = results.figure(
            f"drain_io.{topology.name}",
            f"Drain of {sizes.io_ms:g} ms I/O-bound jobs sent by enqueue_many, {topology.label}",
            "jobs/s",
            section="drain_io",
        )
        figure.record(ours.rate, raw.rate, jobs=sizes.drain_io, ours_seconds=ours.seconds, raw_seconds=raw.seconds)
        print(f"    {topology.name}: ours {ours.rate:,.0f}/s, raw {raw.rate:,.0f}/s")


def finish_io(bench: Bench, results: Results) -> None:
    """The recommended topology: the one with the best median drain of ours."""
    topologies = {f"drain_io.{topology.name}": topology for topology in IO_TOPOLOGIES}
    best = max((figure for figure in results if figure.key in topologies), key=lambda figure: figure.ours)
    recommended = results.figure(
        "drain_io.recommended",
        f"Drain of short I/O-bound jobs ({bench.sizes.io_ms:g} ms), recommended topology: {topologies[best.key].label}",
        "jobs/s",
        goal=IO_GOAL,
    )
    recommended.ours_runs, recommended.raw_runs, recommended.details = best.ours_runs, best.raw_runs, best.details
