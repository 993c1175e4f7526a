"""What the alert rules find in the ledger (and in the workers' keys in Redis), read only.

Each rule answers a ``Reading``: the subjects whose condition holds now (``Finding``), or
``known=False`` when it could not tell (Redis did not answer): then its open alerts are neither
resolved nor refreshed. Every query reads a small part of the ledger through an index: the queued
or started jobs (``job_queue_state`` / ``job_state_created``: rows leave them as jobs run), the dead
ones of the last window (``job_dead_finished``: dead rows only) and each schedule's runs
(``job_schedule_runs``).

Thresholds: an admin's ``AlertThreshold`` for a task beats one for its queue, which beats the
setting. A task with a threshold of its own is judged alone, as the subject ``task:<name>``; the
other jobs of a queue are judged together, as ``queue:<name>``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis
from django.conf import settings
from django.db.models import Count, Min
from django_celery_beat.models import PeriodicTask

from tasks.platform.models import Alert, AlertRule, AlertScope, AlertThreshold, Job
from tasks.platform.models.jobs import FINISHED_STATES, SCHEDULE_ORIGIN_PREFIX
from tasks.platform.selectors.flow import queues_consumed
from tasks.platform.selectors.liveness import heartbeats
from tasks.platform.selectors.schedules import schedule_next_runs, schedule_origins

#: started jobs read at most per evaluation (more than every worker's processes together)
RUNNING_READ = 10_000
#: open alerts a list shows, and resolved ones
ALERTS_SHOWN = 200
RESOLVED_SHOWN = 50


def settings_defaults() -> dict[str, int]:
    """Each rule's default threshold, from the settings (read at each evaluation, so tests may change them)."""
    return {
        AlertRule.LATENCY: settings.ALERT_LATENCY_SECONDS,
        AlertRule.NO_CONSUMER: settings.ALERT_NO_CONSUMER_SECONDS,
        AlertRule.STALLED: settings.ALERT_STALLED_SECONDS,
        AlertRule.DEAD_LETTERS: settings.ALERT_DEAD_LETTERS,
        AlertRule.SCHEDULE: settings.ALERT_SCHEDULE_LATE_SECONDS,
        AlertRule.OVERRUN: settings.ALERT_OVERRUN_SECONDS,
    }


@dataclass(frozen=True)
class Finding:
    rule: str
    subject: str
    #: the rule's measure (seconds, or dead jobs in the window)
    value: float
    threshold: int
    message: str


@dataclass(frozen=True)
class Reading:
    rule: str
    findings: list[Finding]
    #: False: the rule could not tell (Redis did not answer); its open alerts stay as they are
    known: bool = True


class Thresholds:
    """The thresholds of one evaluation: admins' rows, read once, over the settings' defaults."""

    def __init__(self, rows: Iterable[AlertThreshold], defaults: dict[str, int]) -> None:
        self.rows = {(row.rule, row.scope, row.name): row for row in rows}
        self.defaults = defaults

    def subject(self, rule: str, *, queue: str, task: str) -> tuple[str, int | None]:
        """Who a job of this queue and task counts for, and the threshold (None: alerts off)."""
        own = self.rows.get((rule, AlertScope.TASK, task))
        if own is not None:
            return f"task:{task}", own.threshold if own.enabled else None
        return f"queue:{queue}", self.for_queue(rule, queue)

    def for_queue(self, rule: str, queue: str) -> int | None:
        row = self.rows.get((rule, AlertScope.QUEUE, queue))
        if row is None:
            return self.defaults[rule]
        return row.threshold if row.enabled else None

    def for_task_or_queue(self, rule: str, *, task: str, queue: str) -> int | None:
        """A threshold that belongs to something else (a schedule): its task's, else its queue's."""
        own = self.rows.get((rule, AlertScope.TASK, task))
        if own is not None:
            return own.threshold if own.enabled else None
        return self.for_queue(rule, queue)


def alert_thresholds() -> Thresholds:
    return Thresholds(AlertThreshold.objects.all(), settings_defaults())


def _seconds(delta: timedelta) -> float:
    return round(delta.total_seconds(), 1)


def _waiting() -> list[dict]:
    """Per queue and task: the queued jobs' count and the oldest one's queued_at."""
    return list(
        Job.objects.filter(state=Job.State.QUEUED)
        .values("queue", "task_name")
        .annotate(oldest=Min("queued_at"), count=Count("pk"))
        .order_by()
    )


