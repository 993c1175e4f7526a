"""Releasing publish leases: at once for a call's many jobs, in the background for single ones.

``job_enqueue`` and ``job_enqueue_many`` write their rows already ``queued``, with a PublishLease
on them, and publish after commit (a single job outside a transaction: while it commits; many
outside a transaction take no lease, being published before their COMMIT). What is
left once the messages are out, deleting the lease, only tells the relay not to publish the jobs
again. A lease of many jobs is one row for all of them, deleted at once. A request that enqueued
one job should not wait a second round trip and a second commit for it: its process hands the
lease to a background thread, which deletes every lease handed to it in the last
``RELEASE_INTERVAL`` in one statement.

A process that dies with leases unreleased (its marks at most ``RELEASE_INTERVAL`` old; a clean
exit releases them) leaves those jobs to the relay: one still waiting in its queue when the lease
expires is published again (at least once, as any publish; tasks are idempotent).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Sequence

from django.db import DatabaseError, connection

from tasks.models import PublishLease

logger = logging.getLogger(__name__)

#: longest a released lease waits before it is written
RELEASE_INTERVAL = 0.05
#: the thread stops (and closes its database connection) after this long with nothing to release
IDLE_SECONDS = 10.0


class LeaseReleases:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: list = []
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        #: DELETEs run so far, for the statements-per-job figures (this thread's connection is not
        #: the one a caller's execute wrapper sees)
        self.statements = 0

    def add(self, ids: list) -> None:
        with self._lock:
            self._ids += ids
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lease-releases", daemon=True)
                self._thread.start()

    def flush(self) -> int:
        """Release every lease handed over so far, in this thread; returns how many were released."""
        with self._lock:
            ids, self._ids = self._ids, []
        if not ids:
            return 0
        self.statements += 1
        if not lease_release_logged(ids):
            connection.close()  # maybe broken (a database restart): the next flush opens a new one
        return len(ids)

    def stop(self) -> None:
        """End the thread (its connection closed) and release what is left, in this thread."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            self._stopping.set()
            thread.join()
            self._stopping.clear()
        self.flush()

    def _run(self) -> None:
        idle = 0.0
        try:
            while not self._stopping.wait(RELEASE_INTERVAL):
                idle = 0.0 if self.flush() else idle + RELEASE_INTERVAL
                if idle >= IDLE_SECONDS:
                    with self._lock:
                        if not self._ids:
                            self._thread = None
                            return
        finally:
            with self._lock:  # stopped by an error: the next add starts a new thread
                if self._thread is threading.current_thread():
                    self._thread = None
            connection.close()  # this thread's own connection

    def reset_after_fork(self) -> None:
        """A forked child inherits the ids but not the thread (the parent releases them)."""
        self._lock, self._stopping = threading.Lock(), threading.Event()
        self._ids, self._thread = [], None


def lease_release(ids: Sequence[int]) -> None:
    """Delete these leases now, in the caller's transaction if any: one statement, where
    ``QuerySet.delete`` wraps its own in a transaction (two round trips more, half a batch
    request's release) to collect related rows that a lease has none of."""
    if connection.vendor != "postgresql":
        PublishLease.objects.filter(pk__in=ids).delete()
        return
    table = connection.ops.quote_name(PublishLease._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table} WHERE id = ANY(%s)", [list(ids)])  # noqa: S608 - the model's table


def lease_release_logged(ids: Sequence[int]) -> bool:
    """Delete these leases now; a database error is logged, not raised (the messages are out: the
    relay publishing the jobs again when the leases expire is the worst that can follow)."""
    try:
        lease_release(ids)
    except DatabaseError as exc:
        logger.warning("%d publish lease(s) not released (%s); the relay may publish them again", len(ids), exc)
        return False
    return True


lease_releases = LeaseReleases()
atexit.register(lease_releases.flush)
os.register_at_fork(after_in_child=lease_releases.reset_after_fork)
