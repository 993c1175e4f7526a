"""The reference job engine: every change of a job's state and of its attempts, through the ORM.

Each public method is one transition. Its docstring states the states it acts on; a job in any
other state is left as it is (or, for an operator's action, refused with ActionRefused).

Locking, stated once: a transition takes the row locks of the jobs it changes before it reads
their state, inside one transaction, and several rows are locked in primary-key order
(``_locked``). Every writer of many rows (a batch's claim and its successes, a failed publish)
takes them in that order, so two of them wait for each other instead of deadlocking. A job's row
is locked before its outbox row; the relay's claim, which finds jobs through the outbox, skips rows
others hold instead. Workflow links are followed inside the same transaction.

Publishing, stated once: a job to run now is written ``queued`` with a row in the outbox
(``JobOutbox``), claimed by the process that wrote it, in one transaction; after the commit,
``publish`` sends its message and deletes that row. A publish that failed frees the claim (the job
is ``pending`` until it is sent), and an expired claim means its publisher died: either way the
relay (``claim_due``) sends the job. The outbox is the only promise of a publish; nothing else
keeps it.
"""

from __future__ import annotations

import json
import logging
import operator
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial, reduce
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Case, F, JSONField, Q, QuerySet, Value, When
from django.utils import timezone

from tasks.platform import metric_counts
from tasks.platform.concurrency import RATES
from tasks.platform.engine import flow
from tasks.platform.engine import publish as messages
from tasks.platform.engine.events import job_event, job_event_publish
from tasks.platform.engine.workflows import steps_rearmed, steps_released, steps_stopped, with_next_steps
from tasks.platform.models import FlowEvent, Job, JobAction, JobAttempt, JobOutbox, Pause, PauseScope
from tasks.platform.models.jobs import EDITABLE_STATES, FINISHED_STATES, RETRYABLE_STATES, HeldReason
from tasks.platform.selectors.flow import paused_by
from tasks.platform.selectors.liveness import LostRun, runs_going_on

logger = logging.getLogger(__name__)

#: a publisher's claim older than this belongs to a process that died between commit and publish
PUBLISH_CLAIM = timedelta(seconds=30)
#: what a batch's claim reads of each job
_CLAIM_FIELDS = (
    "pk",
    "state",
    "attempts",
    "attempts_before_retry",
    "max_attempts",
    "then_id",
    "has_next",
    "share_key",
    "queued_at",
)


class ActionRefused(Exception):
    """The job is not in a state that allows an operator's action (HTTP 409)."""


@dataclass(frozen=True)
class Attempt:
    """A run the worker may go ahead with: its number, and how much of the budget is used."""

    number: int
    used: int
    allowed: int
    #: the group callback the job's success counts towards, if it is a group member
    then_id: object = None
    #: whether workflow steps wait for this job
    has_next: bool = False
    #: the run's queue and task, and when it started: what its end is counted under
    #: (tasks.platform.metric_counts); not part of what an attempt is
    queue: str = field(default="", compare=False)
    task_name: str = field(default="", compare=False)
    started_at: datetime | None = field(default=None, compare=False)

    @classmethod
    def started(
        cls, job: Any, *, max_attempts: int, queue: str = "", task_name: str = "", started_at: datetime | None = None
    ) -> Attempt:
        """The attempt a job (a row or a model) was just started for; ``max_attempts``: the task's."""
        return cls(
            number=job.attempts,
            used=job.attempts - job.attempts_before_retry,
            allowed=job.max_attempts or max_attempts,
            then_id=job.then_id,
            has_next=job.has_next,
            queue=queue or getattr(job, "queue", ""),
            task_name=task_name,
            started_at=started_at,
        )

    @property
    def last(self) -> bool:
        return self.used >= self.allowed

    @property
    def in_workflow(self) -> bool:
        return self.has_next or self.then_id is not None


def backoff_delay(attempt: int, *, base: float, ceiling: float) -> timedelta:
    """Exponential backoff with a ceiling and jitter (half to all of the step), so retries spread out."""
    step = min(ceiling, base * 2 ** max(attempt - 1, 0))
    return timedelta(seconds=random.uniform(step / 2, step))  # noqa: S311 - jitter, not security


def _locked(ids: Sequence) -> QuerySet:
    """The jobs of ``ids``, to be locked in primary-key order when evaluated (see the module)."""
    return Job.objects.select_for_update().filter(pk__in=ids).order_by("pk")


