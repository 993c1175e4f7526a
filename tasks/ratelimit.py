"""Per-user enqueue rate limit of the HTTP API, kept in Redis so every web process shares it.

Each user has a bucket of ``API_RATE_LIMIT_PER_MINUTE`` jobs that refills evenly over a minute
(GCRA, the token bucket in one timestamp): a client may enqueue a burst up to the limit at once,
then the limit per minute. A batch counts each of its jobs; an order, a report and a retry count
one. Staff are limited too: a runaway script with a staff token floods the queues as well as any
other. Over the limit the endpoint answers 429 ``{"detail", "code": "throttled"}`` with
``Retry-After`` (seconds) and nothing is enqueued. The check is one Lua script, so concurrent
requests (any web process) can never both take the last slot.

Redis down: the request is let through (a WARNING is logged), since the enqueue itself then
degrades to a pending job that the relay publishes later; refusing would turn a broker outage
into an API outage.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)

#: the window the limit is counted over
PERIOD_MS = 60_000
#: how long a request waits for Redis before it is let through unchecked
REDIS_TIMEOUT_SECONDS = 0.5
KEY_PREFIX = "platform:ratelimit:enqueue:"

# GCRA: the key holds the "theoretical arrival time" (ms) of the next job. A request of ``cost``
# jobs is allowed when, after adding cost * interval to it, it is at most one period ahead of now.
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
    return redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_SECONDS, socket_timeout=REDIS_TIMEOUT_SECONDS)


@functools.cache
def _script(url: str):
    return _client(url).register_script(_GCRA)


def enqueue_allowance(*, user_id: int, cost: int = 1) -> Verdict:
    """Take ``cost`` jobs from the user's bucket, or say how long to wait. Never raises."""
    limit = settings.API_RATE_LIMIT_PER_MINUTE
    if limit <= 0 or cost <= 0:
        return Verdict(True)
    if cost > limit:
        return Verdict(
            False,
            retry_after=PERIOD_MS // 1000,
            detail=f"{cost} jobs in one request exceed the limit of {limit} jobs a minute: split the batch",
        )
    try:
        allowed, wait_ms = _script(settings.REDIS_URL)(
            keys=[f"{KEY_PREFIX}{user_id}"], args=[PERIOD_MS / limit, PERIOD_MS, cost]
        )
    except (redis.RedisError, OSError) as exc:
        logger.warning("enqueue rate limit not checked for user %s (Redis: %s); request let through", user_id, exc)
        return Verdict(True)
    if allowed:
        return Verdict(True)
    retry_after = max(1, math.ceil(int(wait_ms) / 1000))
    return Verdict(
        False,
        retry_after=retry_after,
        detail=f"enqueue rate limit of {limit} jobs a minute reached: retry after {retry_after} s",
    )


def throttled_response(verdict: Verdict) -> JsonResponse:
    response = JsonResponse({"detail": verdict.detail, "code": "throttled"}, status=429)
    response["Retry-After"] = str(verdict.retry_after)
    return response


def rate_limited(cost: Callable[..., int] | None = None):
    """Decorate an API endpoint that enqueues work: over the caller's limit it answers 429 and the
    view does not run. ``cost`` gets the view's keyword arguments (e.g. ``body``) and says how many
    jobs the request asks for; one by default. Put it under ``@api.post``, after authentication."""

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)  # keeps the signature django-ninja reads the parameters from
        def limited(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            jobs = 1 if cost is None else cost(**kwargs)
            verdict = enqueue_allowance(user_id=request.user.pk, cost=jobs)
            if not verdict.allowed:
                logger.info(
                    "user %s throttled: %s jobs asked, retry after %s s", request.user.pk, jobs, verdict.retry_after
                )
                return throttled_response(verdict)
            return view(request, *args, **kwargs)

        # Annotations resolved in the view's module: django-ninja would look string annotations
        # (``from __future__ import annotations``) up in this module's globals instead.
        limited.__signature__ = inspect.signature(view, eval_str=True)
        limited.enqueues = True  # tests find every endpoint that enqueues by this mark
        return limited

    return decorate
