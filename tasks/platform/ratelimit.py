"""Rate limits kept in Redis, so every web process shares them: a bucket per caller and purpose.

A bucket holds ``limit`` units a minute and refills evenly (GCRA, the token bucket in one
timestamp): a caller may spend a burst up to the limit at once, then the limit per minute. The
check is one Lua script, so concurrent requests (any web process) can never both take the last
unit. Who gets which bucket and limit is decided by tasks.platform.services.allowances (enqueues: each job
counts one) and by the order service (placed orders).

Redis down: the request is let through (a WARNING is logged), since the enqueue itself then
degrades to a pending job that the relay publishes later; refusing would turn a broker outage
into an API outage.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import redis
from django.conf import settings

from tasks.platform.queues import redis_client

logger = logging.getLogger(__name__)

#: the window the limit is counted over
PERIOD_MS = 60_000
#: how long a request waits for Redis before it is let through unchecked
REDIS_TIMEOUT_SECONDS = 0.5
KEY_PREFIX = "platform:ratelimit:"

# GCRA: the key holds the "theoretical arrival time" (ms) of the next unit. A request of ``cost``
# units is allowed when, after adding cost * interval to it, it is at most one period ahead of now.
# Redis's own clock, so web processes on different hosts agree. Returns {allowed, wait_ms}.
_GCRA = """
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local wait = new_tat - period - now
if wait > 0 then return {0, math.ceil(wait)} end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.max(1, math.ceil(new_tat - now)))
return {1, 0}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # whole seconds, at least 1 when refused
    detail: str = ""


@functools.cache
def _client(url: str) -> redis.Redis:
    return redis_client(url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS)


@functools.cache
def _script(url: str):
    return _client(url).register_script(_GCRA)


def take(*, bucket: str, limit_per_minute: int, cost: int = 1, what: str = "jobs") -> Verdict:
    """Take ``cost`` units from ``bucket`` (``limit_per_minute`` a minute, 0: no limit), or say how
    long to wait. ``what`` names the units in the refusal. Never raises."""
    if limit_per_minute <= 0 or cost <= 0:
        return Verdict(True)
    if cost > limit_per_minute:
        return Verdict(
            False,
            retry_after=PERIOD_MS // 1000,
            detail=f"{cost} {what} in one request exceed the limit of {limit_per_minute} {what} a minute: split it",
        )
    try:
        allowed, wait_ms = _script(settings.REDIS_URL)(
            keys=[f"{KEY_PREFIX}{bucket}"], args=[PERIOD_MS / limit_per_minute, PERIOD_MS, cost]
        )
    except (redis.RedisError, OSError) as exc:
        logger.warning("rate limit of %s not checked (Redis: %s); request let through", bucket, exc)
        return Verdict(True)
    if allowed:
        return Verdict(True)
    retry_after = max(1, math.ceil(int(wait_ms) / 1000))
    return Verdict(
        False,
        retry_after=retry_after,
        detail=f"rate limit of {limit_per_minute} {what} a minute reached: retry after {retry_after} s",
    )
