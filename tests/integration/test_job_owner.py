"""A job's owner is a user, checked by the database's foreign key on every way a job row is written;
a user deleted through Django disowns their jobs (SET NULL), and no delete leaves a job owned by no
one."""

import threading

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, connections, transaction

from tasks.models import Job
from tasks.platform.services.jobs import JobRequest, job_enqueue, job_enqueue_many

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

    with pytest.raises(IntegrityError, match=r"(?i)foreign key"):
        write(nobody)

    assert list(Job.objects.values_list("pk", "owner_id")) == before


def test_a_user_deleted_through_django_disowns_their_jobs(broker):
    owner = User.objects.create_user("leaving")
    jobs = job_enqueue_many(requests=[JobRequest("ops.ping")] * 2, owner=owner)

    owner.delete()

    assert list(Job.objects.filter(pk__in=[job.pk for job in jobs]).values_list("owner_id", flat=True)) == [None] * 2


def test_a_user_deleted_outside_django_while_they_own_jobs_is_refused(broker):
    owner = User.objects.create_user("leaving")
    jobs = job_enqueue_many(requests=[JobRequest("ops.ping")] * 2, owner=owner)

    with pytest.raises(IntegrityError, match=r"(?i)foreign key"), connection.cursor() as cursor:
        cursor.execute(DELETE_USER, [owner.pk])

    assert User.objects.filter(pk=owner.pk).exists()
    assert (
        list(Job.objects.filter(pk__in=[job.pk for job in jobs]).values_list("owner_id", flat=True)) == [owner.pk] * 2
    )


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite has one writer at a time")
def test_a_user_deleted_while_their_jobs_commit_leaves_no_job_owned_by_no_one(broker):
    """The delete and the enqueue race: one of them fails, and no job is left owned by no one (nor
    published when its rows did not commit)."""
    owner = User.objects.create_user("racing")
    delete_errors: list[Exception] = []

    def delete_owner() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute(DELETE_USER, [owner.pk])
        except IntegrityError as exc:
            delete_errors.append(exc)
        finally:
            connections.close_all()

    ids: list = []
    enqueue_failed = False
    deleter = threading.Thread(target=delete_owner)
    try:
        with transaction.atomic():
            ids = [job.pk for job in job_enqueue_many(requests=[JobRequest("ops.ping")] * 3, owner=owner)]
            deleter.start()
            deleter.join(timeout=2)  # done, or waiting for this transaction
    except IntegrityError:
        enqueue_failed = True
    deleter.join(timeout=10)

    assert not deleter.is_alive()
    assert enqueue_failed != bool(delete_errors)  # exactly one of the two failed
    owners = set(Job.objects.filter(pk__in=ids).values_list("owner_id", flat=True))
    if enqueue_failed:
        assert not User.objects.filter(pk=owner.pk).exists()
        assert owners == set()
        assert broker.llen("default:5") == 0
    else:
        assert owners == {owner.pk}
