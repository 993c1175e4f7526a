"""Retention at scale: the query that picks each chunk of expired jobs reads them from the old end
of an index, not by walking the jobs retention keeps. Asked of PostgreSQL's planner with sequential
scans and sorts ruled out, as on a large table, over a ledger whose kept jobs outnumber its expired
ones."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tasks.models import Job
from tasks.platform.services import retention
from tasks.platform.services.retention import jobs_prune_finished

pytestmark = pytest.mark.django_db

KEPT = 300
EXPIRED = 6
#: kept jobs created before the cutoff that finished within their retention (a long run, or a wait)
KEPT_OLD = 2


class RolledBack(Exception):
    """Undoes the prune, so that its chunk query can be asked again of the same rows."""


def test_each_chunk_of_expired_jobs_is_read_without_walking_the_jobs_retention_keeps(monkeypatch):
    # At 10M rows, walking the kept jobs newest first to reach the expired ones made each chunk
    # take seconds, and pruning 1M expired jobs most of an hour (the ledger_size bench).
    if connection.vendor != "postgresql":
        pytest.skip("the planner's choice is PostgreSQL's; SQLite keeps the simple path")
    monkeypatch.setattr(retention, "PRUNE_CHUNK", 2)
    now = timezone.now()
    old = now - timedelta(days=400)
    Job.objects.bulk_create(
        [
            Job(task_name="ops.ping", queue="default", state=Job.State.SUCCEEDED, created_at=at, finished_at=at)
            for at in [old + timedelta(seconds=n) for n in range(EXPIRED)] + [now - timedelta(minutes=1)] * KEPT
        ]
    )
    long_runs = Job.objects.order_by("-created_at")[:KEPT_OLD].values_list("pk", flat=True)
    Job.objects.filter(pk__in=list(long_runs)).update(created_at=now - timedelta(days=40))
    with CaptureQueriesContext(connection) as queries, pytest.raises(RolledBack), transaction.atomic():
        deleted = jobs_prune_finished(succeeded_older_than=timedelta(days=30), failed_older_than=timedelta(days=90))
        raise RolledBack
    chunks = [q["sql"] for q in queries if q["sql"].startswith("SELECT") and "LIMIT 2" in q["sql"]]

    removed = [rows_removed_by_filter(sql) for sql in chunks[: EXPIRED // 2]]

    assert len(chunks) >= EXPIRED // 2, chunks
    assert max(removed) <= KEPT_OLD, removed
    assert deleted["succeeded"] == EXPIRED


def rows_removed_by_filter(sql: str) -> int:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("EXPLAIN ANALYZE " + sql)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    return sum(int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan))
