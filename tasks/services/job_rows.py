"""Writing job rows: new ones without the ORM's per-field work on PostgreSQL (COPY for many, one
INSERT for one, with its publish lease in the same statement), and updates of many in id order.

An ``enqueue_many`` of short jobs spent half its time in ``bulk_create``, most of that preparing
each of a row's fields in Python (``get_db_prep_save`` and its adapters, per field and per row).
COPY takes each row as a tuple that psycopg adapts in C, and is the cheapest way PostgreSQL has to
add rows. It has no ON CONFLICT, so rows that may conflict (an idempotency key) take
``bulk_create(ignore_conflicts=True)`` instead, in tasks.services.jobs.

The values are the model instances' own: the model's fields need no conversion for COPY but JSON
encoding (UUIDs, aware datetimes, text and numbers adapt as they are). test_job_rows checks that a
row written so reads back equal to one the ORM wrote, which catches a field that would need more.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from functools import cache, partial
from operator import attrgetter
from typing import Any, TypeVar

from django.db import DatabaseError, connection, transaction
from django.db.models import JSONField, Q
from django.utils import timezone
from psycopg import errors, generators, pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.copy import LibpqWriter

from tasks.models import Job, PublishLease

T = TypeVar("T")

#: set on the message of a job published while its row was still being written: a worker that
#: finds no row waits for it (tasks.services.ledger) instead of writing one from the message
ROW_IN_FLIGHT_HEADER = "job_row_in_flight"


def job_rows_insert(jobs: Iterable[Job]) -> list[Job]:
    """Insert new jobs (no idempotency key among them) in the caller's transaction, each as the
    iterable yields it; returns them."""
    if connection.vendor != "postgresql":
        jobs = list(jobs)
        Job.objects.bulk_create(jobs)
        return jobs
    written: list[Job] = []
    with connection.cursor() as cursor:
        _execute(partial(_copy, jobs, written, None), _copy_statement(), None, cursor)
    _mark_saved(written)
    return written


def _mark_saved(jobs: list[Job]) -> None:
    """What ``save`` sets on an instance it inserted."""
    alias = connection.alias  # read once: each read of the proxy looks the connection up
    for job in jobs:
        job._state.adding, job._state.db = False, alias


def job_row_insert(job: Job, *, leased: bool) -> int | None:
    """Insert one new job in the caller's transaction: an INSERT of the values COPY would write
    (``save`` compiles the statement and prepares each field anew, a third of a single enqueue's
    time in Python). IntegrityError as ``save``'s on a conflict.

    ``leased``: with a PublishLease on it from its ``created_at`` (now), in the same statement on
    PostgreSQL; returns the lease's id."""
    if connection.vendor != "postgresql":
        job.save(force_insert=True)
        return publish_lease_insert([job]) if leased else None
    with connection.cursor() as cursor:
        if leased:
            cursor.execute(_insert_leased_statement(), [*_row(job), job.created_at])
            lease = cursor.fetchone()[0]
        else:
            cursor.execute(_insert_statement(), _row(job))
            lease = None
    _mark_saved([job])
    return lease


def job_row_insert_overlaps() -> bool:
    """Whether job_row_insert_while applies: PostgreSQL, and no transaction open (the statement
    commits on its own)."""
    return connection.vendor == "postgresql" and connection.get_autocommit() and not connection.in_atomic_block


def job_row_insert_while(job: Job, send: Callable[[], T]) -> tuple[int, T]:
    """Insert one new job with its PublishLease and commit, with ``send`` (its publish) running
    while PostgreSQL does: the statement is sent first, ``send`` runs, then its outcome is read.
    Returns the lease's id and what ``send`` returned; a failed insert raises as ``save`` would,
    after ``send`` ran (the message then carries ROW_IN_FLIGHT_HEADER for the worker to settle).

    The INSERT and its commit take about as long as the publish: one after the other, a single
    enqueue took 2.8 times a bare ``.delay()``; overlapped, 2 times. Only where
    job_row_insert_overlaps()."""
    with connection.cursor() as cursor:
        params = [*_row(job), job.created_at]
        lease, sent = _execute(partial(_insert_while, send), _insert_leased_statement(), params, cursor)
    _mark_saved([job])
    return lease, sent


