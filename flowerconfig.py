"""Flower's configuration file, read by the platform's Flower (`python -m project.flower`).

Basic auth cannot be left off: without FLOWER_BASIC_AUTH (user:password[,user:password...])
Flower refuses to start, with one line naming the setting.

The other names below are defaults only. Flower applies its own FLOWER_<OPTION> environment
variables before this file and command-line options after it, so a name is set here only when
its variable is absent: FLOWER_PERSISTENT, FLOWER_DB, FLOWER_STATE_SAVE_INTERVAL and
FLOWER_PURGE_OFFLINE_WORKERS work as Flower documents them.
"""

import os

from project.localconfig import missing_hint

# The `project` package, imported by Flower's entry point first, has read the checkout's var/local.env.
_credentials = [item.strip() for item in os.environ.get("FLOWER_BASIC_AUTH", "").split(",") if item.strip()]
if not _credentials:
    raise SystemExit(
        f"configuration error: FLOWER_BASIC_AUTH is required (user:password); Flower never runs open{missing_hint()}"
    )
if any(not user or not password for user, _, password in (c.partition(":") for c in _credentials)):
    raise SystemExit("configuration error: FLOWER_BASIC_AUTH must be user:password[,user:password...]")

basic_auth = _credentials
# Local runs bind to loopback only; a container sets FLOWER_ADDRESS=0.0.0.0.
address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")


def _unset(option: str) -> bool:
    return f"FLOWER_{option.upper()}" not in os.environ


# Task history survives a restart: the state is saved to a file on shutdown and periodically
# (in case the process is killed), and loaded at start.
if _unset("persistent"):
    persistent = True
if _unset("db"):
    db = os.path.join(os.path.dirname(os.path.abspath(__file__)), "var", "flower", "flower.db")
if _unset("state_save_interval"):
    state_save_interval = 15_000  # milliseconds
# A worker that went offline leaves the workers list (and its metrics) after this many seconds.
if _unset("purge_offline_workers"):
    purge_offline_workers = 300
