"""A job's owner is a user, checked by the database's triggers (migration 0011) on every way a job
row is written, and a deleted user's jobs are disowned, as a foreign key with SET NULL would."""

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, connections, transaction

from tasks.models import Job
from tasks.platform.services.jobs import JobRequest, job_enqueue, job_enqueue_many
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()
DELETE_USER = f"DELETE FROM {User._meta.db_table} WHERE {User._meta.pk.column} = %s"  # noqa: S608


def write_one(owner) -> None:
    job_enqueue(task_name="ops.ping", owner=owner)


def write_many(owner) -> None:
    job_enqueue_many(requests=[JobRequest("ops.ping")] * 3, owner=owner)


def write_with_the_orm(owner) -> None:
    Job.objects.create(task_name="ops.ping", queue="default", owner_id=owner.pk)


def give_the_jobs_to(owner) -> None:
    Job.objects.update(owner_id=owner.pk)


@pytest.mark.parametrize("write", [write_one, write_many, write_with_the_orm, give_the_jobs_to])
def test_a_job_whose_owner_is_no_user_is_refused(broker, write):
    Job.objects.create(task_name="ops.ping", queue="default", owner=User.objects.create_user("owner"))
    nobody = User(pk=(User.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1000)
    before = list(Job.objects.values_list("pk", "owner_id"))

    with pytest.raises(IntegrityError, match="not a user"):
        write(nobody)

    assert list(Job.objects.values_list("pk", "owner_id")) == before


@pytest.mark.parametrize("delete", ["orm", "sql"])
def test_a_deleted_users_jobs_stay_without_an_owner(broker, delete):
    owner = User.objects.create_user("leaving")
    jobs = job_enqueue_many(requests=[JobRequest("ops.ping")] * 2, owner=owner)

    if delete == "orm":
        owner.delete()
    else:
        with connection.cursor() as cursor:
            cursor.execute(DELETE_USER, [owner.pk])

    assert list(Job.objects.filter(pk__in=[job.pk for job in jobs]).values_list("owner_id", flat=True)) == [None] * 2


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has one writer at a time")
def test_a_user_deleted_while_their_jobs_commit_waits_for_them_and_disowns_them(broker):
    owner = User.objects.create_user("racing")
    deleted = threading.Event()

    def delete_owner() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute(DELETE_USER, [owner.pk])
            deleted.set()
        finally:
            connections.close_all()

    with transaction.atomic():
        jobs = job_enqueue_many(requests=[JobRequest("ops.ping")] * 3, owner=owner)
        deleter = threading.Thread(target=delete_owner)
        deleter.start()
        # The insert's check locked the owner: the delete waits for this transaction.
        wait_until(_a_query_waits_for_a_lock, timeout=10, what="the delete to wait for the enqueue's lock")
        assert not deleted.is_set()
    deleter.join(timeout=10)

    assert deleted.is_set()
    assert not User.objects.filter(pk=owner.pk).exists()
    assert list(Job.objects.filter(pk__in=[job.pk for job in jobs]).values_list("owner_id", flat=True)) == [None] * 3


def _a_query_waits_for_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")  # else a transaction sees its first reading
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'DELETE%%'"
        )
        return cursor.fetchone()[0] > 0
