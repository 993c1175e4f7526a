"""kombu's Redis transport, with one Redis client per channel for the commands it sends itself.

kombu's Redis channel makes a new ``redis.Redis`` for every command it sends outside its event
loop: each publish, each acknowledgement, and each new one sets up redis-py's table of response
callbacks anew. A client holds no connection of its own (it takes one from the channel's pool for
each command, thread-safely, and a forked process gets a fresh pool), so the channel keeps the
first one it makes.

It is installed as the transport of ``redis://`` URLs, and its Sentinel twin as that of
``sentinel://`` URLs, so that URLs and everything that reads them (Flower's broker view, the
workers' banner) stay as they are.
"""

from __future__ import annotations

# Private API (kombu): no documented registry maps a URL scheme to a transport class.
from kombu.transport import TRANSPORT_ALIASES, redis


class ReusedClient:
    _sync_client = None

    # Private API (kombu): the channel makes its Redis clients only in _create_client; nothing public reuses one.
    def _create_client(self, asynchronous=False):
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._sync_client is None:
            self._sync_client = super()._create_client()
        return self._sync_client


class Channel(ReusedClient, redis.Channel):
    pass


class Transport(redis.Transport):
    Channel = Channel


class SentinelChannel(ReusedClient, redis.SentinelChannel):
    """The client's pool asks a sentinel for the master on each new connection, so a kept client
    follows a failover as a new one would."""


class SentinelTransport(redis.SentinelTransport):
    Channel = SentinelChannel


def install() -> None:
    """Make these the transports of ``redis://``, ``rediss://`` and ``sentinel://`` URLs in this
    process (kombu looks a URL's scheme up in TRANSPORT_ALIASES when it connects)."""
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
    TRANSPORT_ALIASES["sentinel"] = f"{__name__}:SentinelTransport"