def job_rows_insert_while(
    jobs: Iterable[Job], publish: Callable[[list[Job]], Exception | None]
) -> tuple[list[Job], list[Job], Exception | None]:
    """Insert new jobs (no idempotency key among them) in a transaction of their own, with
    ``publish(queued jobs)`` running while PostgreSQL takes in the last rows (it works a few
    milliseconds behind the rows sent), then COMMIT. Returns the jobs, the queued ones and the
    publish's failure (None when it succeeded).

    The publish's outcome is known before the COMMIT, so no lease is needed: a committed queued
    row was published. When the publish failed the queued rows are written pending in the same
    transaction, for the relay. A failed insert raises after ``publish`` ran (the messages
    then carry ROW_IN_FLIGHT_HEADER for the worker to settle). Only where
    job_row_insert_overlaps()."""
    written: list[Job] = []
    queued: list[Job] = []

    def publish_written() -> Exception | None:
        state = Job.State.QUEUED  # looked up once: an enum member costs a lookup each time
        queued.extend(job for job in written if job.state == state)
        return publish(queued) if queued else None

    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        try:
            failure = _execute(partial(_copy, jobs, written, publish_written), _copy_statement(), None, cursor)
            if failure is not None:
                ids = [job.pk for job in queued]
                cursor.execute(_unpublished_statement(), [Job.State.PENDING.value, Job.State.QUEUED.value, ids])
            cursor.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(DatabaseError):  # none left after a failed COMMIT (a warning)
                cursor.execute("ROLLBACK")
            raise
    _mark_saved(written)
    return written, queued, failure


def _execute(execute: Callable[..., T], sql: str, params: Any, cursor) -> T:
    """Run ``execute`` as Django runs a statement: through the connection's execute wrappers (the
    statement counter sees it), its errors Django's."""
    for wrapper in reversed(connection.execute_wrappers):
        execute = partial(wrapper, execute)
    with connection.wrap_database_errors:
        return execute(sql, params, False, {"connection": connection, "cursor": cursor})


def _insert_while(send: Callable[[], T], sql: str, params: list, many: bool, context: dict) -> tuple[int, T]:
    # Parameters sent apart from the statement (the extended protocol), as psycopg adapts them: a
    # tenth of a single enqueue's time less than writing them into its text (mogrify).
    adapt = Transformer(context["cursor"].cursor)
    values = adapt.dump_sequence(params, [PyFormat.AUTO] * len(params))
    command = _numbered(sql)
    results, sent = _while_postgres_runs(
        lambda pgconn: pgconn.send_query_params(command, values, adapt.types, adapt.formats), send
    )
    return int(results[0].get_value(0, 0)), sent


def _while_postgres_runs(start: Callable[[pq.PGconn], None], send: Callable[[], T]) -> tuple[list, T]:
    """Send statements with ``start``, run ``send`` while PostgreSQL executes them, then read their
    results (psycopg's own steps for an execute, split); an error raised as psycopg's."""
    raw = connection.connection
    with raw.lock:
        start(raw.pgconn)
        raw.wait(generators.send(raw.pgconn))
        try:
            sent = send()
        finally:
            results = raw.wait(generators.fetch_many(raw.pgconn))
    for result in results:
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise errors.error_from_result(result, encoding=raw.info.encoding)
    return results, sent


@cache
def _numbered(sql: str) -> bytes:
    """A statement of ours with its ``%s`` placeholders numbered as PostgreSQL's ($1, $2, ...)."""
    numbers = iter(range(1, sql.count("%s") + 1))
    return re.sub("%s", lambda _: f"${next(numbers)}", sql).encode()


def publish_lease_insert(jobs: Sequence[Job]) -> int:
    """A PublishLease on these jobs from now, in the caller's transaction; returns its id."""
    return PublishLease.objects.create(since=timezone.now(), jobs=PublishLease.packed(job.pk for job in jobs)).pk


def job_rows_update(ids: Sequence, where: Q, **values: Any) -> int:
    """UPDATE the jobs of ``ids`` that match ``where``; returns how many. Several rows are locked
    in id order first, as every writer of many job rows here locks them (a worker claiming a
    batch, a publisher marking one), so two such writers never deadlock. Still one statement: the
    locking subquery is the UPDATE's."""
    matching = Job.objects.filter(where, pk__in=ids)
    if len(ids) == 1:
        return matching.update(**values)
    with transaction.atomic():
        return Job.objects.filter(pk__in=matching.order_by("pk").select_for_update().values("pk")).update(**values)


