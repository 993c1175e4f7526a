"""Liveness and readiness probes. No authentication, so they reveal nothing but up or down: a
failing dependency is named ("database", "redis"), and why it failed (hosts, ports, user names
in the error) goes to the server log only."""

import logging

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET

from tasks.platform.queues import redis_client

logger = logging.getLogger(__name__)

_redis = redis_client(socket_connect_timeout=1, socket_timeout=1)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    """200 when the database and Redis both answer, else 503 naming what is down."""
    down = []
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - whatever failed, the database is not ready
        logger.warning("readiness: the database does not answer: %s: %s", type(exc).__name__, exc)
        down.append("database")
    try:
        _redis.ping()
    except Exception as exc:  # noqa: BLE001 - whatever failed, Redis is not ready
        logger.warning("readiness: Redis does not answer: %s: %s", type(exc).__name__, exc)
        down.append("redis")
    if down:
        return JsonResponse({"status": "unavailable", "down": down}, status=503)
    return JsonResponse({"status": "ready"})


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
]
