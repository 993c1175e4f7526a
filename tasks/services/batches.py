"""Multi-job messages: many short jobs in one Celery message, their ledger written in bulk.

Celery spends about a millisecond on each message (receive, reserve, acknowledge, events), and the
ledger a few statements on each job: for jobs that take a millisecond themselves, that is the
whole cost. A task that declares ``batch_size > 1`` has the first attempts published together (an
``enqueue_many``, a relay pass, released workflow steps) packed into ``jobs.run_batch`` messages of
up to ``batch_size`` jobs of one task, queue and priority. The worker claims a message's jobs in one
transaction, runs them one after another, records a failure as it happens, and writes successes in
bulk (at the end, or every ``FLUSH_SECONDS``).

Nothing is lost when the worker dies: the message is acknowledged only after its successes are
written (late ack), so a killed worker's batch is delivered again. A batch delivered again while
the ledger has its jobs started (their worker died) is not run as a batch: the lost attempts are
closed and every unfinished job is published again on its own, so a poison job is singled out
and dies alone (``TASK_MAX_WORKER_LOSSES``) instead of taking its batch with it.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import Case, F, JSONField, Value, When
from django.utils import timezone

from tasks.models import Job, JobAttempt
from tasks.models.jobs import FINISHED_STATES
from tasks.services.events import job_events_publish
from tasks.services.ledger import Attempt, job_rows_tombstoned, jobs_close_lost_attempts, rows_awaited
from tasks.services.workflows import with_next_steps, workflow_jobs_succeeded

#: the Celery task that carries a batch: kwargs {"task": name, "jobs": [[job id, payload], ...]}
BATCH_TASK = "jobs.run_batch"
#: successes wait at most this long in a running batch before they are written
FLUSH_SECONDS = 1.0
#: what a claim reads of each job (not whole rows: a claim is most of a batch's own cost)
CLAIM_FIELDS = ("pk", "state", "attempts", "attempts_before_retry", "max_attempts", "then_id", "has_next")


def batch_kwargsrepr(jobs: Sequence[Any]) -> str:
    """What Flower and the logs show of a batch's arguments: its task, size, and first and last
    job ids. Celery's default, the arguments' repr cut at 1 KiB, shows a dozen jobs of a hundred and
    took a third of a batch's publish."""
    task, first, last = jobs[0].task_name, jobs[0].pk, jobs[-1].pk
    return f"{{'task': {task!r}, 'jobs': '{len(jobs)} jobs, {first} ... {last}'}}"


def batches_split(jobs: Sequence[Job], batch_sizes: dict[str, int]) -> tuple[list[Job], list[list[Job]]]:
    """The jobs sent alone, and the batches (same task, queue and priority; ``batch_sizes`` per
    task name). Only first attempts travel in batches: a job that failed or was lost runs alone."""
    alone: list[Job] = []
    grouped: dict[tuple, list[Job]] = defaultdict(list)
    for job in jobs:
        if batch_sizes.get(job.task_name, 1) > 1 and job.attempts == 0:
            grouped[job.task_name, job.queue, job.priority].append(job)
        else:
            alone.append(job)
    batches = []
    for (task_name, _, _), members in grouped.items():
        size = batch_sizes[task_name]
        chunks = [members[i : i + size] for i in range(0, len(members), size)]
        if len(chunks[-1]) == 1:  # a batch of one is just a slower single message
            alone += chunks.pop()
        batches += chunks
    return alone, batches


def batch_claim(
    *,
    task_name: str,
    jobs: Sequence[tuple[str, dict]],
    worker: str,
    queue: str,
    max_attempts: int,
    max_worker_losses: int,
    rows_in_flight: bool = False,
) -> dict[str, Attempt]:
    """Start the batch's runnable jobs (one transaction): job id -> its attempt. Finished and
    cancelled jobs are left out. A batch whose jobs the ledger has started already lost its worker:
    nothing is claimed, and its unfinished jobs are published again one by one.

    ``rows_in_flight``: the message was sent while its enqueue's transaction committed
    (tasks.services.job_rows.job_rows_insert_while). Its rows, committed together, are waited for;
    if they never come, the jobs are cancelled (tasks.services.ledger.job_rows_tombstoned)."""
    now = timezone.now()
    ids = [job_id for job_id, _ in jobs]
    with transaction.atomic():
        # Locked in id order, as the publisher marking them queued locks them (no deadlock).
        locked = with_next_steps(Job.objects.select_for_update().filter(pk__in=ids).order_by("pk"))
        rows = list(locked.values_list(*CLAIM_FIELDS, named=True))
        if not rows and rows_in_flight:
            rows = rows_awaited(lambda: list(locked.values_list(*CLAIM_FIELDS, named=True)))
            if not rows:
                tombstones = [
                    Job(id=job_id, task_name=task_name, queue=queue, payload=payload) for job_id, payload in jobs
                ]
                job_rows_tombstoned(tombstones)
                rows = list(locked.values_list(*CLAIM_FIELDS, named=True))
        if any(row.state == Job.State.STARTED for row in rows):
            jobs = list(Job.objects.filter(pk__in=ids))  # the rare path: whole rows, already locked
            lost = [job for job in jobs if job.state == Job.State.STARTED]
            jobs_close_lost_attempts(lost, now=now, limit=max_worker_losses)
            _publish_alone([job for job in jobs if job.state not in FINISHED_STATES], now=now)
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


