import logging
import signal
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from tasks.platform import tracing
from tasks.platform.services.broker_loss import BrokerWatch
from tasks.platform.services.metric_history import FLUSH_EVERY_SECONDS, metrics_flush_pass
from tasks.platform.services.relay import (
    DUE_CHECK_SECONDS,
    RECOVER_EVERY_SECONDS,
    RELAY_BATCH,
    jobs_recover,
    jobs_relay,
    jobs_resend_lost,
    relay_wait,
)

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Run the relay: publish jobs that enqueue could not (Redis was down) and delayed jobs when due, "
        "run again the started jobs of workers that stopped answering, send again the queued jobs whose "
        "messages Redis lost, and copy the metric history's counts from Redis into the database."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args, once: bool = False, **options) -> None:
        interval = settings.RELAY_INTERVAL_SECONDS
        # Its publishes only: a pass's queries every second would each be a trace of their own.
        tracing.configure(tracing.RELAY, data_stores=False)
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        logger.info("relay: publishing unpublished jobs every %ss, and delayed ones when due", interval)
        recover_at = flush_at = time.monotonic()
        broker = BrokerWatch()
        while not stopping.is_set():
            if time.monotonic() >= flush_at:
                flush_at = time.monotonic() + FLUSH_EVERY_SECONDS
                metrics_flush_pass()
            if time.monotonic() >= recover_at:
                recover_at = time.monotonic() + RECOVER_EVERY_SECONDS
                if recovered := jobs_recover():
                    logger.warning("relay: %d started job(s) lost their run and were recovered", recovered)
                jobs_resend_lost(broker)
            published = jobs_relay()
            if published:
                logger.info("relay: published %d job(s)", published)
            if once:
                return
            # A full batch means more are waiting: go again at once.
            if published < RELAY_BATCH:
                _wait_for_next_pass(stopping, interval)


def _wait_for_next_pass(stopping: threading.Event, interval: float) -> None:
    """Until the next pass: ``interval`` later, or as soon as a delayed job, a retry or a rate's
    turn falls due, looked for every DUE_CHECK_SECONDS (a worker hands out a rate's turns while
    the relay waits)."""
    next_pass = time.monotonic() + interval
    while not stopping.is_set() and (left := next_pass - time.monotonic()) > 0:
        wait = relay_wait(left)
        if wait <= DUE_CHECK_SECONDS:
            stopping.wait(wait)
            return
        stopping.wait(DUE_CHECK_SECONDS)