class OrmEngine:
    # -- new jobs and their publish -------------------------------------------------------------

    def insert(self, jobs: list[Job]) -> list[Job]:
        """Write new jobs in one transaction (the caller's, if it has one); those to run now (built
        ``pending``) are written queued, their messages owed and sent after the commit. Where an
        owner's idempotency key is taken (by an earlier job, or earlier in ``jobs``), that job is
        returned in its place with ``created`` False. Precondition: unsaved jobs, built by the
        enqueue service."""
        runnable = [job for job in jobs if job.state == Job.State.PENDING]
        for job in flow.gate(runnable):
            job.queued_at = job.created_at
        keyed = {}
        for job in jobs:
            if job.idempotency_key is not None:
                keyed.setdefault((job.owner_id, job.task_name, job.idempotency_key), job)
        with transaction.atomic(savepoint=False):
            if keyed:
                jobs = self._insert_keyed(jobs, keyed)
                written = {id(job) for job in jobs}  # a job an earlier one's key stopped is not among them
                runnable = [job for job in runnable if id(job) in written]
            else:
                self._insert_rows(jobs)
            now = timezone.now()
            queued = [job for job in runnable if job.state == Job.State.QUEUED] + self._take_turns(runnable, now)
            if queued:
                self._owe([job.pk for job in queued], claimed_at=now)
                self.publish_on_commit(queued)
            self._admit_on_commit(runnable)
            count_enqueued_on_commit(jobs)
        return jobs

    def _insert_keyed(self, jobs: list[Job], keyed: dict[tuple, Job]) -> list[Job]:
        """Insert what no earlier job's key stops; the jobs, an earlier one in place of each stopped."""
        Job.objects.bulk_create(jobs, ignore_conflicts=True)
        inserted = set(Job.objects.filter(pk__in=[job.pk for job in keyed.values()]).values_list("pk", flat=True))
        for key, job in keyed.items():
            if job.pk not in inserted:
                owner_id, task_name, idempotency_key = key
                keyed[key] = Job.objects.get(owner_id=owner_id, task_name=task_name, idempotency_key=idempotency_key)
                keyed[key].created, keyed[key].publish_error = False, ""
        return [
            job if job.idempotency_key is None else keyed[job.owner_id, job.task_name, job.idempotency_key]
            for job in jobs
        ]

    def _insert_rows(self, jobs: list[Job]) -> None:
        Job.objects.bulk_create(jobs)

    def _owe(self, ids: list, *, claimed_at: datetime) -> None:
        """The jobs' messages are owed, claimed by this process at ``claimed_at`` (an existing
        outbox row's claim is taken over)."""
        JobOutbox.objects.bulk_create(
            [JobOutbox(job_id=job_id, claimed_at=claimed_at) for job_id in ids],
            update_conflicts=True,
            unique_fields=["job"],
            update_fields=["claimed_at"],
        )

    def publish_on_commit(self, jobs: Sequence[Job], *, alone: bool = False) -> None:
        """Publish jobs whose outbox rows this process claimed once the caller's transaction
        commits (at once outside one)."""
        if jobs:
            transaction.on_commit(partial(self.publish, jobs, alone=alone))

    def publish(self, jobs: Sequence[Job], *, alone: bool = False) -> bool:
        """Send the messages of committed jobs whose outbox rows this process claimed, then delete
        those rows. On a broker error the claims are freed for the relay, the jobs not started are
        ``pending``, and each job's ``publish_error`` says why. ``alone``: one message each."""
        failure = messages.send(jobs, alone=alone)
        ids = [job.pk for job in jobs]
        if failure is None:
            self._published(ids)
            for job in jobs:
                job.publish_error = ""
            return True
        with transaction.atomic():
            list(_locked(ids).values_list("pk"))
            Job.objects.filter(pk__in=ids, state=Job.State.QUEUED).update(state=Job.State.PENDING, queued_at=None)
            JobOutbox.objects.filter(job_id__in=ids).update(claimed_at=None)
        logger.warning("%d job(s) stay unpublished, the relay will retry: broker unavailable (%s)", len(ids), failure)
        for job in jobs:
            job.publish_error = str(failure)
            if job.state == Job.State.QUEUED:
                job.state, job.queued_at = Job.State.PENDING, None
        return False

    def _published(self, ids: list) -> None:
        """The messages are out: their outbox rows go (the jobs' own rows stay as they are)."""
        JobOutbox.objects.filter(job_id__in=ids).delete()

    def claim_due(self, *, limit: int) -> list[Job]:
        """The relay's claim: jobs whose outbox rows are unclaimed or whose claim expired, and
        delayed jobs and retries that fell due (written queued, their messages owed). Rows locked
        by another claim are skipped, so two relays never take the same job. The caller publishes
        them (``publish``)."""
        now = timezone.now()
        free = Q(claimed_at__isnull=True) | Q(claimed_at__lt=now - PUBLISH_CLAIM)
        with transaction.atomic():
            owed = list(
                JobOutbox.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(free)
                .order_by("job__created_at", "job_id")
                .values_list("job_id", flat=True)[:limit]
            )
            # Jobs before outbox rows is every other writer's order: this claim, which took the
            # outbox rows first, skips a job another transaction holds instead of waiting for it.
            states = dict(
                Job.objects.select_for_update(skip_locked=True).filter(pk__in=owed).values_list("pk", "state")
            )
            sendable = [pk for pk, state in states.items() if state in (Job.State.PENDING, Job.State.QUEUED)]
            # A job started, finished or waiting again since its row was written needs no message.
            JobOutbox.objects.filter(job_id__in=[pk for pk in states if pk not in sendable]).delete()
            due = list(
                Job.objects.select_for_update(skip_locked=True)
                .filter(state__in=[Job.State.SCHEDULED, Job.State.RETRYING], run_at__lte=now)
                .order_by("run_at")[: max(limit - len(sendable), 0)]
            )
            Job.objects.filter(pk__in=sendable, state=Job.State.PENDING).update(state=Job.State.QUEUED, queued_at=now)
            JobOutbox.objects.filter(job_id__in=sendable).update(claimed_at=now)
            due = self._gated(due, now=now, claimed_at=now)
            jobs = list(Job.objects.filter(pk__in=[*sendable, *(job.pk for job in due)]).order_by("created_at", "pk"))
        for job in jobs:
            job.publish_error = ""
        return jobs

    def resend(self, *, job_ids: Iterable[str]) -> int:
        """Queued jobs whose messages the broker lost (tasks.platform.services.broker_loss): their
        messages owed again, claimed by this process and sent after the commit; how many. A job no
        longer queued, or whose message is owed already, is left as it is."""
        with transaction.atomic():
            jobs = [job for job in _locked(list(job_ids)) if job.state == Job.State.QUEUED]
            owed = set(JobOutbox.objects.filter(job_id__in=[job.pk for job in jobs]).values_list("job_id", flat=True))
            jobs = [job for job in jobs if job.pk not in owed]
            if jobs:
                self._owe([job.pk for job in jobs], claimed_at=timezone.now())
                self.publish_on_commit(jobs)
        return len(jobs)

    def _publish_again(self, jobs: list[Job], *, alone: bool = False) -> None:
        """In the caller's transaction, rows locked: through the gate again (``_gated``), the
        queued ones claimed by this process and sent after the commit."""
        now = timezone.now()
        for job in jobs:
            job.publish_error = ""
        self.publish_on_commit(self._gated(jobs, now=now, claimed_at=now), alone=alone)

    def _gated(self, jobs: list[Job], *, now: datetime, claimed_at: datetime | None) -> list[Job]:
        """In the caller's transaction, rows locked: jobs to go to their queue again pass the gate
        (tasks.platform.engine.flow): the queued ones get their messages owed (claimed at
        ``claimed_at``; None: for the relay) and are returned, with those their shares' room in
        the queue admits now; held ones of a limited key are admitted after the commit."""
        queued = flow.gate(jobs)
        for job in queued:
            job.queued_at = now
        outcomes = defaultdict(list)  # one UPDATE per outcome: a resume may release thousands alike
        for job in jobs:
            outcomes[job.state, job.held_reason, job.flow_key, job.share_key, job.queued_at].append(job.pk)
        for (state, held_reason, flow_key, share_key, queued_at), ids in outcomes.items():
            Job.objects.filter(pk__in=ids).update(
                state=state, held_reason=held_reason, flow_key=flow_key, share_key=share_key, queued_at=queued_at
            )
        queued += self._take_turns(jobs, now)
        if queued:
            self._owe([job.pk for job in queued], claimed_at=claimed_at)
        self._admit_on_commit(jobs)
        return queued

    def _take_turns(self, jobs: list[Job], now: datetime) -> list[Job]:
        """In the caller's transaction, jobs written: those just held for their share, and earlier
        ones of their shares, that the shares' room in the queue admits now, written queued; the
        caller owes their messages."""
        admitted = {}
        for queue, share in sorted(flow.held_shares(jobs)):
            admitted.update((job.pk, job) for job in flow.admissible_shares(queue, share, now))
        for job in jobs:
            if job.pk in admitted:
                job.state, job.held_reason, job.queued_at = Job.State.QUEUED, "", now
                admitted[job.pk] = job
        return list(admitted.values())

    def _admit_on_commit(self, jobs: list[Job]) -> None:
        """Held jobs of a limited key are admitted into its free slots once the caller's
        transaction commits."""
        if keys := flow.limited_keys(jobs):
            transaction.on_commit(partial(self.admit, keys))

    # -- flow control ---------------------------------------------------------------------------

    def admit(self, keys: Iterable[tuple[str, str]]) -> int:
        """Held jobs of these (task, key)s go into their keys' free slots (tasks.platform.engine.flow),
        each key in its own transaction, and are published; how many."""
        return self._admit_each(keys, flow.admissible)

    def admit_shares(self, shares: Iterable[tuple[str, str]]) -> int:
        """Held jobs of these (queue, share)s go into their shares' free places in the queue
        (tasks.platform.engine.flow), each share in its own transaction, and are published; how many."""
        return self._admit_each(shares, flow.admissible_shares)

    def _admit_each(self, groups: Iterable[tuple[str, str]], admissible) -> int:
        now = timezone.now()
        admitted = 0
        for first, second in sorted(groups):
            with transaction.atomic():
                jobs = admissible(first, second, now)
                if jobs:
                    self._owe([job.pk for job in jobs], claimed_at=now)
                    self.publish_on_commit(jobs)
            admitted += len(jobs)
        return admitted

    def admit_waiting(self, *, limit: int) -> int:
        """The relay's sweep: every key with held jobs and a free slot admits them, so does every
        share with held jobs and room in its queue, and jobs held for a pause that no longer exists
        pass the gate again (sent by the relay); how many."""
        admitted = self.admit(flow.waiting_keys()) + self.admit_shares(flow.waiting_shares())
        with transaction.atomic():
            freed = flow.unpaused(limit=limit)
            self._gated(list(freed), now=timezone.now(), claimed_at=None)
        return admitted + len(freed)

    def pause(self, *, scope: str, name: str, by=None, via: str) -> Pause:
        """Pause a queue or a task: none of its jobs starts from now (the workers hold any they
        receive), new ones wait held; running ones finish. Recorded as who did it and where;
        pausing what is paused keeps the first pause."""
        with transaction.atomic():
            pause, created = Pause.objects.get_or_create(scope=scope, name=name, defaults={"by": by, "via": via})
            if created:
                FlowEvent.objects.create(action=FlowEvent.Action.PAUSED, scope=scope, name=name, by=by, via=via)
        flow.forget_pauses()
        return pause

    def resume(self, *, scope: str, name: str, by=None, via: str) -> int:
        """Resume a paused queue or task: its held jobs pass the gate again, in their order, and
        the relay sends them (a job still paused by its other scope stays held). Recorded as who
        did it and where; how many jobs were held (0 when it was not paused)."""
        with transaction.atomic():
            if not Pause.objects.filter(scope=scope, name=name).delete()[0]:
                return 0
            FlowEvent.objects.create(action=FlowEvent.Action.RESUMED, scope=scope, name=name, by=by, via=via)
            flow.forget_pauses()
            field = "queue" if scope == PauseScope.QUEUE else "task_name"
            held = _locked(
                Job.objects.filter(state=Job.State.HELD, held_reason=HeldReason.PAUSED, **{field: name}).values_list(
                    "pk", flat=True
                )
            )
            jobs = list(held)
            self._gated(jobs, now=timezone.now(), claimed_at=None)
        flow.forget_pauses()
        return len(jobs)

    # -- a worker's run -------------------------------------------------------------------------

    def begin_attempt(
        self,
        *,
        job_id: str,
        task_name: str,
        queue: str,
        worker: str,
        payload: dict,
        origin: str,
        max_attempts: int,
        max_worker_losses: int,
    ) -> Attempt | None:
        """Start a job that is not finished and open its attempt; None means do not run (finished,
        cancelled, held, dead now because its workers kept dying, held now because its queue or
        task is paused, scheduled for its turn under its task's rate, or started by a run that goes
        on: the message is a duplicate). A job found started whose run stopped (its worker's
        heartbeat no longer lists it: tasks.platform.selectors.liveness) lost it: that attempt is
        closed as lost first. A message without a row (another producer) gets its row here, so the
        ledger knows every job that ran. Asking whether a run goes on waits for its worker's next
        heartbeat (a second; a few for a silent worker), the job's row locked: only a job found
        started pays it."""
        now = timezone.now()
        with transaction.atomic():
            job = with_next_steps(Job.objects.select_for_update().filter(pk=job_id)).first()
            if job is None:
                row = Job(id=job_id, task_name=task_name, queue=queue, payload=payload, origin=origin, queued_at=now)
                Job.objects.bulk_create([row], ignore_conflicts=True)  # a concurrent insert of it wins
                job = with_next_steps(Job.objects.select_for_update().filter(pk=job_id)).get()
            if job.state in FINISHED_STATES or job.state == Job.State.HELD:
                return None
            if job.state == Job.State.STARTED:
                if runs_going_on({job_id: job.worker}, here=worker):
                    return None  # a duplicate: acknowledged and dropped, the run it repeats goes on
                if self._close_lost_attempts([job], now=now, limit=max_worker_losses):
                    return None
            if paused_by(queue=queue or job.queue, task_name=job.task_name) is not None:
                # Sent before its queue or task was paused: it waits, held, and costs no attempt.
                job.state, job.held_reason = Job.State.HELD, HeldReason.PAUSED
                job.save(update_fields=["state", "held_reason"])
                return None
            if job.task_name in RATES and (turn := flow.rate_turn(job, now)) is not None:
                # Over its task's rate: it waits for its turn, scheduled, and costs no attempt.
                job.state, job.run_at, job.held_reason = Job.State.SCHEDULED, turn, HeldReason.RATE
                job.save(update_fields=["state", "run_at", "held_reason"])
                return None
            job.attempts += 1
            job.state, job.started_at, job.worker, job.queue = Job.State.STARTED, now, worker, queue or job.queue
            job.held_reason = ""
            job.save(update_fields=["attempts", "state", "started_at", "worker", "queue", "held_reason"])
            JobAttempt.objects.create(job=job, number=job.attempts, worker=worker, started_at=now)
            self._next_turn([(job.queue, job.share_key)])
        metric_counts.count(
            started=[(job.queue, job.task_name, metric_counts.seconds_between(job.queued_at, now))],
            publish=[job_event(job_id=job_id, kind="state", state=Job.State.STARTED, worker=worker)],
        )
        return Attempt.started(job, max_attempts=max_attempts, task_name=job.task_name, started_at=now)

    def claim_batch(
        self,
        *,
        job_ids: Sequence[str],
        task_name: str,
        worker: str,
        queue: str,
        max_attempts: int,
        max_worker_losses: int,
    ) -> dict[str, Attempt]:
        """Start a batch's jobs that are not finished: job id -> its attempt. A batch with jobs
        already started was delivered before: nothing is claimed, the attempts whose run stopped
        are closed as lost (as in ``begin_attempt``) and every unfinished job whose run does not
        go on is published again alone, so a poison job dies alone."""
        now = timezone.now()
        with transaction.atomic():
            rows = list(with_next_steps(_locked(job_ids)).values_list(*_CLAIM_FIELDS, named=True))
            if any(row.state == Job.State.STARTED for row in rows):
                jobs = list(Job.objects.filter(pk__in=job_ids))  # locked already
                started = {str(job.pk): job.worker for job in jobs if job.state == Job.State.STARTED}
                going_on = runs_going_on(started, here=worker)
                jobs = [job for job in jobs if str(job.pk) not in going_on]
                lost = [job for job in jobs if job.state == Job.State.STARTED]
                self._close_lost_attempts(lost, now=now, limit=max_worker_losses)
                self._publish_again([job for job in jobs if job.state not in FINISHED_STATES], alone=True)
                return {}
            runnable = [row for row in rows if row.state not in FINISHED_STATES and row.state != Job.State.HELD]
            if runnable and paused_by(queue=queue, task_name=task_name) is not None:
                Job.objects.filter(pk__in=[row.pk for row in runnable]).update(
                    state=Job.State.HELD, held_reason=HeldReason.PAUSED
                )
                return {}
            Job.objects.filter(pk__in=[row.pk for row in runnable]).update(
                state=Job.State.STARTED, attempts=F("attempts") + 1, started_at=now, worker=worker, queue=queue
            )
            JobAttempt.objects.bulk_create(
                JobAttempt(job_id=row.pk, number=row.attempts + 1, worker=worker, started_at=now) for row in runnable
            )
            self._next_turn([(queue, row.share_key) for row in runnable])
        metric_counts.count(
            started=[(queue, task_name, metric_counts.seconds_between(row.queued_at, now)) for row in runnable],
            publish=[
                job_event(job_id=row.pk, kind="state", state=Job.State.STARTED, worker=worker) for row in runnable
            ],
        )
        return {
            str(row.pk): Attempt.started(
                row._replace(attempts=row.attempts + 1),
                max_attempts=max_attempts,
                queue=queue,
                task_name=task_name,
                started_at=now,
            )
            for row in runnable
        }

    def _next_turn(self, shares: Iterable[tuple[str, str]]) -> None:
        """Started jobs left their shares' places in the queue: the next held ones of each share go
        once the caller's transaction commits."""
        if started := {(queue, share) for queue, share in shares if share}:
            transaction.on_commit(partial(self.admit_shares, started))

    def _close_lost_attempts(
        self, jobs: list[Job], *, now: datetime, limit: int, reason: str = "the worker was lost during the run"
    ) -> list[Job]:
        """Started jobs whose run stopped (their worker or its process killed, OOM, crash, frozen):
        their running attempts close as lost, with ``reason``. Those lost ``limit`` times since their
        last retry are dead (a poison job); they are returned. Rows locked by the caller."""
        ids = [job.pk for job in jobs]
        JobAttempt.objects.filter(job_id__in=ids, outcome=JobAttempt.Outcome.RUNNING).update(
            outcome=JobAttempt.Outcome.LOST, finished_at=now, error=reason
        )
        losses = Counter(
            JobAttempt.objects.filter(
                job_id__in=ids, outcome=JobAttempt.Outcome.LOST, number__gt=F("job__attempts_before_retry")
            ).values_list("job_id", flat=True)
        )
        dead = [job for job in jobs if losses[job.pk] >= limit]
        for job in dead:
            reason = f"dead: its worker was lost {losses[job.pk]} times while running it (a poison job?)"
            job.state, job.error, job.finished_at = Job.State.DEAD, reason, now
            job.save(update_fields=["state", "error", "finished_at"])
            self._stop_following(job.pk, Job.State.DEAD, reason)
        if dead:
            died = [(Job.State.DEAD, job.queue, job.task_name, None) for job in dead]  # run time unknown
            events = [job_event(job_id=job.pk, kind="state", state=Job.State.DEAD, error=job.error) for job in dead]
            transaction.on_commit(partial(metric_counts.count, ended=died, publish=events))
        return dead

    def recover_lost(self, *, runs: dict[str, LostRun], max_worker_losses: int) -> int:
        """The relay's recovery: started jobs whose run stopped without their worker's word (it
        stopped answering, or no longer runs them: tasks.platform.selectors.liveness), job id -> the
        lost run. Each running attempt closes as lost with the run's reason; a job lost
        ``max_worker_losses`` times since its last retry is dead, the others pass the gate again and
        are published alone after the commit. A job no longer started by that attempt (it ended,
        or it started again since it was found) is left as it is. How many were recovered."""
        now = timezone.now()
        with transaction.atomic():
            jobs = [
                job
                for job in _locked(list(runs))
                if job.state == Job.State.STARTED and job.attempts == runs[str(job.pk)].attempt
            ]
            by_reason = defaultdict(list)
            for job in jobs:
                by_reason[runs[str(job.pk)].reason].append(job)
            dead = []
            for reason, lost in by_reason.items():
                dead += self._close_lost_attempts(lost, now=now, limit=max_worker_losses, reason=reason)
            self._publish_again([job for job in jobs if job not in dead], alone=True)
        return len(jobs)

    def report_progress(self, *, job_id: str, percent: int, message: str = "") -> None:
        """How far a job is (0-100): any state; not a transition, and no lock."""
        percent = max(0, min(100, int(percent)))
        message = message[:200]
        Job.objects.filter(pk=job_id).update(progress=percent, progress_message=message)
        job_event_publish(job_id=job_id, kind="progress", progress=percent, message=message)

    def succeed(self, *, job_id: str, attempt: Attempt, result: Any) -> None:
        """Close the attempt as succeeded and a started job too (one cancelled while it ran stays
        cancelled), releasing the workflow steps that waited for it."""
        self.succeed_many(results={job_id: result}, attempts={job_id: attempt})

    def succeed_many(self, *, results: dict[str, Any], attempts: dict[str, Attempt]) -> None:
        """``succeed`` for several jobs of one worker (a batch's), in one transaction."""
        if not results:
            return
        now = timezone.now()
        ids = list(results)
        with transaction.atomic():
            rows = list(_locked(ids).values_list("pk", "state", "attempts"))
            # A late report of an attempt that is no longer the job's latest (its worker was lost and
            # the job started again) changes nothing: the latest attempt decides.
            current = [str(pk) for pk, state, number in rows if number == attempts[str(pk)].number]
            succeeded = [str(pk) for pk, state, number in rows if state == Job.State.STARTED and str(pk) in current]
            if current:
                JobAttempt.objects.filter(
                    _attempts_numbered({job_id: attempts[job_id].number for job_id in current}),
                    outcome=JobAttempt.Outcome.RUNNING,
                ).update(outcome=JobAttempt.Outcome.SUCCEEDED, finished_at=now, error="")
            Job.objects.filter(pk__in=succeeded).update(
                state=Job.State.SUCCEEDED,
                result=_results_expression(results),
                progress=100,
                error="",
                traceback="",
                finished_at=now,
            )
            followed = [job_id for job_id in succeeded if attempts[job_id].has_next]
            callbacks = Counter(attempts[job_id].then_id for job_id in succeeded if attempts[job_id].then_id)
            if followed or callbacks:
                self._publish_again(steps_released(job_ids=followed, callbacks=callbacks))
        count_ended(
            Job.State.SUCCEEDED,
            [attempts[job_id] for job_id in succeeded],
            now,
            publish=[
                job_event(job_id=job_id, kind="state", state=Job.State.SUCCEEDED, result=results[job_id])
                for job_id in succeeded
            ],
        )

    def fail(
        self,
        *,
        job_id: str,
        number: int | None,
        error: str,
        traceback: str,
        state: str,
        retry_at: datetime | None = None,
    ) -> None:
        """Close attempt ``number`` (None: the latest, its process gone) as failed; a started job
        becomes ``state``: retrying (published again at ``retry_at`` by the relay), failed or dead
        (the steps after it cancelled). A report of an attempt that is not the job's latest changes
        nothing, and a job cancelled while it ran stays cancelled."""
        now = timezone.now()
        with transaction.atomic():
            job = (
                Job.objects.select_for_update()
                .filter(pk=job_id)
                .values("state", "attempts", "queue", "task_name", "started_at")
                .first()
            )
            if job is None or (number is not None and number != job["attempts"]):
                return  # unknown, or a late report of an attempt the job has left behind
            running = JobAttempt.objects.filter(job_id=job_id, outcome=JobAttempt.Outcome.RUNNING)
            running.filter(number=job["attempts"]).update(
                outcome=JobAttempt.Outcome.FAILED, finished_at=now, error=error
            )
            if job["state"] != Job.State.STARTED:
                return  # cancelled while it ran: it stays cancelled
            fields = {"state": state, "error": error, "traceback": traceback}
            if state == Job.State.RETRYING:
                fields["run_at"] = retry_at
            else:
                fields["finished_at"] = now
            Job.objects.filter(pk=job_id).update(**fields)
            if state != Job.State.RETRYING:
                self._stop_following(job_id, state, error)
        metric_counts.count(
            ended=[
                (
                    Job.State.DEAD if state == Job.State.DEAD else Job.State.FAILED,
                    job["queue"],
                    job["task_name"],
                    metric_counts.seconds_between(job["started_at"], now),
                )
            ],
            publish=[job_event(job_id=job_id, kind="state", state=state, error=error)],
        )

    def abandon_batch(self, *, job_ids: Sequence[str], reason: str, ran: bool) -> None:
        """Jobs of a batch a time limit stopped, still started: published again one by one. ``ran``:
        unknown which ran (the hard limit killed the process), so each attempt closes as failed with
        ``reason``; otherwise they never ran and their attempt is undone."""
        now = timezone.now()
        with transaction.atomic():
            jobs = [job for job in _locked(job_ids) if job.state == Job.State.STARTED]
            running = JobAttempt.objects.filter(job__in=jobs, outcome=JobAttempt.Outcome.RUNNING)
            if ran:
                running.update(outcome=JobAttempt.Outcome.FAILED, finished_at=now, error=reason)
            else:
                running.delete()
                Job.objects.filter(pk__in=[job.pk for job in jobs]).update(attempts=F("attempts") - 1)
            if jobs:
                self._publish_again(jobs, alone=True)

    def mark_undeliverable(self, *, job_id: str, reason: str) -> bool:
        """A worker refused the job's message (unknown task, content it may not accept): a job not
        finished is dead with ``reason``, its running attempt closed. Whether it changed."""
        now = timezone.now()
        with transaction.atomic():
            changed = (
                Job.objects.filter(pk=job_id)
                .exclude(state__in=FINISHED_STATES)
                .update(state=Job.State.DEAD, error=reason, finished_at=now)
            )
            if changed:
                JobAttempt.objects.filter(job_id=job_id, outcome=JobAttempt.Outcome.RUNNING).update(
                    outcome=JobAttempt.Outcome.FAILED, finished_at=now, error=reason
                )
                self._stop_following(job_id, Job.State.DEAD, reason)
                queue, task_name = Job.objects.filter(pk=job_id).values_list("queue", "task_name").get()
        if changed:
            metric_counts.count(
                ended=[(Job.State.DEAD, queue, task_name, None)],
                publish=[job_event(job_id=job_id, kind="state", state=Job.State.DEAD, error=reason)],
            )
        return bool(changed)

    # -- an operator's actions ------------------------------------------------------------------

    def retry(self, *, job_id, by=None, via: str) -> Job:
        """A failed, dead or cancelled job runs again: same arguments and key, a fresh attempt
        budget, recorded as who retried it. A workflow step whose earlier step has not succeeded, or
        a group's callback whose members have not all succeeded, waits for them again instead; the
        steps its failure cancelled wait for it again."""
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            if job.state not in RETRYABLE_STATES:
                raise ActionRefused(f"a {job.state} job cannot be retried; only failed, dead or cancelled ones")
            JobAction.objects.create(job=job, kind=JobAction.Kind.RETRIED, by=by, via=via, from_state=job.state)
            self._run_again_locked(job)
        return job

    def retry_edited(self, *, job_id, payload: dict[str, Any], expected: dict[str, Any], by=None, via: str) -> Job:
        """A failed or dead job runs again as ``retry`` runs it, with ``payload`` (already valid
        under its task's schema: the caller's check) in place of its own, recorded as an ``edited``
        action holding the payload before and after. Refused (ActionRefused) unless the job is
        failed or dead and its payload is still ``expected``, the one the edit was made from: an
        edit of a job someone retried or edited meanwhile would undo their change unseen."""
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            if job.state not in EDITABLE_STATES:
                raise ActionRefused(f"a {job.state} job cannot be edited and retried; only failed or dead ones")
            if job.payload != expected:
                raise ActionRefused("the job's payload changed since the edit was made from it: edit it again")
            JobAction.objects.create(
                job=job,
                kind=JobAction.Kind.EDITED,
                by=by,
                via=via,
                from_state=job.state,
                before=job.payload,
                after=payload,
            )
            job.payload = payload
            self._run_again_locked(job)
        return job

    def _run_again_locked(self, job: Job) -> None:
        """The retry of a locked job: a fresh attempt budget, its outcome cleared, published again
        (or waiting for the workflow steps before it), the steps its failure cancelled re-armed."""
        # A chain's step waits for the step before it, a group's callback for its members.
        waits = job.waiting_for > 0 or (job.after_id is not None and job.after.state != Job.State.SUCCEEDED)
        job.state = Job.State.WAITING if waits else Job.State.QUEUED
        job.attempts_before_retry = job.attempts
        job.error = job.traceback = job.progress_message = ""
        job.result = job.finished_at = job.run_at = job.discarded_at = None
        job.progress = 0
        job.save()
        steps_rearmed(job_id=job.pk)
        job.publish_error = ""
        if not waits:
            self._publish_again([job])

    def cancel(self, *, job_id, by=None, via: str) -> tuple[Job, bool]:
        """Cancel a job that has not finished, its running attempt closed, the steps after it
        cancelled; the job and whether it was running (its run is the caller's to terminate)."""
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            if job.state in FINISHED_STATES:
                raise ActionRefused(f"a {job.state} job cannot be cancelled")
            running = job.state == Job.State.STARTED
            self._cancel_locked(job, by=by, via=via, error=f"cancelled via {via}")
        return job, running

    def cancel_terminated(self, *, job_id, via: str) -> bool:
        """A started job whose run was terminated from outside the platform (Celery's own revoke)
        is recorded as cancelled; whether it was."""
        with transaction.atomic():
            job = Job.objects.select_for_update().filter(pk=job_id).first()
            if job is None or job.state != Job.State.STARTED:
                return False
            self._cancel_locked(job, by=None, via=via, error=f"terminated via {via} (not the platform's cancel)")
        return True

    def _cancel_locked(self, job: Job, *, by, via: str, error: str) -> None:
        now = timezone.now()
        JobAction.objects.create(job=job, kind=JobAction.Kind.CANCELLED, by=by, via=via, from_state=job.state)
        job.state, job.finished_at, job.error = Job.State.CANCELLED, now, error
        job.save(update_fields=["state", "finished_at", "error"])
        JobAttempt.objects.filter(job=job, outcome=JobAttempt.Outcome.RUNNING).update(
            outcome=JobAttempt.Outcome.FAILED, finished_at=now, error="cancelled"
        )
        self._stop_following(job.pk, Job.State.CANCELLED, error)
        transaction.on_commit(partial(job_event_publish, job_id=job.pk, kind="state", state=job.state, error=error))

    def discard(self, *, job_id, by=None, via: str) -> Job:
        """A dead job not yet discarded leaves the dead-letter counts; who did it is recorded."""
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            if job.state != Job.State.DEAD or job.discarded_at is not None:
                raise ActionRefused("only a dead job that is not yet discarded can be discarded")
            JobAction.objects.create(job=job, kind=JobAction.Kind.DISCARDED, by=by, via=via, from_state=job.state)
            job.discarded_at = timezone.now()
            job.save(update_fields=["discarded_at"])
        return job

    def _stop_following(self, job_id, state: str, error: str) -> None:
        cancelled, reason = steps_stopped(job_id=job_id, state=state, error=error)
        for step_id in cancelled:
            transaction.on_commit(
                partial(job_event_publish, job_id=step_id, kind="state", state=Job.State.CANCELLED, error=reason)
            )


