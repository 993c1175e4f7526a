"""Alerts from the ledger: evaluate the rules, open and resolve alerts once, and announce each.

``alerts_evaluate`` (the ``alerts.evaluate`` task, fired by beat every 30 s) reads every rule
(tasks.platform.selectors.alerts) and, in one transaction:

- opens an alert for each finding without an open alert of its (rule, subject);
- refreshes ``last_seen_at`` of each open alert whose condition still holds (one row, however many
  evaluations it holds for: no new row, no new delivery);
- resolves each open alert whose condition has been clear for ALERT_RESOLVE_AFTER_SECONDS (a
  single good reading between two bad ones resolves nothing); a rule that could not tell (Redis
  down) leaves its alerts as they are.

Evaluations may overlap (a slow one and the next, or two beats during a failover): each locks the
open alerts before it reads, so a later one waits and reads after the first committed; an open
that races another fails on the database's one-open-alert constraint and is dropped; a resolve is
an update of a row still open. So each alert opens once and resolves once, and is announced once
each time.

Announcing is part of the same transaction, so it happens only once the alert is committed: the
log line (on commit), an e-mail as a ledger job (``alerts.mail``: sent after commit, retried by
the ledger), and the ``alert_opened`` / ``alert_resolved`` signals, whose receivers write in the
transaction (the shop's notifications queue their signed webhook deliveries there; the platform
never imports the shop).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import current_app
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.db import IntegrityError, transaction
from django.dispatch import Signal
from django.utils import timezone

from tasks.platform.models import Alert, AlertRule
from tasks.platform.registry import LEDGER_TASKS
from tasks.platform.selectors import alerts as rules
from tasks.platform.services.jobs import job_enqueue, task_queue

logger = logging.getLogger(__name__)

#: sent in the transaction that opens an alert (kwargs: alert); receivers may write in it
alert_opened = Signal()
#: sent in the transaction that resolves an alert (kwargs: alert)
alert_resolved = Signal()

MAIL_TASK = "alerts.mail"
EVALUATE_TASK = "alerts.evaluate"


@dataclass
class Evaluation:
    opened: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)
    #: open alerts whose condition still holds
    held: int = 0
    #: rules that could not tell this time
    unknown: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "opened": [f"{a.rule} {a.subject}" for a in self.opened],
            "resolved": [f"{a.rule} {a.subject}" for a in self.resolved],
            "held": self.held,
            "unknown": self.unknown,
        }


def soft_time_limit(task_name: str) -> int:
    """A task's soft time limit in seconds: its own, else the workers' (TASK_SOFT_TIME_LIMIT)."""
    task = LEDGER_TASKS.get(task_name)
    own = getattr(task, "soft_time_limit", None) if task is not None else None
    return int(own or current_app.conf.task_soft_time_limit or 0)


def _read(now: datetime) -> list[rules.Reading]:
    thresholds = rules.alert_thresholds()
    return [
        rules.latency(now, thresholds),
        rules.no_consumer(now, thresholds),
        rules.stalled(now, thresholds),
        rules.dead_letters(now, thresholds),
        rules.schedules(now, thresholds, route=task_queue),
        rules.overruns(now, thresholds, soft_limit=soft_time_limit),
    ]


def alerts_evaluate(*, now: datetime | None = None) -> Evaluation:
    """Evaluate every rule once; open, refresh and resolve alerts (see the module)."""
    outcome = Evaluation()
    with transaction.atomic():
        # Locked before reading: an overlapping evaluation waits here, then reads what this one left.
        open_alerts = {(a.rule, a.subject): a for a in Alert.objects.select_for_update().filter(state=Alert.State.OPEN)}
        now = now or timezone.now()
        readings = _read(now)
        clear_since = now - timedelta(seconds=settings.ALERT_RESOLVE_AFTER_SECONDS)
        held: list[int] = []
        for reading in readings:
            if not reading.known:
                outcome.unknown.append(reading.rule)
                continue
            holding = set()
            for finding in reading.findings:
                holding.add(finding.subject)
                alert = open_alerts.get((finding.rule, finding.subject))
                if alert is not None:
                    held.append(alert.pk)
                elif (opened := _open(finding, now)) is not None:
                    outcome.opened.append(opened)
            for (rule, subject), alert in open_alerts.items():
                clear = rule == reading.rule and subject not in holding and alert.last_seen_at <= clear_since
                if clear and _resolve(alert, now):
                    outcome.resolved.append(alert)
        if held:
            Alert.objects.filter(pk__in=held).update(last_seen_at=now)
        outcome.held = len(held)
    return outcome


def _open(finding: rules.Finding, now: datetime) -> Alert | None:
    try:
        with transaction.atomic():  # a savepoint: a lost race leaves the evaluation's transaction usable
            alert = Alert.objects.create(
                rule=finding.rule,
                subject=finding.subject,
                message=finding.message,
                value=finding.value,
                threshold=finding.threshold,
                opened_at=now,
                last_seen_at=now,
            )
    except IntegrityError:
        return None  # an overlapping evaluation opened it: it announces it
    _announce(alert, "opened")
    alert_opened.send(sender=Alert, alert=alert)
    return alert


def _resolve(alert: Alert, now: datetime) -> bool:
    if not Alert.objects.filter(pk=alert.pk, state=Alert.State.OPEN).update(
        state=Alert.State.RESOLVED, resolved_at=now
    ):
        return False  # an overlapping evaluation resolved it
    alert.state, alert.resolved_at = Alert.State.RESOLVED, now
    _announce(alert, "resolved")
    alert_resolved.send(sender=Alert, alert=alert)
    return True


def _announce(alert: Alert, event: str) -> None:
    """The log line once committed, and the e-mail as a ledger job (sent after commit, retried)."""
    level = logging.WARNING if event == "opened" else logging.INFO
    line = f"alert {event}: [{AlertRule(alert.rule).label}] {alert.message}"
    transaction.on_commit(lambda: logger.log(level, "%s", line))
    if alert_recipients():
        job_enqueue(task_name=MAIL_TASK, payload={"alert_id": alert.pk, "event": event}, origin=f"alert:{alert.pk}")


def alert_recipients() -> list[str]:
    """ALERT_EMAILS, else the addresses of the active superusers."""
    if settings.ALERT_EMAILS:
        return list(settings.ALERT_EMAILS)
    users = get_user_model().objects.filter(is_superuser=True, is_active=True).exclude(email="")
    return sorted(set(users.values_list("email", flat=True)))


def alert_mail(*, alert_id: int, event: str) -> dict:
    """Send one alert's e-mail (the ``alerts.mail`` job); an SMTP error raises, and the ledger retries."""
    alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None:
        return {"alert": alert_id, "skipped": "alert deleted"}
    recipients = alert_recipients()
    if not recipients:
        return {"alert": alert_id, "skipped": "no recipients"}
    rule = AlertRule(alert.rule).label
    subject = f"[alert {event}] {rule}: {alert.subject}"
    lines = [
        f"{rule}: {alert.subject} — {event}.",
        "",
        alert.message,
        "",
        f"Opened at {alert.opened_at:%Y-%m-%d %H:%M:%S} UTC.",
    ]
    if alert.resolved_at is not None:
        lines.append(f"Resolved at {alert.resolved_at:%Y-%m-%d %H:%M:%S} UTC.")
    # One Message-ID per alert and event: a copy resent by a retry is recognised as the same message.
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    message_id = f"<alert-{alert.pk}-{event}@{domain}>"
    EmailMessage(
        subject, "\n".join(lines), settings.DEFAULT_FROM_EMAIL, recipients, headers={"Message-ID": message_id}
    ).send()
    return {"alert": alert_id, "event": event, "to": recipients, "message_id": message_id}
