"""The HTTP API: ``api`` with the endpoints of the platform and of every shop domain on it."""

from tasks.orders import api as orders_api
from tasks.platform.api import edits as edits_api
from tasks.platform.api import flow as flow_api
from tasks.platform.api import jobs as jobs_api
from tasks.platform.api import metrics as metrics_api
from tasks.platform.api.base import api
from tasks.reports import api as reports_api

__all__ = ["api", "edits_api", "flow_api", "jobs_api", "metrics_api", "orders_api", "reports_api"]