def count_ended(
    outcome: str, attempts: Sequence[Attempt], now: datetime, *, publish: Sequence[tuple[str, str]] = ()
) -> None:
    """Runs that ended ``outcome`` (succeeded, failed or dead), counted with how long they ran, and
    their events (``publish``) in the same round trip."""
    if attempts:
        metric_counts.count(
            ended=[
                (outcome, attempt.queue, attempt.task_name, metric_counts.seconds_between(attempt.started_at, now))
                for attempt in attempts
            ],
            publish=publish,
        )


def count_enqueued_on_commit(jobs: Sequence[Job]) -> None:
    """The jobs an insert wrote (not an earlier job an idempotency key returned) are counted once
    the caller's transaction commits (at once outside one): one count call per insert."""
    written = {job.pk: job for job in jobs if getattr(job, "created", True)}  # a key's repeat is the same job
    new = [(job.queue, job.task_name) for job in written.values()]
    if new:
        transaction.on_commit(partial(metric_counts.count, enqueued=new))


def _attempts_numbered(numbers: dict[str, int]) -> Q:
    """The attempts of these numbers (job id -> number): one IN per number, as a batch's jobs
    mostly share theirs (a condition per job costs more to build than to run)."""
    by_number: dict[int, list[str]] = defaultdict(list)
    for job_id, number in numbers.items():
        by_number[number].append(job_id)
    return reduce(operator.or_, (Q(job_id__in=ids, number=number) for number, ids in by_number.items()))


def _results_expression(results: dict[str, Any]) -> Any:
    """One value when every job returned the same, else a CASE per job."""
    encoded = {json.dumps(result, sort_keys=True, cls=DjangoJSONEncoder) for result in results.values()}
    if len(encoded) == 1:
        return next(iter(results.values()))
    output = JSONField(encoder=DjangoJSONEncoder)
    return Case(*(When(pk=job_id, then=Value(result, output_field=output)) for job_id, result in results.items()))
