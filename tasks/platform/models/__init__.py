"""The platform's models: the job ledger, enqueue limits, API tokens and schedule options."""

from tasks.platform.models.flow import ConcurrencyOverride, FlowEvent, FlowKey, Pause, PauseScope, RateOverride
from tasks.platform.models.jobs import Job, JobAction, JobAttempt, JobOutbox
from tasks.platform.models.limits import EnqueueLimits
from tasks.platform.models.schedules import MissedRunPolicy, ScheduleOptions
from tasks.platform.models.tokens import ApiToken

__all__ = [
    "ApiToken",
    "ConcurrencyOverride",
    "EnqueueLimits",
    "FlowEvent",
    "FlowKey",
    "Job",
    "JobAction",
    "JobAttempt",
    "JobOutbox",
    "MissedRunPolicy",
    "Pause",
    "PauseScope",
    "RateOverride",
    "ScheduleOptions",
]
