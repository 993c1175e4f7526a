from tasks.models.jobs import Job, JobAction, JobAttempt
from tasks.models.limits import EnqueueLimits
from tasks.models.notifications import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from tasks.models.orders import OpsAlert, Order, OrderItem, OrderStep, Product
from tasks.models.reports import Report
from tasks.models.schedules import MissedRunPolicy, ScheduleOptions
from tasks.models.tokens import ApiToken

__all__ = [
    "ApiToken",
    "EnqueueLimits",
    "Job",
    "JobAction",
    "JobAttempt",
    "MissedRunPolicy",
    "OpsAlert",
    "Order",
    "OrderItem",
    "OrderStep",
    "Product",
    "Report",
    "ScheduleOptions",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
