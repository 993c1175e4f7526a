"""A group of no-op jobs with a callback: from the call until the callback starts.

Ours: ``job_enqueue_group`` (members packed as an enqueue_many packs them; the callback waits in
the ledger). Raw: ``chord(group(member.s() ...), callback.s())`` with a Redis result backend.
Both on the default queue's topology, the workers already running when the call is made.
"""

from __future__ import annotations

import time

from django.utils import timezone

from bench.context import Bench
from bench.figures import Results, ratio_at_most
from bench.jobs import NOOP, drain_timeout, raw_stamp
from bench.processes import DEFAULT_TOPOLOGY, OURS, RAW, Workers, running_together
from tests.support.processes import wait_until

CALLBACK_KEY = "bench:raw:chord-callback"


def raw_chord(bench: Bench, members: int) -> float:
    from celery import chord, group

    from bench.raw_app import callback, member

    start = time.time()
    chord(group(member.s() for _ in range(members)), callback.s(CALLBACK_KEY)).apply_async()
    started = raw_stamp(CALLBACK_KEY, timeout=drain_timeout(members))
    bench.reset()
    return started - start


def ours_group(bench: Bench, members: int) -> float:
    from tasks.models import Job
    from tasks.platform.services.jobs import JobRequest, job_enqueue_group

    start = timezone.now()
    _, then = job_enqueue_group(
        requests=[JobRequest(NOOP)] * members, callback=JobRequest(NOOP), owner=bench.owner, origin="bench"
    )
    callback_started = Job.objects.filter(pk=then.pk, started_at__isnull=False).values_list("started_at", flat=True)
    started = wait_until(
        callback_started.first, timeout=drain_timeout(members), interval=0.02, what="the group's callback to start"
    )
    bench.reset()
    return (started - start).total_seconds()


def run(bench: Bench, results: Results) -> None:
    members = bench.sizes.group_members
    # Both sides' workers up at once; each waits on its own queue while the other is measured.
    with running_together(
        Workers(RAW, DEFAULT_TOPOLOGY, queues=[RAW.queue], log_dir=bench.log_dir),
        Workers(OURS, DEFAULT_TOPOLOGY, queues=[OURS.queue], log_dir=bench.log_dir),
    ):
        raw = raw_chord(bench, members)
        ours = ours_group(bench, members)
    figure = results.figure(
        "group.callback",
        f"Group of {members:,} no-op jobs with a callback: from the call to the callback's start",
        "s",
        goal=ratio_at_most(1.3),
    )
    figure.record(ours, raw, members=members)
    print(f"    ours {ours:.2f}s, raw {raw:.2f}s")
