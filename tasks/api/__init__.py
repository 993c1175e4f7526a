"""The HTTP API: ``api`` with every domain's endpoints registered on it."""

from tasks.api import jobs, orders, reports  # noqa: F401 - each module registers its endpoints
from tasks.api.base import api

__all__ = ["api"]
