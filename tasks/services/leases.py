"""Publish leases released in the background, many to a statement.

``job_enqueue`` and ``job_enqueue_many`` write their rows already ``queued``, holding the publish
lease (``publishing_since``), and publish after commit. What is left once the message is out,
releasing the lease, only tells the relay not to publish the job again; a request should not wait
a second round trip and a second commit for it. So the publishing process hands the ids to a
background thread, which releases every lease handed to it in the last ``RELEASE_INTERVAL`` in
one UPDATE.

A process that dies with leases unreleased (its marks at most ``RELEASE_INTERVAL`` old; a clean
exit releases them) leaves those jobs to the relay: one still waiting in its queue when the lease
expires is published again (at least once, as any publish; tasks are idempotent).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading

from django.db import DatabaseError, connection
from django.db.models import Q

from tasks.services.job_rows import job_rows_update

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
        #: UPDATEs run so far, for the statements-per-job figures (this thread's connection is not
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
        try:
            self.statements += 1
            job_rows_update(ids, Q(publishing_since__isnull=False), publishing_since=None)
        except DatabaseError as exc:
            logger.warning("%d publish lease(s) not released (%s); the relay may publish them again", len(ids), exc)
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


lease_releases = LeaseReleases()
atexit.register(lease_releases.flush)
os.register_at_fork(after_in_child=lease_releases.reset_after_fork)
