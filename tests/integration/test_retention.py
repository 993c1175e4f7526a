"""Retention: finished jobs, reports with their PDFs and ops marks are deleted once expired, and
exactly those. Through the services, and through real workers running the scheduled tasks with
their settings; the migration that points the existing retention schedule at the renamed task."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from tasks.models import Job, JobAction, Order, OrderStep, Report
from tasks.platform.queues import QueueName
from tasks.platform.services import retention
from tasks.platform.services.jobs import job_enqueue
from tasks.platform.services.retention import jobs_prune_finished
from tasks.platform.services.schedules import REPORT_RETENTION_SCHEDULE, RETENTION_SCHEDULE
from tasks.reports.retention import reports_prune
from tests.fixtures import bearer

pytestmark = pytest.mark.django_db(transaction=True)

DAY = timedelta(days=1)
#: a moment that keeps a row just inside its retention window
MINUTE = timedelta(minutes=1)


@pytest.fixture
def media(tmp_path, settings) -> str:
    """A media directory of the test's own, for this process and the worker."""
    settings.MEDIA_ROOT = tmp_path / "media"
    return str(settings.MEDIA_ROOT)


def job(state: str, *, finished_ago: timedelta | None, created_ago: timedelta | None = None, **fields) -> Job:
    """A job row; created when it finished unless ``created_ago`` says (a job finishes after it is
    created: retention reads only rows created before its cutoff)."""
    now = timezone.now()
    created_ago = finished_ago if created_ago is None else created_ago
    fields = {"task_name": "ops.ping", "queue": QueueName.DEFAULT, **fields}
    row = Job.objects.create(state=state, finished_at=None if finished_ago is None else now - finished_ago, **fields)
    if created_ago:
        Job.objects.filter(pk=row.pk).update(created_at=now - created_ago)
    return row


# --- jobs ---------------------------------------------------------------------------------------


def test_finished_jobs_past_their_retention_are_deleted_in_chunks_and_no_others(monkeypatch):
    monkeypatch.setattr(retention, "PRUNE_CHUNK", 2)  # several chunks per state
    expired = {
        "succeeded": [job("succeeded", finished_ago=31 * DAY) for _ in range(3)],
        "failed": [job("failed", finished_ago=91 * DAY) for _ in range(2)],
        "dead": [
            job("dead", finished_ago=91 * DAY),
            job("dead", finished_ago=400 * DAY, discarded_at=timezone.now()),
            # A row from before finished_at was always set: its age is its creation's.
            job("dead", finished_ago=None, created_ago=91 * DAY),
        ],
        "cancelled": [job("cancelled", finished_ago=91 * DAY)],
    }
    for row in expired["dead"]:
        row.attempt_history.create(number=1, started_at=timezone.now() - 92 * DAY, outcome="failed")
        JobAction.objects.create(job=row, kind="retried", via="admin", from_state="dead")
    kept = [
        job("succeeded", finished_ago=30 * DAY - MINUTE),
        job("failed", finished_ago=90 * DAY - MINUTE),
        job("dead", finished_ago=90 * DAY - MINUTE),
        job("cancelled", finished_ago=90 * DAY - MINUTE),
        job("failed", finished_ago=31 * DAY),  # past the succeeded window only
        job("queued", finished_ago=None, created_ago=400 * DAY),  # not finished: never pruned
        job("retrying", finished_ago=None, created_ago=400 * DAY),
    ]
    # An order's workflow jobs are its history: they stay while the order does.
    customer = get_user_model().objects.create_user("customer")
    order = Order.objects.create(customer=customer, email="c@example.com", payment_token="tok_ok")
    for position, (name, state) in enumerate([("validate_payment", "succeeded"), ("reserve_inventory", "dead")], 1):
        step_job = job(state, finished_ago=400 * DAY, task_name=f"orders.{name}")
        OrderStep.objects.create(order=order, name=name, position=position, job=step_job)
        kept.append(step_job)
    # A report outlives the job that built it.
    built_by = expired["failed"][0]
    report = Report.objects.create(owner=customer, date_from="2024-01-01", date_to="2024-01-02", job=built_by)

    deleted = jobs_prune_finished(succeeded_older_than=30 * DAY, failed_older_than=90 * DAY)

    assert deleted == {"succeeded": 3, "failed": 2, "dead": 3, "cancelled": 1}
    assert set(Job.objects.values_list("pk", flat=True)) == {row.pk for row in kept}
    report.refresh_from_db()
    assert report.job_id is None
    assert jobs_prune_finished(succeeded_older_than=30 * DAY, failed_older_than=90 * DAY) == dict.fromkeys(deleted, 0)


def test_the_scheduled_prune_runs_on_a_bulk_worker_with_its_settings(start_worker, wait_for_job):
    start_worker(QueueName.BULK, env={"JOB_FAILED_RETENTION_DAYS": "10", "JOB_RETENTION_DAYS": "5"})
    gone = [job("dead", finished_ago=11 * DAY), job("cancelled", finished_ago=11 * DAY)]
    gone.append(job("succeeded", finished_ago=6 * DAY))
    stays = [job("dead", finished_ago=9 * DAY), job("succeeded", finished_ago=4 * DAY)]
    schedule = PeriodicTask.objects.get(name=RETENTION_SCHEDULE)

    run = job_enqueue(task_name=schedule.task, payload={}, queue=schedule.queue)

    done = wait_for_job(run.id, Job.State.SUCCEEDED, timeout=30)
    assert done.result == {
        "deleted": 3,
        "deleted_by_state": {"succeeded": 1, "failed": 0, "dead": 1, "cancelled": 1},
        "retention_days": 5,
        "failed_retention_days": 10,
    }
    remaining = set(Job.objects.values_list("pk", flat=True))
    assert {row.pk for row in stays} | {done.pk} == remaining
    assert not {row.pk for row in gone} & remaining


