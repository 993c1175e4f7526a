"""Edits of a job's payload waiting for a second person (JOB_EDIT_REQUIRES_APPROVAL).

An edit that needs no approval is applied at once and recorded only as the job's ``edited``
action. With the two-person rule on, the edit is kept here, pending, until a different staff user
approves it (the job then runs with it, recorded as that action) or someone rejects it.
"""

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q

from tasks.platform.models.jobs import Job


class JobEditStatus(models.TextChoices):
    PENDING = "pending", "Waiting for approval"
    APPROVED = "approved", "Approved (the job ran again with it)"
    REJECTED = "rejected", "Rejected"


class JobEdit(models.Model):
    """One requested edit of a dead or failed job's payload, and what became of it."""

    job = models.ForeignKey(Job, verbose_name="job", on_delete=models.CASCADE, related_name="edits")
    before = models.JSONField("payload before", encoder=DjangoJSONEncoder, help_text="The payload when it was asked.")
    after = models.JSONField("payload after", encoder=DjangoJSONEncoder, help_text="The payload asked for (valid).")
    status = models.CharField("status", max_length=16, choices=JobEditStatus.choices, default=JobEditStatus.PENDING)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name="requested by",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    requested_via = models.CharField("requested via", max_length=32, help_text="api, admin or flower.")
    requested_at = models.DateTimeField("requested at", auto_now_add=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name="decided by",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    decided_via = models.CharField("decided via", max_length=32, blank=True)
    decided_at = models.DateTimeField("decided at", null=True, blank=True)

    class Meta:
        verbose_name = "job edit"
        ordering = ["-requested_at"]
        constraints = [
            # One open question per job: a second edit waits until the first is decided.
            models.UniqueConstraint(fields=["job"], condition=Q(status="pending"), name="jobedit_one_pending_per_job"),
        ]

    def __str__(self) -> str:
        return f"edit of {self.job_id} ({self.status})"
