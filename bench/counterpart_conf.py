"""The Celery settings every counterpart app shares with the platform (bench.raw_app,
bench.dcr_app): one definition, so that the counterparts differ only where they say."""

from __future__ import annotations

import os


def shared_conf(queue: str) -> dict:
    """On the bench's broker (REDIS_URL): JSON only, late acknowledgement, one message prefetched
    per process, ``queue`` the default queue."""
    return {
        "broker_url": os.environ["REDIS_URL"],
        # Stock kombu's: the bench process also loads the platform's, which installs its own for redis://.
        "broker_transport": "kombu.transport.redis:Transport",
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": queue,
    }
