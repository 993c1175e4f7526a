import logging
import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand

from tasks.platform.services.relay import RELAY_BATCH, jobs_relay, relay_wait

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the relay: publish jobs that enqueue could not (Redis was down) and delayed jobs when due."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args, once: bool = False, **options) -> None:
        interval = settings.RELAY_INTERVAL_SECONDS
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stopping.set())
        logger.info("relay: publishing unpublished jobs every %ss, and delayed ones when due", interval)
        while not stopping.is_set():
            published = jobs_relay()
            if published:
                logger.info("relay: published %d job(s)", published)
            if once:
                return
            # A full batch means more are waiting: go again at once.
            if published < RELAY_BATCH:
                stopping.wait(relay_wait(interval))
