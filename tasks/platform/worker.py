"""The worker's consumer (``worker_consumer``), extended in two ways.

A body it cannot decode also marks its job dead. Celery has no signal for an undecodable body
(``Consumer.on_decode_error`` logs and acknowledges it); the task id is still readable in the
message headers. A body Celery's task strategy trips over (empty, raw ``application/data``) is
handled the same way: otherwise its TypeError stops the worker, the message goes back, and it
stops the next worker too.

Task events (Flower's) leave a moment after the task went to its pool process. Celery buffers them
and flushes the buffer on the event loop's next turn, before the loop writes the task to the
process: each task's start waited for a Redis round trip of its "task-received" event, a large
share of an idle worker's enqueue-to-start time. Flushed ``EVENT_FLUSH_DELAY`` later, the events
of that window go out as one message, and the task starts first.

The platform's tasks run with ``LedgerRequest`` (their ``Task.Request``): the ledger, not Celery's
memory of revoked ids, decides whether a job runs. Celery drops any message whose id was revoked
(every worker keeps revoked ids for hours and a starting worker copies its peers' set), and a retry
publishes the job again under the same id, so a retry after a revoke would never run.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer
from celery.worker.request import Request

from tasks.platform import control  # noqa: F401 - registers the remote control command and signal handler workers need
from tasks.platform.signals import mark_dead

#: how long task events wait in the worker's buffer: well past the write of the task to its process
EVENT_FLUSH_DELAY = 0.01


class LedgerConsumer(Consumer):
    _event_flush_due = False

    # Private API (Celery): no documented hook says when the event dispatcher's buffer is flushed.
    def on_send_event_buffered(self) -> None:
        if self.hub and not self._event_flush_due:
            self._event_flush_due = True
            self.hub.call_later(EVENT_FLUSH_DELAY, self._flush_buffered_events)

    def _flush_buffered_events(self) -> None:
        self._event_flush_due = False
        if self.event_dispatcher:
            self.event_dispatcher.flush()

    # Private API (Celery): no signal or setting catches an error of the task strategy on a message.
    def create_task_handler(self, promise: Any = None) -> Any:
        handle = super().create_task_handler() if promise is None else super().create_task_handler(promise)

        def on_task_received(message: Any) -> Any:
            try:
                return handle(message)
            except (TypeError, ValueError, AttributeError) as exc:
                self.on_decode_error(message, exc)

        return on_task_received

    # Private API (Celery): no signal is sent for a body the consumer cannot decode.
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        super().on_decode_error(message, exc)
        headers = getattr(message, "headers", None) or {}
        job_id = headers.get("id") if isinstance(headers, dict) else None
        if job_id:
            mark_dead(str(job_id), f"undeliverable: the message body could not be decoded ({exc}); it was dropped")


class LedgerRequest(Request):
    """A task request that no revoked id drops: ``LedgerTask.__call__`` (and a batch's claim) ask the
    ledger, where a cancel is recorded and a retry undoes it. Expiry is kept as Celery has it."""

    # Private API (Celery): no setting makes the worker ignore its memory of revoked ids.
    def revoked(self) -> bool:
        # Celery's strategy and execute_using_pool call this before running; only an expired message
        # (none of the platform's publishes sets an expiry) is dropped, as Celery would.
        if self.expires and self.maybe_expire():
            return super().revoked()
        return False
