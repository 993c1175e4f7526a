"""The beat scheduler: django-celery-beat's DatabaseScheduler with one leader and ledger dispatch.

Several beats may run (one per host, for availability). Exactly one dispatches: the holder of a
lease in Redis (``SET NX PX``), which it renews on every tick (at least three times per lease);
the others stand by and try to take the lease every second, so a standby takes over within
``BEAT_LEASE_SECONDS`` plus a second of the leader's death. Without Redis, no beat leads: a run
is never dispatched without the lease.

A due run becomes a ledger job (``tasks.platform.services.beat``), keyed by the schedule's name and the
run's due time, in the same transaction that records the schedule's ``last_run_at``; Celery's
``apply_async`` and django-celery-beat's delayed saving of ``last_run_at`` are not used.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
import uuid
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, InterfaceError, close_old_connections
from django_celery_beat.schedulers import DatabaseScheduler, ModelEntry
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.platform.queues import LEASE_KEY, redis_client
from tasks.platform.services.beat import Outcome, schedule_dispatch_due

logger = logging.getLogger(__name__)


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


#: the scheduler's clock; tests of the schedule logic replace it (``tasks.platform.beat.clock = ...``)
clock = utc_now


def beat_now() -> datetime.datetime:
    """Now, as the scheduler sees it (one module-level function: schedules compare their clocks)."""
    return clock()


class LeaderLease:
    """A lease in Redis held by one beat at a time; renewed and released only by its holder."""

    # Compare-and-extend / compare-and-delete, atomically: never touch another beat's lease.
    RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
    RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

    def __init__(self, url: str, seconds: float, *, key: str = LEASE_KEY, holder: str | None = None) -> None:
        self.key = key
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.milliseconds = int(seconds * 1000)
        # Short timeouts and no retries: a Redis that does not answer must not hold a tick longer
        # than a fraction of the lease (the beat then simply does not lead).
        timeout = min(2.0, seconds / 3)
        self.client = redis_client(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        self._renew = self.client.register_script(self.RENEW)
        self._release = self.client.register_script(self.RELEASE)
        self.held = False
        self.error: str | None = None

    def hold(self) -> bool:
        """Renew the lease when held, else try to take it; False when Redis cannot be reached."""
        try:
            if self.held and self._renew(keys=[self.key], args=[self.holder, self.milliseconds]):
                self.held = True
            else:
                self.held = bool(self.client.set(self.key, self.holder, nx=True, px=self.milliseconds))
            self.error = None
        except redis.RedisError as exc:
            self.held, self.error = False, str(exc) or type(exc).__name__
        return self.held

    def holder_now(self) -> str | None:
        try:
            value = self.client.get(self.key)
        except redis.RedisError:
            return None
        return value.decode() if value else None

    def release(self) -> bool:
        """Give the lease up (a standby takes over within a second); False if it was not ours."""
        held, self.held = self.held, False
        if not held:
            return False
        try:
            return bool(self._release(keys=[self.key], args=[self.holder]))
        except redis.RedisError:
            return False  # it expires on its own


class LedgerEntry(ModelEntry):
    """A schedule row as beat holds it, on the scheduler's clock."""

    def __init__(self, model: Any, app: Any = None) -> None:
        super().__init__(model, app=app)
        if self.schedule is not None:
            self.schedule.nowfun = beat_now

    # Private API (django-celery-beat): ModelEntry reads its clock only through _default_now.
    def _default_now(self) -> datetime.datetime:
        return beat_now().astimezone(self.app.timezone)


