"""Enqueue limits an admin sets for one user or one API token, over the defaults from settings.

What a caller may enqueue is resolved by tasks.platform.services.allowances: the token's limits, where set,
over the user's, over the defaults of the caller's role (operator or user).
"""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models

from tasks.platform.models.tokens import ApiToken
from tasks.platform.queues import PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName


class EnqueueLimits(models.Model):
    """Overrides for one user, or for one of their API tokens (a service account's, say). A blank
    field keeps the default; 0 lifts a numeric limit."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        verbose_name="user",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="enqueue_limits",
    )
    token = models.OneToOneField(
        ApiToken,
        verbose_name="API token",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="enqueue_limits",
        help_text="Limits for requests made with this token; they take precedence over its user's.",
    )
    rate_per_minute = models.PositiveIntegerField(
        "jobs a minute",
        null=True,
        blank=True,
        help_text="Jobs it may enqueue a minute (a burst up to it, refilled evenly); "
        "blank: API_RATE_LIMIT_PER_MINUTE; 0: no limit. A token with its own rate has its own bucket.",
    )
    max_active_jobs = models.PositiveIntegerField(
        "active jobs",
        null=True,
        blank=True,
        help_text="Jobs it may have waiting, queued, scheduled, retrying or running at once; "
        "blank: API_MAX_ACTIVE_JOBS; 0: no limit.",
    )
    queues = models.JSONField(
        "queues it may choose",
        default=list,
        blank=True,
        help_text="Queues it may ask for by name; empty: the default (operators any, users none: "
        "their task's own queue).",
    )
    highest_priority = models.PositiveSmallIntegerField(
        "most urgent priority",
        null=True,
        blank=True,
        validators=[MaxValueValidator(PRIORITY_LOWEST)],
        help_text=f"The most urgent priority it may ask for ({PRIORITY_HIGHEST} most urgent … {PRIORITY_LOWEST}); "
        "blank: the default (operators any, users API_USER_HIGHEST_PRIORITY).",
    )

    class Meta:
        verbose_name = "enqueue limits"
        verbose_name_plural = "enqueue limits"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, token__isnull=True)
                | models.Q(user__isnull=True, token__isnull=False),
                name="enqueuelimits_user_or_token",
            ),
            models.CheckConstraint(
                condition=models.Q(highest_priority__lte=PRIORITY_LOWEST), name="enqueuelimits_priority_in_range"
            ),
        ]

    def __str__(self) -> str:
        return f"limits of token {self.token}" if self.token_id else f"limits of {self.user}"

    def clean(self) -> None:
        unknown = [queue for queue in self.queues or [] if queue not in QueueName.values]
        if not isinstance(self.queues, list) or unknown:
            raise ValidationError({"queues": f"must be a list of queue names: {', '.join(QueueName.values)}"})
