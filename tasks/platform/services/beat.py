"""Beat's dispatch: a due schedule becomes a ledger job, and its last run is recorded with it.

The job (keyed by the schedule's name and the run's due time) and the schedule's ``last_run_at``
are written in one transaction, under a lock on the schedule's row. A beat that takes over from a
dead leader therefore starts from what the old leader committed: a run it fired is not fired
again (its key would collide anyway), and a run it did not fire is fired by the new leader.

When beat was down across a due time (the run is later than the grace), the schedule's
missed-run policy decides: ``run_once`` fires one run now, ``skip`` fires nothing. Either way
the schedule moves on to its next regular due time, so several missed due times never become a
burst of runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from celery import schedules
from django.db import transaction
from django.db.models import F
from django_celery_beat.models import PeriodicTask

from tasks.platform.models import Job, MissedRunPolicy, ScheduleOptions
from tasks.platform.registry import LEDGER_TASKS
from tasks.platform.selectors.schedules import schedule_origins
from tasks.platform.services.jobs import EnqueueError, job_enqueue

logger = logging.getLogger(__name__)

#: the most due times walked through to find the latest one (a minutely crontab over about a day)
MAX_DUE_STEPS = 2000


@dataclass(frozen=True)
class RunPlan:
    """What to do with a schedule at ``now``: fire or not, and the ``last_run_at`` to store."""

    due_at: datetime | None  # the scheduled time of this run (None: not due)
    fire: bool
    last_run_at: datetime
    missed: bool = False


def next_due_at(schedule: schedules.BaseSchedule, last_run_at: datetime, now: datetime) -> datetime | None:
    """The first due time after ``last_run_at``, in UTC: the same answer on every beat and every
    call (it does not depend on ``now`` for crontabs and intervals), so it can key the run."""
    last_run_at = _aware(last_run_at)
    if isinstance(schedule, schedules.crontab):
        # Celery's own computation (wall clock in the crontab's timezone), without its "now".
        start, delta, _ = schedule.remaining_delta(last_run_at)
        return (start + delta).astimezone(UTC)
    if isinstance(schedule, schedules.schedule):  # an interval
        return last_run_at.astimezone(UTC) + schedule.run_every
    # Solar and clocked schedules: through their estimate, to the second.
    remaining = schedule.remaining_estimate(last_run_at)
    if remaining is None:
        return None
    return (now + remaining).astimezone(UTC).replace(microsecond=0)


def latest_due_at(schedule: schedules.BaseSchedule, due_at: datetime, now: datetime) -> datetime:
    """The latest due time at or before ``now``, starting from ``due_at`` (itself due)."""
    if isinstance(schedule, schedules.schedule):  # an interval: arithmetic, not a walk
        every = schedule.run_every.total_seconds()
        if every <= 0:
            return now
        return due_at + timedelta(seconds=every * math.floor((now - due_at).total_seconds() / every))
    latest = due_at
    for _ in range(MAX_DUE_STEPS):
        following = next_due_at(schedule, latest, now)
        if following is None or following > now or following <= latest:
            return latest
        latest = following
    return now  # due times too dense to walk: the next one after now is what matters


def run_plan(
    *,
    schedule: schedules.BaseSchedule,
    last_run_at: datetime,
    now: datetime,
    policy: str,
    grace: timedelta,
    first_run: bool = False,
) -> RunPlan:
    """Decide one schedule's run at ``now`` (pure: no clock, no database).

    A run later than ``grace`` was missed (beat was down); one that never ran before (a new or
    re-enabled schedule) cannot have missed anything. Whatever is fired, ``last_run_at`` becomes
    the latest due time that has passed, so the next run is the next regular one.
    """
    due = next_due_at(schedule, last_run_at, now)
    if due is None or due > now:
        return RunPlan(due_at=None, fire=False, last_run_at=last_run_at)
    latest = latest_due_at(schedule, due, now)
    missed = not first_run and now - due > grace
    fire = not (missed and policy == MissedRunPolicy.SKIP)
    return RunPlan(due_at=due, fire=fire, last_run_at=latest, missed=missed)


class Outcome(StrEnum):
    FIRED = "fired"
    ALREADY_FIRED = "already_fired"  # another beat committed this due time first
    SKIPPED = "skipped"  # missed while beat was down, and the policy is skip
    REFUSED = "refused"  # the schedule cannot become a job (unknown task, bad arguments)
    NOT_DUE = "not_due"
    GONE = "gone"  # deleted or disabled since beat read it


@dataclass(frozen=True)
class Dispatch:
    outcome: Outcome
    last_run_at: datetime | None = None
    total_run_count: int | None = None
    due_at: datetime | None = None
    job: Job | None = None


def schedule_run_key(*, name: str, due_at: datetime) -> str:
    """The idempotency key of a schedule's run: its name and due time (hashed when too long)."""
    key = f"beat:{name}:{due_at.astimezone(UTC).isoformat()}"
    if len(key) > Job._meta.get_field("idempotency_key").max_length:
        key = f"beat:{hashlib.sha256(name.encode()).hexdigest()[:32]}:{due_at.astimezone(UTC).isoformat()}"
    return key


