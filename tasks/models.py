"""Every model of the ``tasks`` app, where Django looks for them: the platform's and each shop
domain's. Code imports a model from its own package; this index is for Django, tests and tools."""

from tasks.notifications.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tasks.orders.models import OpsAlert, Order, OrderItem, OrderStep, Product
from tasks.platform.models import (
    Alert,
    AlertThreshold,
    ApiToken,
    ConcurrencyOverride,
    EnqueueLimits,
    FlowEvent,
    FlowKey,
    Job,
    JobAction,
    JobAttempt,
    JobEdit,
    JobMetric,
    JobOutbox,
    MissedRunPolicy,
    Pause,
    RateOverride,
    ScheduleOptions,
)
from tasks.reports.models import Report

__all__ = [
    "Alert",
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
    "JobMetric",
    "JobOutbox",
    "MissedRunPolicy",
    "OpsAlert",
    "Order",
    "OrderItem",
    "OrderStep",
    "Pause",
    "Product",
    "RateOverride",
    "Report",
    "ScheduleOptions",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