def _copy(
    jobs: Iterable[Job],
    written: list[Job],
    during_end: Callable[[], T] | None,
    sql: str,
    params: Any,
    many: bool,
    context: dict,
) -> T | None:
    """COPY the jobs' rows; ``during_end`` runs once the last row is sent, while PostgreSQL takes
    it in, and its value is returned."""
    cursor = context["cursor"].cursor
    writer = None if during_end is None else _WriterRunningAtEnd(cursor, during_end)
    with cursor.copy(sql, writer=writer) as copy:
        for job in jobs:
            copy.write_row(_row(job))
            written.append(job)
    return None if writer is None else writer.returned


class _WriterRunningAtEnd(LibpqWriter):
    """psycopg's COPY writer, whose end runs ``during_end`` between sending the end of the data
    and reading the outcome (psycopg's own steps, split)."""

    def __init__(self, cursor, during_end: Callable[[], Any]) -> None:
        super().__init__(cursor)
        self.during_end = during_end
        self.returned = None

    def finish(self, exc: BaseException | None = None) -> None:
        if exc is not None:  # the rows' iterable raised: psycopg aborts the COPY
            super().finish(exc)
            return
        pgconn = self.connection.pgconn
        while not pgconn.put_copy_end(None):
            self.connection.wait(generators.send(pgconn))
        self.connection.wait(generators.send(pgconn))
        try:
            self.returned = self.during_end()
        finally:
            (result,) = self.connection.wait(generators.fetch_many(pgconn))
        if result.status != pq.ExecStatus.COMMAND_OK:
            raise errors.error_from_result(result, encoding=self.connection.info.encoding)
        self.cursor._results = [result]


def _row(job: Job) -> list:
    row = list(_row_values()(job))
    row[_id_column()] = job.id_text  # formatted once for the row, the message and the answer
    # A job enqueue built carries its payload's JSON text, made as it was validated.
    payload_json = getattr(job, "payload_json", None)
    for index, attname, encode in _json_columns():
        row[index] = payload_json if attname == "payload" and payload_json is not None else encode(row[index])
    return row


@cache
def _row_values() -> attrgetter:
    """A job's values in the statement's column order, as its instance holds them."""
    return attrgetter(*(field.attname for field in _fields()))


@cache
def _id_column() -> int:
    return next(index for index, field in enumerate(_fields()) if field.primary_key)


@cache
def _json_columns() -> list[tuple[int, str, Any]]:
    """The JSON columns' positions and names, each with its field's encoder (UUIDs, aware
    datetimes, text and numbers adapt as they are)."""
    return [
        (index, field.attname, _json_encoder(field))
        for index, field in enumerate(_fields())
        if isinstance(field, JSONField)
    ]


def _json_encoder(field: JSONField):
    encoder = (field.encoder or json.JSONEncoder)()  # one instance: json.dumps(cls=...) makes one a call

    def encode(value: Any) -> str | None:
        return None if value is None else encoder.encode(value)

    return encode


@cache
def _copy_statement() -> str:
    return f"COPY {_table()} ({_column_list()}) FROM STDIN"


@cache
def _insert_statement() -> str:
    values = ", ".join("%s::jsonb" if isinstance(field, JSONField) else "%s" for field in _fields())
    return f"INSERT INTO {_table()} ({_column_list()}) VALUES ({values})"  # noqa: S608 - names from the model


@cache
def _unpublished_statement() -> str:
    return f"UPDATE {_table()} SET state = %s, queued_at = NULL WHERE state = %s AND id = ANY(%s)"  # noqa: S608


@cache
def _insert_leased_statement() -> str:
    leases = connection.ops.quote_name(PublishLease._meta.db_table)
    return (
        f"WITH job AS ({_insert_statement()} RETURNING id) "  # noqa: S608 - names from the models
        f"INSERT INTO {leases} (since, jobs) SELECT %s, uuid_send(id) FROM job RETURNING id"
    )


def _table() -> str:
    return connection.ops.quote_name(Job._meta.db_table)


def _column_list() -> str:
    return ", ".join(connection.ops.quote_name(field.column) for field in _fields())


def _fields() -> list:
    return list(Job._meta.concrete_fields)
