"""Webhooks: order events delivered to the endpoints admins registered (being built)."""

from __future__ import annotations

from typing import Any


def webhook_event_dispatch(*, event: str, data: dict[str, Any]) -> int:
    """Queue a delivery of ``event`` to every active endpoint subscribed to it, in the caller's
    transaction; returns how many were queued."""
    return 0
