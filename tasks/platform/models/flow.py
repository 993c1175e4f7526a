"""Flow control: pauses of queues and tasks, their record, and admins' overrides of concurrency
limits and rates.

The engine reads them when it admits jobs (tasks.platform.engine.flow); only the engine writes
pauses, through the flow service that every door (API, admin, Flower, command) calls.
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

from tasks.platform.concurrency import CONCURRENCY, EVERY_JOB, KEY_MAX_LENGTH, RATES, parse_rate


class PauseScope(models.TextChoices):
    QUEUE = "queue", "Queue"
    TASK = "task", "Task"


class Pause(models.Model):
    """A queue or a task that is paused: none of its jobs starts until it is resumed. Jobs enqueued
    meanwhile are accepted and wait, held, in the ledger; running ones finish."""

    scope = models.CharField("paused", max_length=8, choices=PauseScope.choices)
    name = models.CharField("name", max_length=200, help_text="The queue's or the task's name.")
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name="by", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    via = models.CharField("via", max_length=32, help_text="api, admin, command or flower.")
    at = models.DateTimeField("since", auto_now_add=True)

    class Meta:
        verbose_name = "pause"
        ordering = ["scope", "name"]
        constraints = [models.UniqueConstraint(fields=["scope", "name"], name="pause_scope_name_unique")]

    def __str__(self) -> str:
        return f"{self.scope} {self.name} paused"


class FlowEvent(models.Model):
    """Every pause and resume: who, when, from where."""

    class Action(models.TextChoices):
        PAUSED = "paused", "Paused"
        RESUMED = "resumed", "Resumed"

    action = models.CharField("action", max_length=8, choices=Action.choices)
    scope = models.CharField("of", max_length=8, choices=PauseScope.choices)
    name = models.CharField("name", max_length=200)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name="by", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    via = models.CharField("via", max_length=32)
    at = models.DateTimeField("at", auto_now_add=True)

    class Meta:
        verbose_name = "pause or resume"
        verbose_name_plural = "pauses and resumes"
        ordering = ["-at"]

    def __str__(self) -> str:
        return f"{self.scope} {self.name} {self.action} by {self.by or 'system'} via {self.via}"


class ConcurrencyOverride(models.Model):
    """An admin's number for a task's declared concurrency limit, for one key value or for all."""

    task_name = models.CharField("task", max_length=200)
    key = models.CharField(
        "key value",
        max_length=KEY_MAX_LENGTH,
        blank=True,
        help_text="The payload value this number applies to (account 42: 42); blank for every value "
        "without an override of its own.",
    )
    running = models.PositiveIntegerField("at most running at once")

    class Meta:
        verbose_name = "concurrency override"
        constraints = [
            models.UniqueConstraint(fields=["task_name", "key"], name="concurrency_override_unique"),
            models.CheckConstraint(condition=models.Q(running__gte=1), name="concurrency_override_at_least_one"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name} [{self.key or 'every key'}]: {self.running}"

    def clean(self) -> None:
        limit = CONCURRENCY.get(self.task_name)
        if limit is None:
            declared = ", ".join(sorted(CONCURRENCY)) or "none"
            raise ValidationError(
                {"task_name": f"{self.task_name!r} declares no concurrency limit (tasks that do: {declared})"}
            )
        if limit.key is None and self.key not in ("", EVERY_JOB):
            raise ValidationError({"key": f"{self.task_name}'s limit has no key: leave this blank"})
        if self.running is not None and self.running < 1:
            raise ValidationError({"running": "at least 1"})


class RateOverride(models.Model):
    """An admin's rate for a task's declared rate, for one key value or for all."""

    task_name = models.CharField("task", max_length=200)
    key = models.CharField(
        "key value",
        max_length=KEY_MAX_LENGTH,
        blank=True,
        help_text="The payload value this rate applies to; blank for every value without a rate of its own.",
    )
    rate = models.CharField("rate", max_length=16, help_text="Starts per period: 10/s, 100/m or 5/h.")

    class Meta:
        verbose_name = "rate override"
        constraints = [models.UniqueConstraint(fields=["task_name", "key"], name="rate_override_unique")]

    def __str__(self) -> str:
        return f"{self.task_name} [{self.key or 'every key'}]: {self.rate}"

    def clean(self) -> None:
        declared = RATES.get(self.task_name)
        if declared is None:
            tasks = ", ".join(sorted(RATES)) or "none"
            raise ValidationError({"task_name": f"{self.task_name!r} declares no rate (tasks that do: {tasks})"})
        if declared.key is None and self.key not in ("", EVERY_JOB):
            raise ValidationError({"key": f"{self.task_name}'s rate has no key: leave this blank"})
        try:
            parse_rate(self.rate)
        except ValueError as exc:
            raise ValidationError({"rate": str(exc)}) from None


class FlowKey(models.Model):
    """One row per task and key with a concurrency limit or a rate: the lock that admits their
    jobs one admitter at a time, so two never fill the same free slot, and the time the rate lets
    the next job start, and when its last job started."""

    task_name = models.CharField("task", max_length=200)
    key = models.CharField("key value", max_length=KEY_MAX_LENGTH)
    next_start_at = models.DateTimeField("next start at", null=True, blank=True)
    last_start_at = models.DateTimeField("last start at", null=True, blank=True)

    class Meta:
        verbose_name = "flow key"
        constraints = [models.UniqueConstraint(fields=["task_name", "key"], name="flow_key_unique")]

    def __str__(self) -> str:
        return f"{self.task_name} [{self.key}]"
