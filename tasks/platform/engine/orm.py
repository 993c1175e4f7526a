"""The reference job engine: every change of a job's state and of its attempts, through the ORM.

Each public method is one transition. Its docstring states the states it acts on; a job in any
other state is left as it is (or, for an operator's action, refused with ActionRefused).

Locking, stated once: a transition takes the row locks of the jobs it changes before it reads
their state, inside one transaction, and several rows are locked in primary-key order
(``_locked``). Every writer of many rows (an enqueue's publish mark, a relay pass, a batch's claim
and its successes) takes them in that order, so two of them wait for each other instead of
deadlocking. Workflow links are followed inside the same transaction.

Publishing, stated once: a job to run now is written ``pending`` with ``publishing_since`` set (its
publisher's claim); after the commit, ``publish`` sends its message and then marks it ``queued``.
A publish that failed frees the claim, and an expired claim means its publisher died: either way
the relay (``claim_due``) publishes the job. The row is the outbox; nothing else keeps the promise.
"""

from __future__ import annotations

import json
import logging
import operator
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial, reduce
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Case, F, JSONField, Q, QuerySet, Value, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from tasks.platform.engine import publish as messages
from tasks.platform.engine.events import job_event_publish, job_events_publish
from tasks.platform.engine.workflows import steps_rearmed, steps_released, steps_stopped, with_next_steps
from tasks.platform.models import Job, JobAction, JobAttempt
from tasks.platform.models.jobs import FINISHED_STATES, RETRYABLE_STATES, UNPUBLISHED_STATES

logger = logging.getLogger(__name__)

