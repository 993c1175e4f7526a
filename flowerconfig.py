"""Flower's configuration file (Flower loads ./flowerconfig.py by default).

Basic auth cannot be left off: without FLOWER_BASIC_AUTH (user:password[,user:password...])
Flower refuses to start, with one line naming the setting.
"""

import os

_credentials = [item.strip() for item in os.environ.get("FLOWER_BASIC_AUTH", "").split(",") if item.strip()]
if not _credentials:
    raise SystemExit("configuration error: FLOWER_BASIC_AUTH is required (user:password); Flower never runs open")
if any(not user or not password for user, _, password in (c.partition(":") for c in _credentials)):
    raise SystemExit("configuration error: FLOWER_BASIC_AUTH must be user:password[,user:password...]")

basic_auth = _credentials
# Local runs bind to loopback only; a container sets FLOWER_ADDRESS=0.0.0.0.
address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
