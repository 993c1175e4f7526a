"""The platform's queues, declared once: celeryconfig, the API, admin, Procfile and compose use these;
and the platform's own Redis keys and the client that reads and writes them."""

from functools import cache
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.db import models

from project.redis_clients import async_redis_client as project_async_redis_client
from project.redis_clients import async_redis_pool as project_async_redis_pool
from project.redis_clients import redis_client as project_redis_client


class QueueName(models.TextChoices):
    # Each queue has its own worker pool, so a flood of bulk work never delays critical work.
    CRITICAL = "critical", "Critical (user-facing, short)"
    DEFAULT = "default", "Default"
    BULK = "bulk", "Bulk (CPU-heavy, batch)"


#: Redis priority steps: 0 is the most urgent, 9 the least (kombu's Redis convention).
PRIORITY_HIGHEST = 0
PRIORITY_LOWEST = 9
PRIORITY_DEFAULT = 5


#: seconds a worker's word that it consumes a queue lasts; its heartbeat (every 2 s) renews it
CONSUMER_TTL_SECONDS = 10


def consumer_key(queue: str) -> str:
    """The Redis key that exists while some live worker consumes ``queue``."""
    return f"platform:consumers:{queue}"


#: seconds between a worker's heartbeats: that it is alive, and which jobs it runs in which process
WORKER_HEARTBEAT_SECONDS = 1.0


def worker_key(hostname: str) -> str:
    """The Redis key that exists while the worker ``hostname`` answers: its latest heartbeat, written
    by tasks.platform.heartbeats and read by tasks.platform.selectors.liveness; it expires
    WORKER_LOST_AFTER seconds after the last one."""
    return f"platform:workers:{hostname}"


#: the Redis key of beat's leader lease (one per Redis database, i.e. per deployment): it exists
#: while some beat leads (tasks.platform.beat)
LEASE_KEY = "platform:beat:leader"


def redis_client(url: str | None = None, **options: Any) -> redis.Redis:
    """A new client of REDIS_URL (or ``url``): the Redis it names, or the master its Sentinel names
    (project.redis_clients). ``options`` are redis-py's connection options (timeouts, retry)."""
    return project_redis_client(url or settings.REDIS_URL, master=settings.REDIS_SENTINEL_MASTER, **options)


def async_redis_client(**options: Any) -> aioredis.Redis:
    """An asyncio client of REDIS_URL, as ``redis_client``; its ``aclose`` closes its connections."""
    return project_async_redis_client(settings.REDIS_URL, master=settings.REDIS_SENTINEL_MASTER, **options)


def async_redis_pool(**options: Any) -> aioredis.ConnectionPool:
    """An asyncio connection pool of REDIS_URL, as ``redis_client``."""
    return project_async_redis_pool(settings.REDIS_URL, master=settings.REDIS_SENTINEL_MASTER, **options)


@cache
def platform_redis() -> redis.Redis:
    """The client of the platform's own keys (consumers, heartbeats): one-second timeouts, so a
    Redis that does not answer costs its caller a second, never a hang."""
    return redis_client(socket_connect_timeout=1, socket_timeout=1)