#: a publisher's claim older than this belongs to a process that died between commit and publish
PUBLISH_CLAIM = timedelta(seconds=30)
#: what a batch's claim reads of each job
_CLAIM_FIELDS = ("pk", "state", "attempts", "attempts_before_retry", "max_attempts", "then_id", "has_next")


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

    @classmethod
    def started(cls, job: Any, *, max_attempts: int) -> Attempt:
        """The attempt a job (a row or a model) was just started for; ``max_attempts``: the task's."""
        return cls(
            number=job.attempts,
            used=job.attempts - job.attempts_before_retry,
            allowed=job.max_attempts or max_attempts,
            then_id=job.then_id,
            has_next=job.has_next,
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
        """Write new jobs in the caller's transaction. Where an owner's idempotency key is taken
        (by an earlier job, or earlier in ``jobs``), that job is returned in its place with
        ``created`` False. Precondition: unsaved jobs, built by the enqueue service."""
        keyed = {}
        for job in jobs:
            if job.idempotency_key is not None:
                keyed.setdefault((job.owner_id, job.task_name, job.idempotency_key), job)
        if not keyed:
            self._insert_rows(jobs)
            return jobs
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

    def publish_on_commit(self, jobs: Sequence[Job], *, alone: bool = False) -> None:
        """Publish pending jobs this process claimed once the caller's transaction commits (at once
        outside one)."""
        if jobs:
            transaction.on_commit(partial(self.publish, jobs, alone=alone))

    def publish(self, jobs: Sequence[Job], *, alone: bool = False) -> bool:
        """Send the messages of jobs whose publish this process claimed (committed, pending or
        due), then mark them queued. On a broker error their claim is freed for the relay and
        each job's ``publish_error`` says why. ``alone``: one message each, no batches."""
        published_at = timezone.now()  # before sending: a fast worker may start a job at once
        failure = messages.send(jobs, alone=alone)
        ids = [job.pk for job in jobs]
        if failure is not None:
            Job.objects.filter(pk__in=ids).update(publishing_since=None)
            logger.warning(
                "%d job(s) stay unpublished, the relay will retry: broker unavailable (%s)", len(ids), failure
            )
        else:
            self.mark_published(ids, published_at)
        for job in jobs:
            job.publish_error = "" if failure is None else str(failure)
            if failure is None and job.state in UNPUBLISHED_STATES:
                job.state, job.queued_at, job.publishing_since = Job.State.QUEUED, published_at, None
        return failure is None

    def mark_published(self, ids: list, published_at: datetime) -> None:
        """Jobs still unpublished and still claimed become queued. A fast worker may have started
        (or even failed back to retrying, its claim freed) a job before this mark: it keeps its
        state, and only learns when it was sent."""
        with transaction.atomic() if len(ids) > 1 else nullcontext():
            if len(ids) > 1:
                list(_locked(ids).values_list("pk"))
            claimed = Job.objects.filter(pk__in=ids, publishing_since__isnull=False)
            if claimed.filter(state__in=UNPUBLISHED_STATES).update(
                state=Job.State.QUEUED, queued_at=published_at, publishing_since=None
            ) < len(ids):
                claimed.update(publishing_since=None, queued_at=Coalesce(F("queued_at"), Value(published_at)))

    def claim_due(self, *, limit: int) -> list[Job]:
        """The relay's claim: pending jobs whose publish is not claimed or whose claim expired, and
        delayed jobs and retries that fell due. Rows locked by another claim are skipped, so two
        relays never take the same job. The caller publishes them (``publish``)."""
        now = timezone.now()
        due = Q(state=Job.State.PENDING) | Q(state__in=[Job.State.SCHEDULED, Job.State.RETRYING], run_at__lte=now)
        free = Q(publishing_since__isnull=True) | Q(publishing_since__lt=now - PUBLISH_CLAIM)
        with transaction.atomic():
            jobs = list(
                Job.objects.select_for_update(skip_locked=True).filter(due & free).order_by("created_at")[:limit]
            )
            Job.objects.filter(pk__in=[job.pk for job in jobs]).update(publishing_since=now)
        for job in jobs:
            job.publishing_since = now
        return jobs

    def _publish_again(self, jobs: list[Job], *, alone: bool = False) -> None:
        """In the caller's transaction, rows locked: back to pending, claimed by this process, and
        published after the commit."""
        now = timezone.now()
        Job.objects.filter(pk__in=[job.pk for job in jobs]).update(state=Job.State.PENDING, publishing_since=now)
        for job in jobs:
            job.state, job.publishing_since, job.publish_error = Job.State.PENDING, now, ""
        self.publish_on_commit(jobs, alone=alone)

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
        cancelled, or dead now because its workers kept dying). A job found started lost its
        worker: that attempt is closed as lost first. A message without a row (another producer)
        gets its row here, so the ledger knows every job that ran."""
        now = timezone.now()
        with transaction.atomic():
            job = with_next_steps(Job.objects.select_for_update().filter(pk=job_id)).first()
            if job is None:
                row = Job(id=job_id, task_name=task_name, queue=queue, payload=payload, origin=origin, queued_at=now)
                Job.objects.bulk_create([row], ignore_conflicts=True)  # a concurrent insert of it wins
                job = with_next_steps(Job.objects.select_for_update().filter(pk=job_id)).get()
            if job.state in FINISHED_STATES:
                return None
            if job.state == Job.State.STARTED and self._close_lost_attempts([job], now=now, limit=max_worker_losses):
                return None
            job.attempts += 1
            job.state, job.started_at, job.worker, job.queue = Job.State.STARTED, now, worker, queue or job.queue
            job.save(update_fields=["attempts", "state", "started_at", "worker", "queue"])
            JobAttempt.objects.create(job=job, number=job.attempts, worker=worker, started_at=now)
        job_event_publish(job_id=job_id, kind="state", state=Job.State.STARTED, worker=worker)
        return Attempt.started(job, max_attempts=max_attempts)

    def claim_batch(
        self, *, job_ids: Sequence[str], worker: str, queue: str, max_attempts: int, max_worker_losses: int
    ) -> dict[str, Attempt]:
        """Start a batch's jobs that are not finished: job id -> its attempt. A batch with jobs
        already started lost its worker: nothing is claimed, the lost attempts are closed and every
        unfinished job is published again alone, so a poison job dies alone."""
        now = timezone.now()
        with transaction.atomic():
            rows = list(with_next_steps(_locked(job_ids)).values_list(*_CLAIM_FIELDS, named=True))
            if any(row.state == Job.State.STARTED for row in rows):
                jobs = list(Job.objects.filter(pk__in=job_ids))  # locked already
                lost = [job for job in jobs if job.state == Job.State.STARTED]
                self._close_lost_attempts(lost, now=now, limit=max_worker_losses)
                self._publish_again([job for job in jobs if job.state not in FINISHED_STATES], alone=True)
                return {}
            runnable = [row for row in rows if row.state not in FINISHED_STATES]
            Job.objects.filter(pk__in=[row.pk for row in runnable]).update(
                state=Job.State.STARTED, attempts=F("attempts") + 1, started_at=now, worker=worker, queue=queue
            )
            JobAttempt.objects.bulk_create(
                JobAttempt(job_id=row.pk, number=row.attempts + 1, worker=worker, started_at=now) for row in runnable
            )
        job_events_publish(
            [{"job_id": row.pk, "kind": "state", "state": Job.State.STARTED, "worker": worker} for row in runnable]
        )
        return {
            str(row.pk): Attempt.started(row._replace(attempts=row.attempts + 1), max_attempts=max_attempts)
            for row in runnable
        }

    def _close_lost_attempts(self, jobs: list[Job], *, now: datetime, limit: int) -> list[Job]:
        """Jobs delivered again while started lost their worker (killed, OOM, crash): their running
        attempts close as lost. Those lost ``limit`` times since their last retry are dead (a
        poison job); they are returned. Rows locked by the caller."""
        ids = [job.pk for job in jobs]
        JobAttempt.objects.filter(job_id__in=ids, outcome=JobAttempt.Outcome.RUNNING).update(
            outcome=JobAttempt.Outcome.LOST, finished_at=now, error="the worker was lost during the run"
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
            job_event_publish(job_id=job.pk, kind="state", state=Job.State.DEAD, error=reason)
        return dead

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
                    _any_of(Q(job_id=job_id, number=attempts[job_id].number) for job_id in current),
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
        job_events_publish(
            [
                {"job_id": job_id, "kind": "state", "state": Job.State.SUCCEEDED, "result": results[job_id]}
                for job_id in succeeded
            ]
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
            job = Job.objects.select_for_update().filter(pk=job_id).values("state", "attempts").first()
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
                fields.update(run_at=retry_at, publishing_since=None)
            else:
                fields["finished_at"] = now
            Job.objects.filter(pk=job_id).update(**fields)
            if state != Job.State.RETRYING:
                self._stop_following(job_id, state, error)
        job_event_publish(job_id=job_id, kind="state", state=state, error=error)

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
                .update(state=Job.State.DEAD, error=reason, finished_at=now, publishing_since=None)
            )
            if changed:
                JobAttempt.objects.filter(job_id=job_id, outcome=JobAttempt.Outcome.RUNNING).update(
                    outcome=JobAttempt.Outcome.FAILED, finished_at=now, error=reason
                )
                self._stop_following(job_id, Job.State.DEAD, reason)
        if changed:
            job_event_publish(job_id=job_id, kind="state", state=Job.State.DEAD, error=reason)
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
            # A chain's step waits for the step before it, a group's callback for its members.
            waits = job.waiting_for > 0 or (job.after_id is not None and job.after.state != Job.State.SUCCEEDED)
            job.state = Job.State.WAITING if waits else Job.State.PENDING
            job.attempts_before_retry = job.attempts
            job.error = job.traceback = job.progress_message = ""
            job.result = job.finished_at = job.run_at = job.discarded_at = job.publishing_since = None
            job.progress = 0
            job.save()
            steps_rearmed(job_id=job.pk)
            job.publish_error = ""
            if not waits:
                self._publish_again([job])
        return job

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


def _any_of(conditions: Iterable[Q]) -> Q:
    return reduce(operator.or_, conditions)


def _results_expression(results: dict[str, Any]) -> Any:
    """One value when every job returned the same, else a CASE per job."""
    encoded = {json.dumps(result, sort_keys=True, cls=DjangoJSONEncoder) for result in results.values()}
    if len(encoded) == 1:
        return next(iter(results.values()))
    output = JSONField(encoder=DjangoJSONEncoder)
    return Case(*(When(pk=job_id, then=Value(result, output_field=output)) for job_id, result in results.items()))
