"""Rows the engine writes without the ORM (COPY for many, on PostgreSQL) read back as the ORM
writes the same jobs."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model

from tasks.models import Job
from tasks.platform.services.jobs import JobRequest, job_enqueue, job_enqueue_many

pytestmark = pytest.mark.django_db(transaction=True)

#: every column but the id
FIELDS = [f.attname for f in Job._meta.concrete_fields if f.attname != "id"]


def stored(job: Job) -> dict:
    return Job.objects.filter(pk=job.pk).values(*FIELDS).get()


def test_rows_written_without_the_orm_equal_the_orms(broker):
    owner = get_user_model().objects.create_user("rows")
    callback = job_enqueue(task_name="ops.ping", owner=owner, waiting_for=4)
    requests = [
        JobRequest("ops.ping", {"hold_seconds": 1}),
        JobRequest("ops.noop", {"io_ms": 2.5}, queue="critical", priority=0, max_attempts=7),
        JobRequest("ops.fail", {"mode": "permanent", "note": 'naïve ☃ "quoted"\t\\ \n'}),
        JobRequest("ops.ping", delay=timedelta(minutes=5)),
    ]

    jobs = job_enqueue_many(requests=requests, owner=owner, origin="test", then=callback)
    single = job_enqueue(task_name="ops.fail", payload={"mode": "permanent", "note": "☃"}, owner=owner, max_attempts=2)
    keyed = job_enqueue(task_name="ops.ping", idempotency_key="k-1", priority=9, after=single)

    written = [*jobs, single, keyed]
    rows = [stored(job) for job in written]

    assert [row["state"] for row in rows] == ["queued", "queued", "queued", "scheduled", "queued", "waiting"]
    assert [row["then_id"] for row in rows[:4]] == [callback.pk] * 4
    for job, row in zip(written, rows, strict=True):
        # The same job written by the ORM, under another id (and key: keys are unique).
        job.id, job._state.adding = Job._meta.pk.get_default(), True
        job.idempotency_key = job.idempotency_key and f"{job.idempotency_key}-orm"
        job.save(force_insert=True)
        assert stored(job) == {**row, "idempotency_key": job.idempotency_key}
