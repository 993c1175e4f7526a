"""The platform's models: the job ledger, enqueue limits, API tokens and schedule options."""

from tasks.platform.models.jobs import Job, JobAction, JobAttempt, JobOutbox
from tasks.platform.models.limits import EnqueueLimits
from tasks.platform.models.schedules import MissedRunPolicy, ScheduleOptions
from tasks.platform.models.tokens import ApiToken

__all__ = [
    "ApiToken",
    "EnqueueLimits",
    "Job",
    "JobAction",
    "JobAttempt",
    "JobOutbox",
    "MissedRunPolicy",
    "ScheduleOptions",
]
