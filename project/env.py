"""Typed reads of environment settings.

Every setting the platform reads from the environment goes through these helpers, so that a
missing or malformed value stops start-up with one line that names it (``SettingError`` is a
``SystemExit``: no traceback), and so that the set of names is known (``READ``) for the README
and docker-compose checks.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from project.localconfig import missing_hint

#: every environment variable read so far, name -> default (None when required)
READ: dict[str, str | None] = {}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingError(SystemExit):
    """A bad setting: exits the process printing one line that names it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"configuration error: {name} {problem}")


def _raw(name: str, default: str | None) -> str | None:
    READ.setdefault(name, default)
    value = os.environ.get(name)
    return default if value is None else value


def env_str(name: str, default: str | None = None, *, allow_empty: bool = False) -> str:
    value = _raw(name, default)
    if value is None or (value == "" and not allow_empty):
        raise SettingError(name, f"is required but not set{missing_hint()}")
    return value


def env_http_url(name: str, default: str | None = None) -> str:
    """An absolute http(s) URL with a host (the address of a service the platform calls)."""
    value = env_str(name, default)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingError(name, f"must be an http:// or https:// URL with a host, got {value!r}")
    return value


def env_optional_http_url(name: str) -> str:
    """An http(s) URL as ``env_http_url``, or empty when unset or empty (a feature left off)."""
    return env_http_url(name) if env_str(name, "", allow_empty=True) else ""


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name, "true" if default else "false").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingError(name, f"must be true or false, got {value!r}")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    value = _raw(name, str(default))
    try:
        number = int(value)
    except ValueError:
        raise SettingError(name, f"must be an integer, got {value!r}") from None
    if number < minimum:
        raise SettingError(name, f"must be at least {minimum}, got {number}")
    return number


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in _raw(name, default).split(",") if item.strip()]


def env_redis_url(name: str, default: str) -> str:
    value = env_str(name, default)
    parts = urlsplit(value)
    if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
        raise SettingError(
            name,
            f"must look like redis://[:password@]host:port/db or sentinel://host:port;sentinel://host:port/db, "
            f"got {value!r}",
        )
    try:
        parts.port  # noqa: B018 - parsing the port validates it
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            raise ValueError
    except ValueError:
        raise SettingError(name, f"has a bad port or database number: {value!r}") from None
    return value
