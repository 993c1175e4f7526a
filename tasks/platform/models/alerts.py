"""Alerts from the ledger: what the platform told ops, and the thresholds admins set per queue or task.

An alert is one row per incident: it opens when an evaluation finds its rule's condition holding
for a subject (a queue, a task or a schedule), stays that one row while the condition holds, and is
resolved once the condition has been clear for ALERT_RESOLVE_AFTER_SECONDS. The database allows at
most one open alert per (rule, subject), so two evaluations that overlap cannot open it twice.
"""

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone


class AlertRule(models.TextChoices):
    LATENCY = "latency", "Enqueue→start latency"
    NO_CONSUMER = "no_consumer", "Jobs waiting, no worker consuming"
    STALLED = "stalled", "Running jobs, no completion"
    DEAD_LETTERS = "dead_letters", "Dead letters growing"
    SCHEDULE = "schedule", "Schedule run missed or failed"
    OVERRUN = "overrun", "Past its soft time limit, no heartbeat"


class AlertState(models.TextChoices):
    OPEN = "open", "Open"
    RESOLVED = "resolved", "Resolved"


class Alert(models.Model):
    State = AlertState

    rule = models.CharField("rule", max_length=32, choices=AlertRule.choices)
    subject = models.CharField(
        "subject", max_length=255, help_text="What it is about: queue:<name>, task:<name> or schedule:<name>."
    )
    state = models.CharField("state", max_length=16, choices=AlertState.choices, default=AlertState.OPEN)
    message = models.TextField("message", help_text="What the evaluation that opened it found.")
    value = models.FloatField("measured", help_text="The rule's measure when it opened (seconds, or dead jobs).")
    threshold = models.PositiveIntegerField("threshold", help_text="The threshold it crossed, in the rule's unit.")
    opened_at = models.DateTimeField("opened at", default=timezone.now)
    last_seen_at = models.DateTimeField(
        "last seen at", default=timezone.now, help_text="The latest evaluation that found the condition holding."
    )
    resolved_at = models.DateTimeField("resolved at", null=True, blank=True)

    class Meta:
        verbose_name = "alert"
        ordering = ["-opened_at"]
        indexes = [models.Index(fields=["state", "-opened_at"], name="alert_state_opened")]
        constraints = [
            # One incident per rule and subject: an overlapping evaluation's insert fails instead of
            # opening (and delivering) it a second time.
            models.UniqueConstraint(
                fields=["rule", "subject"], name="alert_one_open", condition=models.Q(state=AlertState.OPEN)
            ),
            models.CheckConstraint(condition=models.Q(rule__in=AlertRule.values), name="alert_rule_valid"),
            models.CheckConstraint(condition=models.Q(state__in=AlertState.values), name="alert_state_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.get_rule_display()}: {self.subject} ({self.state})"


class AlertScope(models.TextChoices):
    QUEUE = "queue", "Queue"
    TASK = "task", "Task"


class AlertThreshold(models.Model):
    """An admin's threshold of one rule for one queue or task; without a row the setting's default
    applies. A task's row beats its queue's, and a task with a row of its own is judged alone."""

    rule = models.CharField("rule", max_length=32, choices=AlertRule.choices)
    scope = models.CharField("for a", max_length=16, choices=AlertScope.choices)
    name = models.CharField("queue or task", max_length=200)
    threshold = models.PositiveIntegerField(
        "threshold",
        validators=[MinValueValidator(1)],
        help_text="Seconds for latency, no consumer, stalled, schedule (late by) and overrun (past the soft "
        "limit); dead jobs per ALERT_DEAD_LETTERS_WINDOW_SECONDS for dead letters.",
    )
    enabled = models.BooleanField("alerts on", default=True, help_text="Off: this rule never alerts for it.")

    class Meta:
        verbose_name = "alert threshold"
        ordering = ["rule", "scope", "name"]
        constraints = [
            models.UniqueConstraint(fields=["rule", "scope", "name"], name="alertthreshold_unique"),
            models.CheckConstraint(condition=models.Q(threshold__gte=1), name="alertthreshold_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.get_rule_display()} for {self.scope} {self.name}: {self.threshold}"