def latency(now: datetime, thresholds: Thresholds) -> Reading:
    """The oldest queued job (published, not yet started) has waited longer than the threshold
    since it was queued. Held, scheduled and retrying jobs do not count: nothing is owed them yet."""
    oldest: dict[str, tuple[datetime, str, int | None]] = {}
    for row in _waiting():
        subject, threshold = thresholds.subject(AlertRule.LATENCY, queue=row["queue"], task=row["task_name"])
        if threshold is None or row["oldest"] is None:
            continue
        if subject not in oldest or row["oldest"] < oldest[subject][0]:
            oldest[subject] = (row["oldest"], row["task_name"], threshold)
    findings = []
    for subject, (since, task, threshold) in sorted(oldest.items()):
        waited = _seconds(now - since)
        if waited > threshold:
            findings.append(
                Finding(
                    AlertRule.LATENCY,
                    subject,
                    waited,
                    threshold,
                    f"{subject}: the oldest queued job ({task}) has waited {waited:.0f} s for a worker to start it "
                    f"(threshold {threshold} s)",
                )
            )
    return Reading(AlertRule.LATENCY, findings)


def no_consumer(now: datetime, thresholds: Thresholds) -> Reading:
    """Jobs have waited queued longer than the threshold on a queue no live worker consumes (no
    worker renewed the queue's key in Redis: the reader of "why isn't my job running")."""
    consumed = queues_consumed()
    if consumed is None:
        return Reading(AlertRule.NO_CONSUMER, [], known=False)
    waiting: dict[str, tuple[datetime, int]] = {}
    for row in _waiting():
        if row["queue"] in consumed or row["oldest"] is None:
            continue
        since, count = waiting.get(row["queue"], (row["oldest"], 0))
        waiting[row["queue"]] = (min(since, row["oldest"]), count + row["count"])
    findings = []
    for queue, (since, count) in sorted(waiting.items()):
        threshold = thresholds.for_queue(AlertRule.NO_CONSUMER, queue)
        waited = _seconds(now - since)
        if threshold is not None and waited > threshold:
            findings.append(
                Finding(
                    AlertRule.NO_CONSUMER,
                    f"queue:{queue}",
                    waited,
                    threshold,
                    f"queue:{queue}: {count} job(s) queued, the oldest for {waited:.0f} s, and no live worker "
                    f"consumes the queue (threshold {threshold} s)",
                )
            )
    return Reading(AlertRule.NO_CONSUMER, findings)


def _running() -> list[tuple]:
    return list(
        Job.objects.filter(state=Job.State.STARTED)
        .order_by()
        .values_list("pk", "queue", "task_name", "worker", "started_at")[:RUNNING_READ]
    )


def stalled(now: datetime, thresholds: Thresholds) -> Reading:
    """Jobs run on the queue and none of them started within the threshold: every slot that runs
    has held its job that long, so none completed a job and took the next in that time. (A start
    follows each completion while work waits; the ledger keeps no per-queue time of the last
    completion, and a search of the finished jobs would read the whole ledger.)"""
    newest: dict[str, tuple[datetime, int, int]] = {}
    for _, queue, task, _, started_at in _running():
        subject, threshold = thresholds.subject(AlertRule.STALLED, queue=queue, task=task)
        if threshold is None or started_at is None:
            continue
        latest, count, _ = newest.get(subject, (started_at, 0, threshold))
        newest[subject] = (max(latest, started_at), count + 1, threshold)
    findings = []
    for subject, (latest, count, threshold) in sorted(newest.items()):
        quiet = _seconds(now - latest)
        if quiet > threshold:
            findings.append(
                Finding(
                    AlertRule.STALLED,
                    subject,
                    quiet,
                    threshold,
                    f"{subject}: {count} job(s) running, none started in the last {quiet:.0f} s: no completion "
                    f"in that time (threshold {threshold} s)",
                )
            )
    return Reading(AlertRule.STALLED, findings)


def dead_letters(now: datetime, thresholds: Thresholds) -> Reading:
    """More jobs died (went dead) within ALERT_DEAD_LETTERS_WINDOW_SECONDS than the threshold."""
    window = settings.ALERT_DEAD_LETTERS_WINDOW_SECONDS
    rows = (
        Job.objects.filter(state=Job.State.DEAD, finished_at__gte=now - timedelta(seconds=window))
        .values("queue", "task_name")
        .annotate(count=Count("pk"))
        .order_by()
    )
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        subject, threshold = thresholds.subject(AlertRule.DEAD_LETTERS, queue=row["queue"], task=row["task_name"])
        if threshold is not None:
            counts[subject][0] += row["count"]
            counts[subject][1] = threshold
    findings = [
        Finding(
            AlertRule.DEAD_LETTERS,
            subject,
            count,
            threshold,
            f"{subject}: {count} job(s) went dead in the last {window} s (threshold {threshold} per {window} s)",
        )
        for subject, (count, threshold) in sorted(counts.items())
        if count > threshold
    ]
    return Reading(AlertRule.DEAD_LETTERS, findings)


