"""What the live-progress streams (SSE, tasks.platform.live) of one web process share, so that their cost is
fixed, not one of each per stream:

- ``StreamHub``: one Redis pub/sub connection for all the streams of the process (of its event
  loop). It subscribes to a job's channel when the first stream of that job joins and
  unsubscribes when the last one leaves, and hands each message to every stream of the job
  (an asyncio queue each). A stream that joins learns when Redis has confirmed the subscription,
  so it can read the ledger only after (nothing published meanwhile is missed). Redis down: the
  hub reconnects by itself, and the streams follow the ledger meanwhile.
- Ledger reads on one thread with its own persistent database connection (``LedgerReads``):
  every ``QUIET_SECONDS`` one query reads the jobs of all open streams, and the reads streams
  ask for themselves (their first, a finished job's row) are batched into one query too. A
  stream holds no database connection.
- Caps (``stream_slot_take``): streams per user, across every web process (a sorted set per
  user in Redis, taken in one Lua script; this process's own count when Redis is down), and
  streams per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import math
import os
import threading
import uuid
import weakref
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any
from uuid import UUID

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from redis.exceptions import RedisError

from tasks.platform.engine.events import job_channel
from tasks.platform.models import Job
from tasks.platform.queues import async_redis_pool, redis_client

logger = logging.getLogger(__name__)

#: every stream's job is read again this often (one query for all), so a lost message, or Redis
#: down, only delays an update
QUIET_SECONDS = 2.0
#: how long to wait for Redis to connect and to confirm a subscription
REDIS_TIMEOUT_SECONDS = 5.0
#: the longest wait between two attempts to connect the shared subscription again
REDIS_RETRY_SECONDS = 10.0
#: the shared connection is pinged this often; a ping not answered by the next one means it is dead
PING_SECONDS = 30.0
#: messages waiting for one slow stream beyond this are dropped (the next ledger read catches up)
QUEUE_SIZE = 1000
#: job ids per query (well under SQLite's limit on bound parameters)
READ_CHUNK = 500
#: the fields a stream shows (tasks.platform.live._job_view)
JOB_FIELDS = ("id", "task_name", "state", "progress", "progress_message", "worker", "result", "error")
#: the Redis client name of the shared subscription, so ops can tell it in CLIENT LIST
CLIENT_NAME = "platform:live-events"


# --- ledger reads ----------------------------------------------------------------------------

#: one thread for the whole process, its database connection kept as a request thread's is
_ledger_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="live-ledger")


def _jobs_read(job_ids: list[UUID]) -> dict[UUID, Job]:
    close_old_connections()  # as at a request's start: a broken or expired connection is replaced
    rows: dict[UUID, Job] = {}
    for start in range(0, len(job_ids), READ_CHUNK):
        chunk = job_ids[start : start + READ_CHUNK]
        rows.update((job.pk, job) for job in Job.objects.filter(pk__in=chunk).only(*JOB_FIELDS))
    return rows


class LedgerReads:
    """Reads of the ledger asked for by the streams of one event loop, batched: the reads asked
    for while a query runs go out together in the next one, on the ledger thread."""

    def __init__(self) -> None:
        self._wanted: dict[UUID, list[asyncio.Future]] = {}
        self._running = False

    async def read(self, job_id: UUID) -> Job | None:
        """The job's row, or None when it is gone; raises DatabaseError."""
        future = asyncio.get_running_loop().create_future()
        self._wanted.setdefault(job_id, []).append(future)
        if not self._running:
            self._running = True
            _spawn(self._drain())
        return await future

    async def read_many(self, job_ids: set[UUID]) -> dict[UUID, Job]:
        return await asyncio.get_running_loop().run_in_executor(_ledger_thread, _jobs_read, list(job_ids))

    async def _drain(self) -> None:
        try:
            while self._wanted:
                batch, self._wanted = self._wanted, {}
                try:
                    rows = await self.read_many(set(batch))
                except Exception as exc:  # noqa: BLE001 - handed to the streams that asked
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for job_id, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(rows.get(job_id))
        finally:
            self._running = False


# --- the shared subscription -----------------------------------------------------------------


class Listener:
    """One stream's place in the hub. Its queue gets ``("event", dict)`` for each message
    published for the job and ``("row", Job | None)`` from the periodic ledger read."""

    def __init__(self, job_id: UUID) -> None:
        self.job_id = job_id
        self.channel = job_channel(job_id)
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        #: messages handed over so far: a periodic read that overlapped one may be older than it
        self.messages = 0

    def deliver(self, item: tuple[str, Any]) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a stream that far behind catches up from the next read
            self.queue.put_nowait(item)


