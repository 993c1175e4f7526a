"""Job search on a large ledger (issue #24): a payload-value search and an error-text search, as
GET /api/jobs runs them, on ``search_rows`` jobs (a million in a full run).

The ledger is filled in one statement: INSERT ... SELECT over generate_series on PostgreSQL (a
recursive CTE on SQLite), every row a failed ops.fail job with its own ``order_id`` in its payload
and its own error text (a gateway error naming an md5 of its number), then VACUUM ANALYZE. Each sample
reads what the API's job list reads for a staff user who sees every job: the first page of
tasks.platform.selectors.search (newest first, 50 rows) and its count, for a value that matches one
job, a different one each sample. Reported: the median of ``search_samples`` samples of each, and
whether the PostgreSQL plan used the search's GIN index (its EXPLAIN names it).
"""

from __future__ import annotations

import hashlib
import statistics
import time

from django.db import connection

from bench.context import Bench
from bench.figures import Results, at_most

#: the API's default page
PAGE = 50
#: issue #24's goal for a payload-value search on a million-row ledger
GOAL_MS = 200
#: on PostgreSQL the error text of row n ends with md5(n); this many of its characters match it alone
ERROR_NEEDLE = 12

POSTGRES_FILL = """
INSERT INTO tasks_job (id, task_name, queue, priority, payload, state, attempts, attempts_before_retry, held_reason,
    flow_key, share_key, progress, progress_message, error, traceback, worker, origin, waiting_for, created_at,
    finished_at)
SELECT gen_random_uuid(), 'ops.fail', 'default', 5,
    jsonb_build_object('mode', 'transient', 'order_id', n, 'customer', 'c' || (n %% 5000)),
    'failed', 1, 0, '', '', '', 0, '', 'TransientOpsError: gateway answered 502 for ' || md5(n::text), '', 'bench', '',
    0, now() - n * interval '1 second', now() - n * interval '1 second'
FROM generate_series(1, %s) AS n
"""
SQLITE_FILL = """
WITH RECURSIVE numbers(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM numbers WHERE n < %s)
INSERT INTO tasks_job (id, task_name, queue, priority, payload, state, attempts, attempts_before_retry, held_reason,
    flow_key, share_key, progress, progress_message, error, traceback, worker, origin, waiting_for, created_at,
    finished_at)
SELECT lower(hex(randomblob(16))), 'ops.fail', 'default', 5,
    json_object('mode', 'transient', 'order_id', n, 'customer', 'c' || (n %% 5000)),
    'failed', 1, 0, '', '', '', 0, '', 'TransientOpsError: gateway answered 502 for ' || md5_of_n, '', 'bench', '',
    0, datetime('now', '-' || n || ' seconds'), datetime('now', '-' || n || ' seconds')
FROM (SELECT n, printf('%%032d', n) AS md5_of_n FROM numbers)
"""


def error_of(n: int) -> str:
    """Text of row n's error that no other row's holds (as the fill writes it on each database)."""
    if connection.vendor == "postgresql":
        return hashlib.md5(str(n).encode()).hexdigest()[-ERROR_NEEDLE:]  # noqa: S324 - what the fill wrote
    return f"{n:032d}"  # the whole number: a part of it would be inside a longer one's


def fill(rows: int) -> float:
    """The ledger with ``rows`` failed jobs; seconds it took (with ANALYZE)."""
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(POSTGRES_FILL if connection.vendor == "postgresql" else SQLITE_FILL, [rows])
        # What autovacuum would do after such a load: the GIN indexes' pending lists merged (their
        # fast update) and statistics taken; a search otherwise also reads the pending entries.
        cursor.execute("VACUUM ANALYZE tasks_job" if connection.vendor == "postgresql" else "ANALYZE")
    return time.monotonic() - started


def searcher():
    """A staff user who sees every job (the view permission), as an operator's search in the API."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user, _ = get_user_model().objects.get_or_create(username="bench-search", defaults={"is_staff": True})
    user.user_permissions.add(Permission.objects.get(content_type__app_label="tasks", codename="view_job"))
    return get_user_model().objects.get(pk=user.pk)  # a fresh permission cache


def api_read(user, search) -> tuple[float, int]:
    """What GET /api/jobs reads for one search (tasks.platform.api.pagination): the first page and
    the count; milliseconds, and the rows of the page."""
    from tasks.platform.selectors.search import jobs_search_visible

    started = time.perf_counter()
    jobs = jobs_search_visible(user=user, search=search)
    page = list(jobs[:PAGE])
    jobs.count()
    return (time.perf_counter() - started) * 1000, len(page)


def uses_index(user, search, index: str) -> bool:
    from tasks.platform.selectors.search import jobs_search_visible

    if connection.vendor != "postgresql":
        return False
    return index in jobs_search_visible(user=user, search=search)[:PAGE].explain()


def run(bench: Bench, results: Results) -> None:
    from tasks.platform.selectors.search import JobSearch

    rows, samples = bench.sizes.search_rows, bench.sizes.search_samples
    bench.reset()
    fill_seconds = fill(rows)
    user = searcher()
    # Different rows each sample, spread over the ledger, none the same as the warm-up's.
    targets = [1 + (rows - 1) * (i + 1) // (samples + 1) for i in range(samples)]
    measured = {"payload": [], "error": []}
    for key, make in (
        ("payload", lambda n: JobSearch(payload={"order_id": n})),
        ("error", lambda n: JobSearch(error=error_of(n))),
    ):
        api_read(user, make(rows // 2 + 1))  # warm-up: the connection, the index's upper pages
        for n in targets:
            ms, found = api_read(user, make(n))
            if found != 1:
                raise RuntimeError(f"search: the {key} search for row {n} found {found} jobs, not 1")
            measured[key].append(ms)
    payload_index = uses_index(user, JobSearch(payload={"order_id": targets[0]}), "job_payload_contains")
    error_index = uses_index(user, JobSearch(error=error_of(targets[0])), "job_error_trigram")
    details = {"rows": rows, "fill_seconds": round(fill_seconds, 1), "samples": samples}
    results.figure(
        "search.payload_p50",
        f"Search by a payload value, first page and count ({rows:,} jobs)",
        "ms",
        goal=at_most(GOAL_MS, "ms"),
        baseline=None,
    ).record(statistics.median(measured["payload"]), index_used=payload_index, runs_ms=measured["payload"], **details)
    results.figure(
        "search.error_p50",
        f"Search by error text, first page and count ({rows:,} jobs)",
        "ms",
        baseline=None,
    ).record(statistics.median(measured["error"]), index_used=error_index, runs_ms=measured["error"], **details)
    bench.reset()