def schedules(now: datetime, thresholds: Thresholds, *, route: Callable[[str], str]) -> Reading:
    """An enabled schedule's due run was not fired within the threshold after its due time, or its
    latest finished run failed or went dead (it resolves when a later run finishes otherwise).
    ``route`` names a task's queue, for a schedule that names none."""
    findings = []
    for schedule in PeriodicTask.objects.filter(enabled=True).select_related("interval", "crontab", "clocked"):
        queue = schedule.queue or route(schedule.task)
        threshold = thresholds.for_task_or_queue(AlertRule.SCHEDULE, task=schedule.task, queue=queue)
        if threshold is None:
            continue
        subject = f"schedule:{schedule.name}"
        runs = schedule_next_runs(schedule=schedule, now=now)
        if runs.overdue_since is not None and (late := _seconds(now - runs.overdue_since)) > threshold:
            findings.append(
                Finding(
                    AlertRule.SCHEDULE,
                    subject,
                    late,
                    threshold,
                    f"{subject}: the run due at {runs.overdue_since:%Y-%m-%d %H:%M:%S %Z} was not fired, "
                    f"{late:.0f} s late (threshold {threshold} s)",
                )
            )
            continue
        last = _latest_finished_run(schedule.name)
        if last is not None and last.state in (Job.State.FAILED, Job.State.DEAD):
            findings.append(
                Finding(
                    AlertRule.SCHEDULE,
                    subject,
                    0,
                    threshold,
                    f"{subject}: its latest run (job {last.pk}) is {last.state}: {last.error[:200]}",
                )
            )
    return Reading(AlertRule.SCHEDULE, findings)


def _latest_finished_run(name: str) -> Job | None:
    """The schedule's latest finished run, fired by beat or run by hand. One query per origin, each
    a walk of job_schedule_runs from the newest row that stops at the first finished one (a query
    for both origins at once would read and sort every run the schedule ever had)."""
    runs = []
    for origin in schedule_origins(name):
        run = (
            # The origin's prefix too, so PostgreSQL reads the partial index job_schedule_runs.
            Job.objects.filter(origin__startswith=SCHEDULE_ORIGIN_PREFIX, origin=origin, state__in=FINISHED_STATES)
            .order_by("-created_at")
            .first()
        )
        if run is not None:
            runs.append(run)
    return max(runs, key=lambda run: run.created_at, default=None)


def overruns(now: datetime, thresholds: Thresholds, *, soft_limit: Callable[[str], int]) -> Reading:
    """A started job has run longer than its soft time limit plus the threshold, and no live
    worker's heartbeat lists it: the limit did not stop it and nothing says it still runs (the
    relay recovers such jobs within WORKER_LOST_AFTER; one still there means recovery is not
    happening: no relay runs, or Redis lost the heartbeats). ``soft_limit`` gives a task's, in seconds."""
    overdue = []
    for pk, queue, task, worker, started_at in _running():
        subject, threshold = thresholds.subject(AlertRule.OVERRUN, queue=queue, task=task)
        if threshold is None or started_at is None:
            continue
        past = _seconds(now - started_at - timedelta(seconds=soft_limit(task)))
        if past > threshold:
            overdue.append((subject, threshold, str(pk), task, worker, past))
    if not overdue:
        return Reading(AlertRule.OVERRUN, [])
    try:
        latest = heartbeats(worker for *_, worker, _ in overdue)
    except redis.RedisError:
        return Reading(AlertRule.OVERRUN, [], known=False)
    worst: dict[str, tuple] = {}
    for subject, threshold, pk, task, worker, past in overdue:
        beat = latest.get(worker)
        if beat is not None and not beat.silent and beat.runs_job(pk):
            continue  # its worker says it still runs it: slow, not lost
        if subject not in worst or past > worst[subject][4]:
            worst[subject] = (threshold, pk, task, worker, past)
    findings = [
        Finding(
            AlertRule.OVERRUN,
            subject,
            past,
            threshold,
            f"{subject}: job {pk} ({task}) runs {past:.0f} s past its soft time limit and no heartbeat of its "
            f"worker {worker or '?'} lists it (threshold {threshold} s)",
        )
        for subject, (threshold, pk, task, worker, past) in sorted(worst.items())
    ]
    return Reading(AlertRule.OVERRUN, findings)


def alerts_listed(*, limit: int = ALERTS_SHOWN, resolved: int = RESOLVED_SHOWN) -> tuple[list[Alert], list[Alert]]:
    """The open alerts, newest first, and the latest resolved ones (for Flower's Alerts page), on
    the index alert_state_opened."""
    open_alerts = list(Alert.objects.filter(state=Alert.State.OPEN).order_by("-opened_at")[:limit])
    latest = list(Alert.objects.filter(state=Alert.State.RESOLVED).order_by("-opened_at")[:resolved])
    return open_alerts, latest
