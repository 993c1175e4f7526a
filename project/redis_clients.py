"""REDIS_URL read once, and every Redis client of the platform made from it: a plain Redis
(``redis://``, ``rediss://``) or the master that Redis Sentinel names (``sentinel://``).

A Sentinel URL lists the sentinels, separated by ``;``, as kombu's Sentinel transport takes them:
``sentinel://[:password@]host:port;sentinel://host:port/db``. The database number and password may
be written on any one of them (they apply to the master, never to the sentinels) but must not
differ; the master's name comes from REDIS_SENTINEL_MASTER. Clients made here ask a sentinel for
the master's address on every new connection, so after a failover the next connection goes to the
new master. No Django import: the launcher and the test settings use this before Django is set up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel

from project.env import SettingError, env_redis_url, env_str

DEFAULT_SENTINEL_MASTER = "mymaster"
SENTINEL_PORT = 26379
_FORMS = "must look like redis://[:password@]host:port/db or sentinel://host:port;sentinel://host:port/db"


@dataclass(frozen=True)
class SentinelTarget:
    """The master ``master`` of the sentinels at ``sentinels``, database ``db``."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None

    def broker_url(self) -> str:
        """The URL for Celery: kombu reads the database and the credentials from the first sentinel's
        part only (it ignores a ``/db`` written on a later one), so each part carries them."""
        credentials = ""
        if self.username or self.password:
            credentials = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        return ";".join(f"sentinel://{credentials}{host}:{port}/{self.db}" for host, port in self.sentinels)

    def connection_kwargs(self) -> dict[str, Any]:
        return {"db": self.db, "username": self.username, "password": self.password}


def is_sentinel(url: str) -> bool:
    return url.strip().lower().startswith("sentinel://")


def sentinel_target(
    url: str, master: str, *, name: str = "REDIS_URL", master_setting: str = "REDIS_SENTINEL_MASTER"
) -> SentinelTarget:
    """Parse a ``sentinel://`` URL; a malformed one raises SettingError naming ``name``."""
    if not master.strip():
        raise SettingError(master_setting, "must name the master the sentinels watch, got an empty value")
    sentinels: list[tuple[str, int]] = []
    dbs: set[int] = set()
    credentials: set[tuple[str | None, str | None]] = set()
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise SettingError(name, f"{_FORMS}; each part of a sentinel URL is sentinel://host:port, got {url!r}")
        try:
            port = parts.port or SENTINEL_PORT
            db = parts.path.lstrip("/")
            if db and not db.isdigit():
                raise ValueError
        except ValueError:
            raise SettingError(name, f"has a bad port or database number: {url!r}") from None
        if parts.query:
            raise SettingError(name, f"takes no query options in a sentinel URL: {url!r}")
        sentinels.append((parts.hostname, port))
        if db:
            dbs.add(int(db))
        if parts.username or parts.password:
            credentials.add((unquote(parts.username) or None, unquote(parts.password or "") or None))
    if len(dbs) > 1 or len(credentials) > 1:
        raise SettingError(name, f"names different databases or passwords in its sentinel parts: {url!r}")
    username, password = credentials.pop() if credentials else (None, None)
    return SentinelTarget(tuple(sentinels), master.strip(), dbs.pop() if dbs else 0, username, password)


def redis_url_setting(name: str, default: str, *, master_setting: str) -> tuple[str, str]:
    """The setting ``name`` (a Redis or Sentinel URL) and, read from ``master_setting``, the name of
    the Sentinel master; either one malformed stops start-up with one line naming it."""
    master = env_str(master_setting, DEFAULT_SENTINEL_MASTER)
    url = env_str(name, default)
    if not is_sentinel(url):
        return env_redis_url(name, default), master
    sentinel_target(url, master, name=name, master_setting=master_setting)
    return url, master


def celery_broker(url: str, master: str) -> tuple[str, dict[str, Any]]:
    """Celery's ``broker_url`` for ``url``, and what its ``broker_transport_options`` need added:
    for a Sentinel URL, the master's name (kombu's Sentinel transport reads ``master_name``)."""
    if not is_sentinel(url):
        return url, {}
    target = sentinel_target(url, master)
    return target.broker_url(), {"master_name": target.master}


def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    # The sentinels get the socket timeouts of the clients (redis-py's own default) and nothing
    # else: the URL's password is the master's.
    return {key: value for key, value in options.items() if key.startswith("socket_")}


def redis_client(url: str, *, master: str = DEFAULT_SENTINEL_MASTER, **options: Any) -> redis.Redis:
    """A client of ``url``: ``redis.Redis.from_url`` for a plain URL, else one of the Sentinel
    master. ``options`` are redis-py's connection options (timeouts, retry, client name)."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    target = sentinel_target(url, master)
    sentinel = redis.sentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=_sentinel_options(options), **target.connection_kwargs(), **options
    )
    return sentinel.master_for(target.master)


def async_redis_pool(url: str, *, master: str = DEFAULT_SENTINEL_MASTER, **options: Any) -> aioredis.ConnectionPool:
    """An asyncio connection pool of ``url``, as ``redis_client`` makes a client."""
    if not is_sentinel(url):
        return aioredis.ConnectionPool.from_url(url, **options)
    target = sentinel_target(url, master)
    sentinel = aiosentinel.Sentinel(
        list(target.sentinels), sentinel_kwargs=_sentinel_options(options), **target.connection_kwargs(), **options
    )
    return sentinel.master_for(target.master).connection_pool


def async_redis_client(url: str, *, master: str = DEFAULT_SENTINEL_MASTER, **options: Any) -> aioredis.Redis:
    """An asyncio client of ``url`` that closes its pool when it is closed (``aclose``)."""
    return aioredis.Redis.from_pool(async_redis_pool(url, master=master, **options))