class _Channel:
    def __init__(self) -> None:
        self.listeners: set[Listener] = set()
        #: the last command sent for the channel on this connection was SUBSCRIBE
        self.sent = False
        #: resolved (True) when the latest SUBSCRIBE wanted for the channel is confirmed; None while unwanted
        self.ready: asyncio.Future[bool] | None = None
        #: one future a SUBSCRIBE sent, in order: Redis confirms them in that order
        self.unconfirmed: deque[asyncio.Future[bool]] = deque()


class StreamHub:
    """One Redis pub/sub connection and one periodic ledger read for all the streams of an event loop."""

    def __init__(self) -> None:
        self.ledger = LedgerReads()
        self._channels: dict[str, _Channel] = {}
        self._listeners: set[Listener] = set()
        self._started = False
        self._up = False
        self._connecting = False
        #: the last attempt to connect failed: a new stream does not wait for the next one
        self._retrying = False
        self._dirty = asyncio.Event()
        self._last_read = 0.0
        self._warned = False

    async def join(self, listener: Listener) -> bool:
        """Register the stream; True once Redis confirmed its job's subscription, False when Redis
        is down or slow (the stream then follows the ledger; the hub subscribes it when it can)."""
        self._start()
        self._listeners.add(listener)
        channel = self._channels.setdefault(listener.channel, _Channel())
        channel.listeners.add(listener)
        if channel.ready is None:
            channel.ready = asyncio.get_running_loop().create_future()
            self._dirty.set()
        elif channel.ready.done():
            return channel.ready.result()
        if not self._up and (self._retrying or not self._connecting):
            return False
        try:
            return await asyncio.wait_for(asyncio.shield(channel.ready), REDIS_TIMEOUT_SECONDS)
        except TimeoutError:
            return False

    def leave(self, listener: Listener) -> None:
        self._listeners.discard(listener)
        channel = self._channels.get(listener.channel)
        if channel is not None:
            channel.listeners.discard(listener)
            if not channel.listeners:
                self._dirty.set()  # unsubscribed by the writer

    async def read(self, job_id: UUID) -> Job | None:
        return await self.ledger.read(job_id)

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._connecting = True
            _spawn(self._run_subscription())
            _spawn(self._run_reads())

    # --- the periodic read ---------------------------------------------------------------------

    async def _run_reads(self) -> None:
        while True:
            await asyncio.sleep(QUIET_SECONDS)
            listeners = list(self._listeners)
            if not listeners:
                continue
            seen = {listener: listener.messages for listener in listeners}
            try:
                rows = await self.ledger.read_many({listener.job_id for listener in listeners})
            except DatabaseError as exc:
                logger.warning("live streams: ledger not read (%s); trying again in %ss", exc, QUIET_SECONDS)
                continue
            except Exception:  # a bug here must not stop the reads for the process's lifetime
                logger.exception("live streams: the periodic ledger read failed")
                continue
            for listener in listeners:
                # A message handed over meanwhile may be newer than the row: the next read will do.
                if listener in self._listeners and listener.messages == seen[listener]:
                    listener.deliver(("row", rows.get(listener.job_id)))

    # --- Redis ---------------------------------------------------------------------------------

    async def _run_subscription(self) -> None:
        delay = 0.5
        while True:
            connection = None
            self._connecting = True
            try:
                pool = async_redis_pool(
                    socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
                    socket_timeout=REDIS_TIMEOUT_SECONDS,  # writes; the reads wait for messages without one
                    socket_keepalive=True,
                    client_name=f"{CLIENT_NAME}:{os.getpid()}",
                    protocol=2,  # RESP2: messages are replies read_response returns (RESP3 pushes them to a handler)
                )
                connection = pool.make_connection()
                await asyncio.wait_for(connection.connect(), REDIS_TIMEOUT_SECONDS)
                self._up, self._connecting, self._retrying = True, False, False
                if self._warned:
                    logger.info("live streams: Redis answers again; events are live")
                self._warned = False
                delay = 0.5
                for channel in self._channels.values():
                    channel.sent = False  # a new connection: nothing subscribed yet
                self._dirty.set()
                await self._serve(connection)
            except (RedisError, OSError) as exc:  # TimeoutError is an OSError
                level = logging.DEBUG if self._warned else logging.WARNING
                self._warned = self._retrying = True
                logger.log(level, "live streams: no Redis subscription (%s); following the ledger", exc)
            except Exception:  # a bug here must not end live events for the process's lifetime
                logger.exception("live streams: the shared subscription failed; starting it again")
            finally:
                self._up = self._connecting = False
                self._connection_lost()
                if connection is not None:
                    await connection.disconnect(nowait=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REDIS_RETRY_SECONDS)

    async def _serve(self, connection: aioredis.Connection) -> None:
        """Read and write on the connection until either fails."""
        self._last_read = asyncio.get_running_loop().time()
        tasks = {
            asyncio.ensure_future(self._read_loop(connection)),
            asyncio.ensure_future(self._write_loop(connection)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()
        raise ConnectionError("the subscription ended")

    async def _write_loop(self, connection: aioredis.Connection) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + PING_SECONDS
        ping_sent: float | None = None
        while True:
            wait = next_ping - loop.time()
            if wait > 0 and not self._dirty.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), wait)
            if loop.time() >= next_ping:
                if ping_sent is not None and self._last_read < ping_sent:
                    raise ConnectionError(f"no answer from Redis in {PING_SECONDS}s")
                ping_sent = loop.time()
                next_ping = ping_sent + PING_SECONDS
                await connection.send_command("PING")
            if self._dirty.is_set():
                self._dirty.clear()
                await self._reconcile(connection)

    async def _reconcile(self, connection: aioredis.Connection) -> None:
        """Subscribe the channels that have streams, unsubscribe those that have none left."""
        subscribe, unsubscribe = [], []
        for name, channel in list(self._channels.items()):
            if channel.listeners and not channel.sent:
                if channel.ready is None or channel.ready.done():
                    channel.ready = asyncio.get_running_loop().create_future()
                channel.sent = True
                channel.unconfirmed.append(channel.ready)
                subscribe.append(name)
            elif not channel.listeners and channel.sent:
                channel.sent = False
                channel.ready = None
                unsubscribe.append(name)
            elif not channel.listeners and not channel.unconfirmed:
                del self._channels[name]
        if subscribe:
            await connection.send_command("SUBSCRIBE", *subscribe)
        if unsubscribe:
            await connection.send_command("UNSUBSCRIBE", *unsubscribe)

    async def _read_loop(self, connection: aioredis.Connection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            response = await connection.read_response(timeout=math.inf)  # math.inf: block, whatever socket_timeout
            self._last_read = loop.time()
            if not isinstance(response, list) or len(response) < 3:
                continue  # a PONG
            kind, name = response[0], response[1].decode()
            channel = self._channels.get(name)
            if channel is None:
                continue
            if kind == b"message":
                self._dispatch(channel, name, response[2])
            elif kind == b"subscribe" and channel.unconfirmed:
                confirmed = channel.unconfirmed.popleft()
                if not confirmed.done():
                    confirmed.set_result(True)
            elif kind == b"unsubscribe" and not channel.listeners and not channel.sent and not channel.unconfirmed:
                del self._channels[name]

    def _dispatch(self, channel: _Channel, name: str, data: bytes) -> None:
        try:
            event = json.loads(data)
        except ValueError:
            logger.warning("live streams: ignored a malformed event on %s: %r", name, data[:200])
            return
        if not isinstance(event, dict):
            return
        for listener in channel.listeners:
            listener.messages += 1
            listener.deliver(("event", event))

    def _connection_lost(self) -> None:
        """Nothing is subscribed any more: waiting streams go on without, and every channel that
        has streams is subscribed again on the next connection."""
        for name, channel in list(self._channels.items()):
            channel.sent = False
            for future in (*channel.unconfirmed, channel.ready):
                if future is not None and not future.done():
                    future.set_result(False)
            channel.unconfirmed.clear()
            if channel.listeners:
                channel.ready = asyncio.get_running_loop().create_future()  # for the next connection
            else:
                del self._channels[name]


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StreamHub] = weakref.WeakKeyDictionary()