# --- reports ------------------------------------------------------------------------------------


def report_with_file(owner, *, built_ago: timedelta | None, requested_ago: timedelta, job_row: Job | None = None):
    now = timezone.now()
    report = Report.objects.create(owner=owner, date_from="2024-01-01", date_to="2024-01-31", job=job_row)
    fields = {"created_at": now - requested_ago}
    if built_ago is not None:
        name = default_storage.save(f"reports/{report.pk}.pdf", ContentFile(b"%PDF-1.4 test report"))
        fields.update(file=name, finished_at=now - built_ago, order_count=0)
    Report.objects.filter(pk=report.pk).update(**fields)
    report.refresh_from_db()
    return report


def stored_file(name: str, *, age: timedelta) -> str:
    """A file under MEDIA_ROOT with the given modification time."""
    stored = default_storage.save(name, ContentFile(b"%PDF-1.4 left behind"))
    moment = (timezone.now() - age).timestamp()
    os.utime(default_storage.path(stored), (moment, moment))
    return stored


def test_expired_reports_are_deleted_with_their_files_and_then_answer_404(media, client):
    owner = get_user_model().objects.create_superuser("owner", password="unused-pass-123")
    expired = report_with_file(owner, built_ago=31 * DAY, requested_ago=31 * DAY)
    never_built = report_with_file(
        owner, built_ago=None, requested_ago=40 * DAY, job_row=job("dead", finished_ago=40 * DAY)
    )
    fresh = report_with_file(owner, built_ago=DAY, requested_ago=DAY)
    just_inside = report_with_file(owner, built_ago=30 * DAY - MINUTE, requested_ago=40 * DAY)
    still_building = report_with_file(
        owner, built_ago=None, requested_ago=40 * DAY, job_row=job("queued", finished_ago=None)
    )
    orphan = stored_file("reports/0190f6b2-8f0e-7a4c-9d4e-2c1a3b5d7e9f.pdf", age=31 * DAY)
    orphan_renamed = stored_file("reports/0190f6b2-8f0e-7a4c-9d4e-2c1a3b5d7e90_a1b2c3d.pdf", age=31 * DAY)
    being_written = stored_file("reports/0190f6b2-8f0e-7a4c-9d4e-2c1a3b5d7e91.pdf", age=MINUTE)
    not_a_report = stored_file("reports/README.txt", age=400 * DAY)
    auth = bearer(owner)
    assert client.get(f"/api/reports/{expired.pk}", **auth).status_code == 200

    deleted = reports_prune(older_than=30 * DAY)

    assert deleted == {"reports": 2, "files": 3, "orphan_files": 2}
    assert set(Report.objects.values_list("pk", flat=True)) == {fresh.pk, just_inside.pk, still_building.pk}
    left = {f"reports/{name}" for name in default_storage.listdir("reports")[1]}
    assert left == {fresh.file.name, just_inside.file.name, being_written, not_a_report}
    assert not {expired.file.name, orphan, orphan_renamed} & left
    for gone in (expired, never_built):
        assert client.get(f"/api/reports/{gone.pk}", **auth).status_code == 404
        assert client.get(f"/reports/{gone.pk}/download", **auth).status_code == 404
    assert client.get(f"/reports/{fresh.pk}/download", **auth).status_code == 200


def test_the_report_prune_is_seeded_and_runs_on_a_bulk_worker(media, start_worker, wait_for_job):
    owner = get_user_model().objects.create_user("owner")
    expired = report_with_file(owner, built_ago=3 * DAY, requested_ago=3 * DAY)
    kept = report_with_file(owner, built_ago=DAY - MINUTE, requested_ago=DAY)
    schedule = PeriodicTask.objects.get(name=REPORT_RETENTION_SCHEDULE)
    assert (schedule.task, schedule.queue, schedule.enabled) == ("reports.prune", QueueName.BULK, True)
    assert (schedule.crontab.minute, schedule.crontab.hour, str(schedule.crontab.timezone)) == ("47", "3", "UTC")
    start_worker(QueueName.BULK, env={"MEDIA_ROOT": media, "REPORT_RETENTION_DAYS": "2"})

    run = job_enqueue(task_name=schedule.task, payload={}, queue=schedule.queue)

    done = wait_for_job(run.id, Job.State.SUCCEEDED, timeout=30)
    assert done.result == {"reports": 1, "files": 1, "orphan_files": 0, "retention_days": 2}
    assert list(Report.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not default_storage.exists(expired.file.name)
    assert default_storage.exists(kept.file.name)


# --- ops marks ----------------------------------------------------------------------------------


def test_ops_marks_expire(start_worker, wait_for_job, broker):
    start_worker(QueueName.DEFAULT, env={"OPS_MARK_TTL_SECONDS": "120"})

    done = wait_for_job(job_enqueue(task_name="ops.mark", payload={"key": "ttl-check"}).id, Job.State.SUCCEEDED)

    assert done.result == {"key": "ttl-check", "marked_now": True}
    for key in ("ops:mark:ttl-check", "ops:mark:ttl-check:effects"):
        assert 100 < broker.ttl(key) <= 120, key
    assert settings.OPS_MARK_TTL_SECONDS == 7 * 24 * 3600  # the default, a week
