"""Flow control inside the engine: which jobs may go to their queue now, and which wait, held.

A job is admitted (queued, its message owed) when neither its queue nor its task is paused and,
for a task with a concurrency limit (tasks.platform.concurrency), its key has a free slot: fewer of
its jobs pending, queued or started than the limit. Otherwise it is written ``held`` with the
reason, and Redis never sees it. Held jobs are admitted when what holds them clears: a resume, or
a slot freed by a run that ended (the worker asks at once; the relay sweeps every pass, which
also covers runs that ended without their worker).

On a fair-share queue (settings.FAIR_SHARE_QUEUES) owners take turns: a job with a share (its
owner, or its task's ``share_by`` payload value) is written held, and admitted, by priority then
age, while fewer than FAIR_SHARE_DEPTH of its share's jobs are in the queue (sent, not started).
Each start of a share's job admits the next (the engine asks at once; the relay sweeps too), so
another owner's job waits behind at most that many of one owner's, however many that owner has.
A job of a task with a concurrency limit is admitted by its limit alone, which already bounds it.

A task without a limit, off a fair-share queue, pays one lookup of a per-process snapshot of the
pauses (refreshed every PAUSES_TTL); a stale snapshot only lets a job reach its queue, where the
worker's start checks the pauses again (``paused_by``, tasks.platform.selectors.flow) and holds it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from django.conf import settings

from tasks.platform.concurrency import CONCURRENCY, KEY_MAX_LENGTH, RATES, SHARE_BY, flow_key
from tasks.platform.models import FlowKey, Job, Pause, PauseScope
from tasks.platform.models.jobs import IN_QUEUE_STATES, SLOT_STATES, HeldReason
from tasks.platform.selectors.flow import interval_for, limit_for

#: seconds a process trusts its snapshot of the pauses when it writes new jobs
PAUSES_TTL = 1.0

_snapshot: tuple[float, frozenset[tuple[str, str]]] = (0.0, frozenset())


def pauses() -> frozenset[tuple[str, str]]:
    """(scope, name) of every pause, as this process last read them (at most PAUSES_TTL ago)."""
    global _snapshot
    read_at, paused = _snapshot
    if time.monotonic() - read_at > PAUSES_TTL:
        paused = frozenset(Pause.objects.values_list("scope", "name"))
        _snapshot = (time.monotonic(), paused)
    return paused


def forget_pauses() -> None:
    """Read the pauses again at the next use (after this process paused or resumed)."""
    global _snapshot
    _snapshot = (0.0, frozenset())


def share_of(job: Job) -> str:
    """Whose turn the job takes on a fair-share queue: its task's ``share_by`` field and value, else
    its owner; "" off such a queue, and for a job with neither (the platform's own work)."""
    if job.queue not in settings.FAIR_SHARE_QUEUES:
        return ""
    field = SHARE_BY.get(job.task_name)
    if field is not None:
        return f"{field}:{str(job.payload.get(field, ''))[:KEY_MAX_LENGTH]}"
    return "" if job.owner_id is None else f"owner:{job.owner_id}"


def admits_at_once(job: Job) -> bool:
    """Whether the gate queues this job as it is: no limit, no rate, no share, and not paused."""
    paused = pauses()
    return (
        job.task_name not in CONCURRENCY
        and job.task_name not in RATES
        and not share_of(job)
        and (PauseScope.QUEUE, job.queue) not in paused
        and (PauseScope.TASK, job.task_name) not in paused
    )


def gate(jobs: Iterable[Job]) -> list[Job]:
    """Decide, in memory, the state of jobs about to go to their queue: each becomes queued, or held
    (paused, or counted against its key's limit or its share until ``admit`` / ``admit_shares``);
    a limited task's job gets its key, a fair-share queue's its share. The queued ones are returned."""
    paused = pauses()
    queued = []
    for job in jobs:
        job.flow_key = flow_key(job.task_name, job.payload)
        job.share_key = share_of(job)
        if (PauseScope.QUEUE, job.queue) in paused or (PauseScope.TASK, job.task_name) in paused:
            job.state, job.held_reason = Job.State.HELD, HeldReason.PAUSED
        elif job.task_name in CONCURRENCY:
            job.state, job.held_reason = Job.State.HELD, HeldReason.CONCURRENCY
        elif job.share_key and job.held_reason != HeldReason.RATE:  # a rate's turn is kept, not queued again
            job.state, job.held_reason = Job.State.HELD, HeldReason.FAIR_SHARE
        else:
            # A job sent at its turn under its rate keeps that turn for its start.
            job.state = Job.State.QUEUED
            job.held_reason = HeldReason.RATE if job.held_reason == HeldReason.RATE else ""
            queued.append(job)
    return queued


def limited_keys(jobs: Iterable[Job]) -> set[tuple[str, str]]:
    """(task, key) of the jobs held for their concurrency limit: those to admit."""
    return {
        (job.task_name, job.flow_key)
        for job in jobs
        if job.state == Job.State.HELD and job.held_reason == HeldReason.CONCURRENCY
    }


def held_shares(jobs: Iterable[Job]) -> set[tuple[str, str]]:
    """(queue, share) of the jobs held for their share: those to admit."""
    return {
        (job.queue, job.share_key)
        for job in jobs
        if job.state == Job.State.HELD and job.held_reason == HeldReason.FAIR_SHARE
    }


#: a start this close to its turn under the rate goes now
RATE_TOLERANCE = timedelta(milliseconds=50)


def rate_turn(job: Job, now: datetime) -> datetime | None:
    """In the caller's transaction, at the start of a job of a task with a rate: None when it may
    start now, else the time of its turn, which is now reserved for it. Turns are handed out from
    the key's FlowKey row, one interval apart. A job that comes for its turn starts only if the
    key's last start is an interval ago: turns that came late together (their messages queued
    behind others) would otherwise start together, so all but the first take new turns."""
    interval = interval_for(job.task_name, job.flow_key)
    if interval is None:
        return None
    _lock_key(job.task_name, job.flow_key)
    row = FlowKey.objects.filter(task_name=job.task_name, key=job.flow_key)
    next_turn, last_start = row.values_list("next_start_at", "last_start_at")[0]
    spaced_from = now if last_start is None else last_start + interval
    if spaced_from <= now + RATE_TOLERANCE:
        came = job.held_reason == HeldReason.RATE and job.run_at is not None and job.run_at <= now + RATE_TOLERANCE
        if came or next_turn is None or next_turn <= now + RATE_TOLERANCE:
            row.update(last_start_at=now, next_start_at=max(next_turn or now, now + interval))
            return None
    turn = max(moment for moment in (now, next_turn, spaced_from) if moment is not None)
    row.update(next_start_at=turn + interval)
    return turn


def _lock_key(task_name: str, key: str) -> None:
    FlowKey.objects.get_or_create(task_name=task_name, key=key)
    FlowKey.objects.select_for_update().filter(task_name=task_name, key=key).get()


def admissible(task_name: str, key: str, now: datetime) -> list[Job]:
    """In the caller's transaction: the held jobs of this key that its free slots admit, by
    priority then age, written queued. The key's FlowKey row is locked first, so admitters of one
    key go one at a time and never fill one slot twice."""
    _lock_key(task_name, key)
    limit = limit_for(task_name, key)
    held = Job.objects.filter(
        state=Job.State.HELD, held_reason=HeldReason.CONCURRENCY, task_name=task_name, flow_key=key
    )
    if limit is None:  # the limit was removed from the code: nothing holds them any more
        free = held.count()
    else:
        free = limit - Job.objects.filter(task_name=task_name, flow_key=key, state__in=SLOT_STATES).count()
    if free <= 0:
        return []
    ids = list(held.order_by("priority", "created_at").values_list("pk", flat=True)[:free])
    jobs = list(Job.objects.select_for_update().filter(pk__in=ids, state=Job.State.HELD).order_by("pk"))
    Job.objects.filter(pk__in=[job.pk for job in jobs]).update(state=Job.State.QUEUED, held_reason="", queued_at=now)
    for job in jobs:
        job.state, job.held_reason, job.queued_at = Job.State.QUEUED, "", now
    return jobs


def admissible_shares(queue: str, share: str, now: datetime) -> list[Job]:
    """In the caller's transaction: the share's held jobs that fit in its places in the queue
    (FAIR_SHARE_DEPTH, less those sent and not started), by priority then age, written queued. Held
    rows another admitter locked are skipped, so a job is never admitted twice."""
    held = Job.objects.filter(state=Job.State.HELD, held_reason=HeldReason.FAIR_SHARE, queue=queue, share_key=share)
    if queue in settings.FAIR_SHARE_QUEUES:
        first = list(
            held.order_by("priority", "created_at", "pk").values_list("pk", flat=True)[: settings.FAIR_SHARE_DEPTH]
        )
        if first:
            in_queue = Job.objects.filter(queue=queue, share_key=share, state__in=IN_QUEUE_STATES).count()
            first = first[: max(settings.FAIR_SHARE_DEPTH - in_queue, 0)]
    else:  # the queue takes turns no more: nothing holds them
        first = list(held.values_list("pk", flat=True))
    if not first:
        return []
    jobs = list(held.select_for_update(skip_locked=True).filter(pk__in=first).order_by("pk"))
    Job.objects.filter(pk__in=[job.pk for job in jobs]).update(state=Job.State.QUEUED, held_reason="", queued_at=now)
    for job in jobs:
        job.state, job.held_reason, job.queued_at = Job.State.QUEUED, "", now
    return jobs


def waiting_shares() -> list[tuple[str, str]]:
    """(queue, share) of every share with jobs held: the relay's sweep admits each."""
    return list(
        Job.objects.filter(state=Job.State.HELD, held_reason=HeldReason.FAIR_SHARE)
        .values_list("queue", "share_key")
        .distinct()
    )


def waiting_keys() -> list[tuple[str, str]]:
    """(task, key) of every key with jobs held for its limit: the relay's sweep admits each."""
    return list(
        Job.objects.filter(state=Job.State.HELD, held_reason=HeldReason.CONCURRENCY)
        .values_list("task_name", "flow_key")
        .distinct()
    )


def unpaused(*, limit: int) -> Sequence[Job]:
    """Jobs held for a pause that no longer exists (a resume released the others; these were held
    by a start racing it), to go through the gate again."""
    paused = list(Pause.objects.values_list("scope", "name"))
    held = Job.objects.filter(state=Job.State.HELD, held_reason=HeldReason.PAUSED)
    for scope, name in paused:
        held = held.exclude(**{"queue" if scope == PauseScope.QUEUE else "task_name": name})
    return list(held.select_for_update(skip_locked=True).order_by("created_at")[:limit])