def stream_hub() -> StreamHub:
    """The hub of the running event loop (a web process has one loop, hence one hub)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        hub = _hubs[loop] = StreamHub()
    return hub


_background: set[asyncio.Task] = set()


def _spawn(coroutine) -> asyncio.Task:
    # A context of its own: the hub outlives the request that started it (and its thread-sensitive context).
    task = asyncio.get_running_loop().create_task(coroutine, context=contextvars.Context())
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


# --- caps ------------------------------------------------------------------------------------

#: a user's open streams: a sorted set of stream ids, scored by when each slot expires
USER_KEY = "platform:live:streams:{user_id}"
#: a slot outlives its stream's lifetime by this much before Redis drops it (a process that died)
SLOT_GRACE_SECONDS = 30
#: Retry-After of the per-process cap: streams come and go; another process may have room
PROCESS_RETRY_AFTER_SECONDS = 5
#: how long taking a slot waits for Redis before counting in this process only
SLOT_REDIS_TIMEOUT_SECONDS = 0.5

# Drop expired slots, then take one if fewer than the cap are open. Redis's clock, so every web
# process agrees. ARGV: member, cap, lifetime ms, grace ms. Returns {taken, ms until the oldest ends}.
_TAKE = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local lifetime, grace = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, math.max(0, tonumber(oldest[2]) - grace - now)}
end
redis.call('ZADD', KEYS[1], now + lifetime + grace, ARGV[1])
redis.call('PEXPIRE', KEYS[1], lifetime + grace)
return {1, 0}
"""

