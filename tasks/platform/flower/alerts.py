"""Flower's Alerts page: the open alerts and the latest resolved ones, from the ledger.

Read only (alerts open and resolve themselves); behind Flower's basic auth like every platform page.
The ORM runs in Flower's thread pool (``in_thread``), never on its event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.utils import timezone

# Private API (Flower): Flower documents no Python API; its handlers are subclassed for its auth.
from flower.views import BaseHandler
from tornado import web

# The dead-letters page's way of showing an age, so both pages read alike.
from tasks.platform.flower.handlers import PlatformHandlerMixin, _age, in_thread
from tasks.platform.models import Alert, AlertRule
from tasks.platform.selectors.alerts import alerts_listed


@dataclass(frozen=True)
class AlertRow:
    id: int
    rule: str
    subject: str
    message: str
    opened_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    age: str


def _row(alert: Alert, now: datetime) -> AlertRow:
    return AlertRow(
        id=alert.pk,
        rule=AlertRule(alert.rule).label,
        subject=alert.subject,
        message=alert.message,
        opened_at=alert.opened_at,
        last_seen_at=alert.last_seen_at,
        resolved_at=alert.resolved_at,
        age=_age(alert.opened_at, alert.resolved_at or now),
    )


def alerts_page() -> tuple[list[AlertRow], list[AlertRow]]:
    now = timezone.now()
    open_alerts, resolved = alerts_listed()
    return [_row(a, now) for a in open_alerts], [_row(a, now) for a in resolved]


class AlertsView(PlatformHandlerMixin, BaseHandler):
    """Open alerts (rule, subject, what was found, for how long) and the latest resolved ones."""

    @web.authenticated
    async def get(self) -> None:
        open_alerts, resolved = await in_thread(alerts_page)
        self.render("platform/alerts.html", open_alerts=open_alerts, resolved=resolved)


def alert_handlers() -> list:
    return [web.url(r"/alerts", AlertsView, name="platform_alerts")]
