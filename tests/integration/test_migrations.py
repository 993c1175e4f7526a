"""Data migrations that carry state over: run backwards to before them and forwards again."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from project.celery import app
from tasks.models import Job, JobOutbox
from tasks.platform.services.schedules import RETENTION_SCHEDULE, RETENTION_SCHEDULE_BEFORE

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_ONE_PUBLISH = [("tasks", "0014_retention_schedule_prunes_finished_jobs")]
WITH_ONE_PUBLISH = [("tasks", "0015_one_publish_mechanism_and_owner_key")]
WITH_OUTBOX = [("tasks", "0016_outbox_table")]


def migrate(targets) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


@pytest.fixture
def migrated_back():
    """Migrate to before the migration; the schema is the latest again after the test, whatever
    happened in it (the next tests need it)."""

    def back(targets):
        return migrate(targets).loader.project_state(targets).apps

    yield back
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_the_queued_jobs_of_a_publish_lease_go_back_to_the_relay(migrated_back):
    old_apps = migrated_back(BEFORE_ONE_PUBLISH)
    old_job, old_lease = old_apps.get_model("tasks", "Job"), old_apps.get_model("tasks", "PublishLease")

    def job(state, **fields):
        return old_job.objects.create(task_name="ops.ping", queue="default", state=state, **fields)

    leased, started = job("queued", queued_at=timezone.now()), job("started")
    unleased = job("queued", queued_at=timezone.now())
    old_lease.objects.create(since=timezone.now() - timedelta(seconds=5), jobs=leased.pk.bytes + started.pk.bytes)

    migrate(WITH_OUTBOX)

    rows = {
        pk: (state, queued_at is None) for pk, state, queued_at in Job.objects.values_list("pk", "state", "queued_at")
    }
    assert rows[leased.pk] == (Job.State.PENDING, True)  # its publish may never have happened
    assert rows[started.pk] == (Job.State.STARTED, True)
    assert rows[unleased.pk] == (Job.State.QUEUED, False)
    assert list(JobOutbox.objects.values_list("job_id", "claimed_at")) == [(leased.pk, None)]  # the relay's at once


def test_pending_jobs_owe_their_messages_in_the_outbox_and_back(migrated_back):
    old_apps = migrated_back(WITH_ONE_PUBLISH)
    old_job = old_apps.get_model("tasks", "Job")
    claimed_at = timezone.now() - timedelta(seconds=5)
    in_flight = old_job.objects.create(
        task_name="ops.ping", queue="default", state="pending", publishing_since=claimed_at
    )
    failed = old_job.objects.create(task_name="ops.ping", queue="default", state="pending")
    queued = old_job.objects.create(task_name="ops.ping", queue="default", state="queued", queued_at=timezone.now())

    migrate(WITH_OUTBOX)

    assert set(JobOutbox.objects.values_list("job_id", "claimed_at")) == {(in_flight.pk, claimed_at), (failed.pk, None)}
    assert Job.objects.filter(pk=queued.pk).values_list("state", flat=True).get() == Job.State.QUEUED

    old_apps = migrated_back(WITH_ONE_PUBLISH)
    rows = old_apps.get_model("tasks", "Job").objects.values_list("pk", "state", "publishing_since")
    assert set(rows) == {
        (in_flight.pk, "pending", claimed_at),
        (failed.pk, "pending", None),
        (queued.pk, "queued", None),
    }


# --- the migration of the seeded schedule -------------------------------------------------------

#: the migration, found by name whatever its number
RENAME_MIGRATION = "_retention_schedule_prunes_finished_jobs"


def rename_targets() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(before it, with it) as migrate targets."""
    graph = MigrationExecutor(connection).loader.graph
    (name,) = [name for app, name in graph.nodes if app == "tasks" and name.endswith(RENAME_MIGRATION)]
    (parent,) = [node for node in graph.node_map[("tasks", name)].parents if node.key[0] == "tasks"]
    return [parent.key], [("tasks", name)]


def test_the_migration_points_the_existing_retention_schedule_at_the_renamed_task(migrated_back):
    before_rename, with_rename = rename_targets()
    seeded = PeriodicTask.objects.get(name=RETENTION_SCHEDULE)
    old_apps = migrated_back(before_rename)
    # As a database from before has it (the migration's reverse gave the seeded row its old name),
    # with an admin's edits: disabled, another time; and an admin's own schedule of the old task.
    OldTask = old_apps.get_model("django_celery_beat", "PeriodicTask")
    before = OldTask.objects.get(pk=seeded.pk)
    assert (before.name, before.task) == (RETENTION_SCHEDULE_BEFORE, "jobs.prune_succeeded")
    later = CrontabSchedule.objects.create(minute="5", hour="4", timezone="UTC")
    OldTask.objects.filter(pk=seeded.pk).update(enabled=False, crontab_id=later.pk)
    own = OldTask.objects.create(name="Extra prune", task="jobs.prune_succeeded", crontab_id=later.pk)
    OldJob = old_apps.get_model("tasks", "Job")
    past_run = OldJob.objects.create(
        task_name="jobs.prune_succeeded", queue="bulk", state="succeeded", origin=f"beat:{RETENTION_SCHEDULE_BEFORE}"
    )
    changes_before = PeriodicTasks.objects.get(ident=1).last_update

    migrate(with_rename)

    after = PeriodicTask.objects.get(pk=seeded.pk)
    assert (after.name, after.task, after.enabled, after.crontab_id) == (
        RETENTION_SCHEDULE,
        "jobs.prune_finished",
        False,
        later.pk,
    )
    assert after.description == seeded.description
    assert PeriodicTask.objects.get(pk=own.pk).task == "jobs.prune_finished"
    assert "jobs.prune_finished" in app.tasks
    assert not PeriodicTask.objects.filter(task="jobs.prune_succeeded").exists()
    assert Job.objects.filter(pk=past_run.pk).values_list("origin", flat=True).get() == f"beat:{RETENTION_SCHEDULE}"
    assert PeriodicTasks.objects.get(ident=1).last_update > changes_before  # a running beat reloads