def batch_succeeded(*, results: dict[str, Any], attempts: dict[str, Attempt]) -> None:
    """Record the batch's successes in one transaction; jobs cancelled while they ran stay cancelled."""
    if not results:
        return
    now = timezone.now()
    ids = list(results)
    with transaction.atomic():
        # Locked in id order first, as every writer of several job rows locks them: an UPDATE
        # alone locks them in scan order and deadlocked with a publisher marking the same rows.
        # Held until commit, the states read here are the ones the UPDATE finds.
        locked = Job.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk", "state")
        succeeded = [str(pk) for pk, state in locked if state == Job.State.STARTED]
        JobAttempt.objects.filter(job_id__in=ids, outcome=JobAttempt.Outcome.RUNNING).update(
            outcome=JobAttempt.Outcome.SUCCEEDED, finished_at=now
        )
        Job.objects.filter(pk__in=succeeded).update(
            state=Job.State.SUCCEEDED,
            result=_results_expression(results),
            progress=100,
            error="",
            traceback="",
            finished_at=now,
        )
        callbacks = Counter(attempts[job_id].then_id for job_id in succeeded if attempts[job_id].then_id)
        followed = [job_id for job_id in succeeded if attempts[job_id].has_next]
        if followed or callbacks:
            workflow_jobs_succeeded(job_ids=followed, callbacks=callbacks)
    job_events_publish(
        [
            {"job_id": job_id, "kind": "state", "state": Job.State.SUCCEEDED, "result": results[job_id]}
            for job_id in succeeded
        ]
    )


def batch_abandon(*, job_ids: Sequence[str], reason: str, ran: bool) -> None:
    """Jobs of a batch that a time limit stopped, still started in the ledger: published again one
    by one. ``ran``: unknown which of them ran (the hard limit killed the process), so each attempt
    is closed as failed with ``reason``; otherwise they never ran and their attempt is undone."""
    now = timezone.now()
    with transaction.atomic():
        started = Job.objects.select_for_update().filter(pk__in=job_ids, state=Job.State.STARTED)
        jobs = list(started.order_by("pk"))
        running = JobAttempt.objects.filter(job__in=jobs, outcome=JobAttempt.Outcome.RUNNING)
        if ran:
            running.update(outcome=JobAttempt.Outcome.FAILED, finished_at=now, error=reason)
        else:
            running.delete()
            Job.objects.filter(pk__in=[job.pk for job in jobs]).update(attempts=F("attempts") - 1)
        _publish_alone(jobs, now=now)


def _publish_alone(jobs: list[Job], *, now: datetime) -> None:
    """Back to pending and published after commit, one message each (the relay covers a lost publish)."""
    from tasks.services.jobs import job_publish_many  # jobs -> registry -> ledger -> batches

    if not jobs:
        return
    Job.objects.filter(pk__in=[job.pk for job in jobs]).update(state=Job.State.PENDING, publishing_since=now)
    for job in jobs:
        job.state, job.publishing_since, job.publish_error = Job.State.PENDING, now, ""
    transaction.on_commit(partial(job_publish_many, jobs=jobs, alone=True))


def _results_expression(results: dict[str, Any]) -> Any:
    """One value when every job returned the same (no-op jobs return None), else a CASE per job."""
    encoded = {json.dumps(result, sort_keys=True, cls=DjangoJSONEncoder) for result in results.values()}
    if len(encoded) == 1:
        return next(iter(results.values()))
    field = JSONField(encoder=DjangoJSONEncoder)
    return Case(*(When(pk=job_id, then=Value(result, output_field=field)) for job_id, result in results.items()))
