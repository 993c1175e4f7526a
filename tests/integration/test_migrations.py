"""Data migrations that carry state over: run backwards to before them and forwards again."""

from datetime import timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from tasks.models import Job, PublishLease

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE_LEASE_ROWS = [("tasks", "0009_job_written_queued")]
WITH_LEASE_ROWS = [("tasks", "0010_publish_leases")]


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


def test_a_lease_held_on_a_queued_row_becomes_a_publish_lease_of_the_same_age(migrated_back):
    old_job = migrated_back(BEFORE_LEASE_ROWS).get_model("tasks", "Job")
    since = timezone.now() - timedelta(seconds=5)

    def job(state, **fields):
        return old_job.objects.create(task_name="ops.ping", queue="default", state=state, **fields)

    leased = [job("queued", publishing_since=since) for _ in range(2)]
    released = job("queued")
    relayed = job("pending", publishing_since=since)

    migrate(WITH_LEASE_ROWS)

    (lease,) = PublishLease.objects.all()
    assert (lease.since, sorted(lease.job_ids)) == (since, sorted(job.pk for job in leased))
    rows = dict(Job.objects.values_list("pk", "publishing_since"))
    assert [rows[job.pk] for job in [*leased, released]] == [None, None, None]
    assert rows[relayed.pk] == since  # the relay's own lease on an unpublished row stays