_lock = threading.Lock()
_open_streams = 0
_open_by_user: Counter[int] = Counter()


@dataclass(frozen=True)
class TooManyStreams:
    detail: str
    retry_after: int


class StreamSlot:
    """A stream's place under the caps; ``release()`` gives it back (also done, locally, when the
    slot is dropped unreleased; its Redis entry then expires by itself)."""

    def __init__(self, user_id: int, member: str, in_redis: bool) -> None:
        self.user_id, self.member, self.in_redis = user_id, member, in_redis
        self._local = weakref.finalize(self, _release_local, user_id)

    def release(self) -> None:
        """Blocking (one Redis command): call it from a thread, as Django's response close does."""
        if not self._local.alive:
            return
        self._local()
        if self.in_redis:
            try:
                _redis_client(settings.REDIS_URL).zrem(USER_KEY.format(user_id=self.user_id), self.member)
            except (RedisError, OSError) as exc:
                logger.debug("stream slot of user %s not released in Redis (%s); it expires", self.user_id, exc)


def _release_local(user_id: int) -> None:
    global _open_streams
    with _lock:
        _open_streams -= 1
        _open_by_user[user_id] -= 1
        if _open_by_user[user_id] <= 0:
            del _open_by_user[user_id]


@cache
def _redis_client(url: str) -> redis.Redis:
    return redis_client(
        url, socket_connect_timeout=SLOT_REDIS_TIMEOUT_SECONDS, socket_timeout=SLOT_REDIS_TIMEOUT_SECONDS
    )


@cache
def _take_script(url: str):
    return _redis_client(url).register_script(_TAKE)


def stream_slot_take(user_id: int) -> StreamSlot | TooManyStreams:
    """A slot for a new stream of ``user_id``, or why not. Blocking (Redis): call it from a thread."""
    global _open_streams
    per_process, per_user = settings.SSE_MAX_STREAMS_PER_PROCESS, settings.SSE_MAX_STREAMS_PER_USER
    with _lock:
        if _open_streams >= per_process:
            return TooManyStreams(
                f"this server holds {per_process} live streams, its most; try again shortly",
                PROCESS_RETRY_AFTER_SECONDS,
            )
        _open_streams += 1
        _open_by_user[user_id] += 1
        local_count = _open_by_user[user_id]
    member = uuid.uuid4().hex
    lifetime_ms = settings.SSE_MAX_STREAM_SECONDS * 1000
    try:
        taken, wait_ms = _take_script(settings.REDIS_URL)(
            keys=[USER_KEY.format(user_id=user_id)], args=[member, per_user, lifetime_ms, SLOT_GRACE_SECONDS * 1000]
        )
    except (RedisError, OSError) as exc:
        logger.warning("stream cap of user %s checked in this process only (Redis: %s)", user_id, exc)
        taken, wait_ms, in_redis = local_count <= per_user, lifetime_ms, False
    else:
        in_redis = bool(taken)
    if not taken:
        _release_local(user_id)
        return TooManyStreams(
            f"{per_user} live streams open already, the most for one user: close one (another page or tab)",
            max(1, math.ceil(int(wait_ms) / 1000)),
        )
    return StreamSlot(user_id, member, in_redis)