def schedule_dispatch_due(
    *, schedule_id: int, now: datetime, grace: timedelta, assumed_last_run_at: datetime
) -> Dispatch:
    """Fire a schedule's due run through the ledger, and record it on the schedule, atomically.

    Reads the schedule's row under a lock (the state another beat may just have committed);
    ``assumed_last_run_at`` stands for a ``last_run_at`` the row does not have yet (a new or
    re-enabled schedule: django-celery-beat counts from its last change).
    """
    with transaction.atomic():
        model = (
            PeriodicTask.objects.select_for_update(of=("self",))
            .select_related("interval", "crontab", "solar", "clocked")
            .filter(pk=schedule_id)
            .first()
        )
        if model is None or not model.enabled:
            return Dispatch(Outcome.GONE)
        first_run = model.last_run_at is None
        last_run_at = model.last_run_at or assumed_last_run_at
        schedule = model.schedule
        schedule.nowfun = lambda: now
        policy = (
            ScheduleOptions.objects.filter(schedule_id=model.pk).values_list("missed_run_policy", flat=True).first()
            or MissedRunPolicy.RUN_ONCE
        )
        plan = run_plan(
            schedule=schedule, last_run_at=last_run_at, now=now, policy=policy, grace=grace, first_run=first_run
        )
        if plan.due_at is None:
            return Dispatch(Outcome.NOT_DUE, last_run_at=last_run_at, total_run_count=model.total_run_count)

        job, outcome = None, Outcome.SKIPPED
        if plan.fire:
            job, outcome = _enqueue_run(model, plan)
        elif plan.missed:
            logger.warning(
                "schedule %r: due at %s while beat was down; skipped (missed-run policy: skip), next run after %s",
                model.name,
                plan.due_at.isoformat(),
                plan.last_run_at.isoformat(),
            )
        fired = outcome == Outcome.FIRED
        PeriodicTask.objects.filter(pk=model.pk).update(
            last_run_at=plan.last_run_at, total_run_count=F("total_run_count") + (1 if fired else 0)
        )
    return Dispatch(
        outcome,
        last_run_at=plan.last_run_at,
        total_run_count=model.total_run_count + (1 if fired else 0),
        due_at=plan.due_at,
        job=job,
    )


def _enqueue_run(model: PeriodicTask, plan: RunPlan) -> tuple[Job | None, Outcome]:
    """Enqueue one run; a schedule that cannot become a job is logged and passed over (not retried
    every tick: its due time counts as handled, the next one is tried again)."""
    problem = None
    payload: Any = None
    if model.task not in LEDGER_TASKS:
        problem = f"task {model.task!r} is not a ledger task"
    else:
        try:
            args, payload = json.loads(model.args or "[]"), json.loads(model.kwargs or "{}")
        except ValueError as exc:
            problem = f"arguments are not JSON ({exc})"
        else:
            if args:
                problem = "positional arguments are not supported (ledger tasks take keyword arguments)"
            elif not isinstance(payload, dict):
                problem = "keyword arguments must be a JSON object"
    if problem is None:
        try:
            job = job_enqueue(
                task_name=model.task,
                payload=payload,
                queue=model.queue or None,
                priority=model.priority,
                origin=schedule_origins(model.name)[0],
                idempotency_key=schedule_run_key(name=model.name, due_at=plan.due_at),
            )
        except EnqueueError as exc:
            problem = f"{exc} {exc.details or ''}".strip()
        else:
            if not job.created:
                logger.info(
                    "schedule %r: the run due at %s was already fired (job %s)",
                    model.name,
                    plan.due_at.isoformat(),
                    job.pk,
                )
                return job, Outcome.ALREADY_FIRED
            logger.info(
                "schedule %r: fired %s as job %s (due at %s%s)",
                model.name,
                model.task,
                job.pk,
                plan.due_at.isoformat(),
                ", missed while beat was down: run once" if plan.missed else "",
            )
            return job, Outcome.FIRED
    logger.error("schedule %r cannot run, passed over: %s", model.name, problem)
    return None, Outcome.REFUSED


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
