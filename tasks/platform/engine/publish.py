"""Sending jobs' messages to Redis: one job a message, or many short ones of one task a message.

Only the engine calls ``send`` (``Engine.publish``), after the jobs' rows are committed; it then
records the outcome in the ledger. A task that declares ``batch_size > 1`` has its first attempts
packed into ``jobs.run_batch`` messages of up to ``batch_size`` jobs of one queue and priority
(the worker's side is tasks.platform.tasks.batches): Celery's cost per message is then shared.

With tracing on, the Celery instrumentation's publish span of each message carries the job's
attributes (``tracing.enqueueing``) and puts the current trace's ``traceparent`` in its headers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from kombu.exceptions import BatchPublishError, OperationalError

from tasks.platform import tracing
from tasks.platform.models import Job

#: the Celery task that carries a batch: kwargs {"task": name, "jobs": [[job id, payload], ...]}
BATCH_TASK = "jobs.run_batch"
#: messages per Redis pipeline
PIPELINE_SIZE = 1000
#: longest text a message shows of a job's arguments (Celery's own limit)
REPR_MAX = 1024

_OPTIONS = {
    # Time limits are the worker's to apply (its settings, the task's own): without None here,
    # Celery would stamp the publishing process's limits on each message.
    "time_limit": None,
    "soft_time_limit": None,
    # A message to a queue's name is pushed onto its Redis list whether or not it was declared
    # (workers declare theirs): no declaration at each publish.
    "declare": [],
    "argsrepr": "()",
}


def send(jobs: Sequence[Job], *, alone: bool = False) -> Exception | None:
    """Publish the jobs' messages, in one Redis pipeline when there are several; the broker's
    error if it failed (part of them may then be out: a publish is at least once)."""
    from project.celery import app

    singles, batches = (list(jobs), []) if alone else batches_split(jobs, _batch_sizes(app, jobs))
    try:
        with app.producer_or_acquire() as producer, _pipelined(producer, len(singles) + len(batches)):
            for job in singles:
                with tracing.enqueueing(job):
                    app.tasks[job.task_name].apply_async(
                        kwargs=job.payload,
                        task_id=str(job.pk),
                        queue=job.queue,
                        priority=job.priority,
                        producer=producer,
                        kwargsrepr=payload_repr(job.payload),
                        **_OPTIONS,
                    )
            for batch in batches:
                first = batch[0]
                with tracing.enqueueing_batch(batch):
                    app.send_task(
                        BATCH_TASK,
                        kwargs={"task": first.task_name, "jobs": [[str(job.pk), job.payload] for job in batch]},
                        queue=first.queue,
                        priority=first.priority,
                        producer=producer,
                        kwargsrepr=batch_kwargsrepr(batch),
                        **_OPTIONS,
                    )
    except (OperationalError, BatchPublishError) as exc:
        return exc
    return None


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


def payload_repr(payload: dict[str, Any]) -> str:
    """What Flower and the logs show of a job's arguments: its payload's repr, cut at REPR_MAX."""
    text = repr(payload)
    return text if len(text) <= REPR_MAX else f"{text[: REPR_MAX - 3]}..."


def batch_kwargsrepr(jobs: Sequence[Job]) -> str:
    """What Flower and the logs show of a batch's arguments: its task, size, first and last ids."""
    task, first, last = jobs[0].task_name, jobs[0].pk, jobs[-1].pk
    return f"{{'task': {task!r}, 'jobs': '{len(jobs)} jobs, {first} ... {last}'}}"


def _batch_sizes(app: Any, jobs: Sequence[Job]) -> dict[str, int]:
    return {name: getattr(app.tasks.get(name), "batch_size", 1) for name in {job.task_name for job in jobs}}


def _pipelined(producer: Any, messages: int) -> AbstractContextManager:
    return producer.batch(max_size=PIPELINE_SIZE) if messages > 1 else nullcontext()
