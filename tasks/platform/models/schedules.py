"""What the platform adds to django-celery-beat's schedules (its models stay as they are)."""

from django.db import models
from django_celery_beat.models import PeriodicTask


class MissedRunPolicy(models.TextChoices):
    RUN_ONCE = "run_once", "Run once (one catch-up run, never a burst)"
    SKIP = "skip", "Skip (wait for the next due time)"


class ScheduleOptions(models.Model):
    """Per-schedule options beat follows; a schedule without a row has the defaults."""

    schedule = models.OneToOneField(
        PeriodicTask, verbose_name="schedule", on_delete=models.CASCADE, related_name="platform_options"
    )
    missed_run_policy = models.CharField(
        "after downtime",
        max_length=16,
        choices=MissedRunPolicy.choices,
        default=MissedRunPolicy.RUN_ONCE,
        help_text="When beat was down across a due time: run once when it is back, or skip to the next due time.",
    )

    class Meta:
        verbose_name = "schedule options"
        verbose_name_plural = "schedule options"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(missed_run_policy__in=MissedRunPolicy.values), name="scheduleoptions_policy_valid"
            )
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id}: {self.missed_run_policy}"
