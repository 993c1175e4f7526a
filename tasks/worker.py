"""The worker's consumer, extended so that a body it cannot decode also marks its job dead.

Celery has no signal for an undecodable body (``Consumer.on_decode_error`` logs and acknowledges
it); the task id is still readable in the message headers. A body Celery's task strategy trips
over (empty, raw ``application/data``) is handled the same way: otherwise its TypeError stops the
worker, the message goes back, and it stops the next worker too. Selected by ``worker_consumer``.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer

from tasks.signals import mark_dead


class LedgerConsumer(Consumer):
    def create_task_handler(self, promise: Any = None) -> Any:
        handle = super().create_task_handler() if promise is None else super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except (TypeError, ValueError, AttributeError) as exc:
                self.on_decode_error(message, exc)

        return on_task_received

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        super().on_decode_error(message, exc)
        headers = getattr(message, "headers", None) or {}
        job_id = headers.get("id") if isinstance(headers, dict) else None
        if job_id:
            mark_dead(str(job_id), f"undeliverable: the message body could not be decoded ({exc}); it was dropped")