class LeaderScheduler(DatabaseScheduler):
    """DatabaseScheduler that dispatches only while it holds the leader lease, through the ledger."""

    Entry = LedgerEntry
    # Runs are published by the ledger (job_enqueue): beat needs no producer of its own, and
    # building one would block a tick while the broker is down.
    # Private API (Celery): Scheduler.tick hands apply_async its producer; no setting turns it off.
    producer = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lease_seconds = settings.BEAT_LEASE_SECONDS
        self.lease = LeaderLease(settings.REDIS_URL, self.lease_seconds)
        self.leading = False
        self._standby_logged_for: str | None = ""
        self._needs_reload = False
        self._retry_at = 0.0
        super().__init__(*args, **kwargs)
        #: the leader ticks at least this often, renewing the lease three times per lease
        self.renew_interval = self.lease_seconds / 3
        #: a standby tries to take the lease this often: takeover within lease + this (< 2 x lease)
        self.standby_interval = min(1.0, self.renew_interval)
        # A run later than this was missed (beat was down), and its missed-run policy applies. It
        # exceeds a takeover (2 x lease) plus a tick, so a failover never counts as downtime, and
        # two ticks; at least 30 s.
        self.grace = datetime.timedelta(
            seconds=max(30.0, 2 * self.max_interval, 2 * self.lease_seconds + self.max_interval)
        )

    # --- leadership -------------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if not self._lead():
            return self.standby_interval
        if self._needs_reload and not self._reload():
            return self.renew_interval
        if time.monotonic() < self._retry_at:
            return min(self._retry_at - time.monotonic(), self.renew_interval)
        try:
            interval = super().tick(*args, **kwargs)
        except (DatabaseError, InterfaceError) as exc:
            # Reading the schedules failed: keep the lease, and read them afresh once the database answers.
            logger.warning("beat: cannot read the schedules (%s); trying again", exc)
            close_old_connections()
            self._needs_reload = True
            return self.renew_interval
        return min(interval, self.renew_interval)

    def _lead(self) -> bool:
        """Hold the lease (renew or take it) and log any change of leadership."""
        was_leading, leading = self.leading, self.lease.hold()
        self.leading = leading
        if leading and not was_leading:
            logger.info(
                "beat %s is now the leader (lease %ss in Redis): dispatching schedules",
                self.lease.holder,
                self.lease_seconds,
            )
            self._standby_logged_for = ""
            self._needs_reload = True  # start from what the previous leader committed
        elif was_leading and not leading:
            logger.warning(
                "beat %s lost the leadership (%s): standing by",
                self.lease.holder,
                f"Redis unavailable: {self.lease.error}" if self.lease.error else "its lease expired",
            )
        elif not leading:
            current = self.lease.holder_now() if self.lease.error is None else None
            if current != self._standby_logged_for:
                self._standby_logged_for = current
                if self.lease.error:
                    logger.warning("beat %s stands by: Redis unavailable (%s)", self.lease.holder, self.lease.error)
                else:
                    logger.info("beat %s stands by: %s leads", self.lease.holder, current)
        return leading

    def _reload(self) -> bool:
        """Read every schedule afresh (last_run_at as the previous leader left it)."""
        try:
            close_old_connections()
            # Private API (django-celery-beat, Celery): no method rereads every schedule and resets this state.
            self._dirty.clear()
            self._schedule = self.all_as_schedule()
            self._last_timestamp = self.Changes.last_change()
        except (DatabaseError, InterfaceError) as exc:
            logger.warning("beat: cannot read the schedules (%s); trying again", exc)
            return False
        # Private API (django-celery-beat, Celery): the same state, marked read now and its heap rebuilt next tick.
        self._initial_read = False
        self._last_full_sync = datetime.datetime.now()
        self._heap = None
        self._needs_reload = False
        return True

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.lease.release():
                logger.info("beat %s released the leadership", self.lease.holder)
            self.leading = False

    # --- dispatch ---------------------------------------------------------------------------

    # Private API (django-celery-beat): no hook replaces DatabaseScheduler's in-memory advance of a due entry.
    def reserve(self, entry: LedgerEntry) -> LedgerEntry:
        # The run is recorded when it is dispatched (apply_async), in the job's transaction: no
        # in-memory advance for a later sync() to write over what another beat committed.
        return entry

    # Private API (Celery): no hook replaces how the scheduler sends a due entry.
    def apply_async(self, entry: LedgerEntry, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        if not self._lead():
            logger.warning("schedule %r not dispatched: this beat is no longer the leader", entry.name)
            return None
        try:
            dispatch = schedule_dispatch_due(
                schedule_id=entry.model.pk, now=beat_now(), grace=self.grace, assumed_last_run_at=entry.last_run_at
            )
        except (DatabaseError, InterfaceError) as exc:
            # Kept due: tried again after a pause (a run missed for longer than the grace then
            # follows its missed-run policy).
            logger.warning("schedule %r not dispatched, the database failed (%s); retrying", entry.name, exc)
            close_old_connections()
            self._retry_at = time.monotonic() + self.max_interval
            # Private API (Celery): only _heap = None makes the next tick rebuild the heap of due entries.
            self._heap = None
            return None
        if dispatch.outcome == Outcome.GONE:
            # Private API (django-celery-beat): the schedule property rereads the database; _schedule does not.
            self._schedule.pop(entry.name, None)
        elif dispatch.last_run_at is not None:
            entry.last_run_at = entry.model.last_run_at = dispatch.last_run_at
            entry.total_run_count = entry.model.total_run_count = dispatch.total_run_count
        # The next check of every entry follows from the recorded run, not from Celery's guess.
        # Private API (Celery): only _heap = None makes the next tick rebuild the heap of due entries.
        self._heap = None
        return dispatch.job

    # Private API (django-celery-beat): only result_expires leaves out backend_cleanup, and it reads the schedule.
    def install_default_entries(self, data: Any) -> None:
        # No celery.backend_cleanup schedule: there is no result backend (the ledger keeps results
        # and prunes them on its own schedule).
        return None
