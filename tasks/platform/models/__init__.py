"""The platform's models: the job ledger, enqueue limits, API tokens and schedule options."""

from tasks.platform.models.alerts import Alert, AlertRule, AlertScope, AlertState, AlertThreshold
from tasks.platform.models.edits import JobEdit, JobEditStatus
from tasks.platform.models.flow import ConcurrencyOverride, FlowEvent, FlowKey, Pause, PauseScope, RateOverride
from tasks.platform.models.jobs import Job, JobAction, JobAttempt, JobOutbox
from tasks.platform.models.limits import EnqueueLimits
from tasks.platform.models.metrics import JobMetric, MetricPeriod
from tasks.platform.models.schedules import MissedRunPolicy, ScheduleOptions
from tasks.platform.models.tokens import ApiToken

__all__ = [
    "Alert",
    "AlertRule",
    "AlertScope",
    "AlertState",
    "AlertThreshold",
    "ApiToken",
    "ConcurrencyOverride",
    "EnqueueLimits",
    "FlowEvent",
    "FlowKey",
    "Job",
    "JobAction",
    "JobAttempt",
    "JobEdit",
    "JobEditStatus",
    "JobMetric",
    "JobOutbox",
    "MetricPeriod",
    "MissedRunPolicy",
    "Pause",
    "PauseScope",
    "RateOverride",
    "ScheduleOptions",
]
