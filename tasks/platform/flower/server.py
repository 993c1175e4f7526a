"""Flower with the platform's handlers, templates and metrics, started by `python -m project.flower`.

How it extends Flower without forking it:

- Options: Flower's own functions from ``flower.command`` read FLOWER_* variables, ``flowerconfig.py``
  and the command line, in Flower's documented order.
- Handlers: ``PlatformFlower`` is Flower's Tornado application; the platform's handlers are added
  with Tornado's ``add_handlers``, which puts them in front of Flower's (and its catch-all 404), so
  ``/task/<id>``, ``/broker`` and ``/metrics`` are Flower's handlers subclassed, and the new paths
  are new.
- Templates: a loader that looks in ``tasks/platform/flower/templates`` first and then in Flower's.
  A name prefixed ``flower/`` always means Flower's own file, so an override wraps the original
  instead of copying it (``navbar.html`` renders Flower's navbar and adds one link;
  ``platform/task.html`` and ``platform/broker.html`` extend Flower's ``task.html`` and ``broker.html``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from tornado.template import BaseLoader, Template
from tornado.web import UIModule

logger = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
#: a template name with this prefix is Flower's own file, even where the platform overrides it
FLOWER_PREFIX = "flower/"
#: where the Dead letters link goes in Flower's navbar: at the end of its first (primary) list
NAV_ANCHOR = "</ul>"


class LayeredLoader(BaseLoader):
    """Template names are looked up in the platform's directory, then in Flower's."""

    def __init__(self, *directories: Path, flower_directory: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.directories = [*directories, flower_directory]
        self.flower_directory = flower_directory

    def resolve_path(self, name: str, parent_path: str | None = None) -> str:
        return name  # flat names, as Flower's templates use them

    # Private API (tornado): BaseLoader.load() creates templates only through _create_template.
    def _create_template(self, name: str) -> Template:
        if name.startswith(FLOWER_PREFIX):
            path = self.flower_directory / name.removeprefix(FLOWER_PREFIX)
        else:
            path = next((d / name for d in self.directories if (d / name).is_file()), self.flower_directory / name)
        return Template(path.read_bytes(), name=name, loader=self)


class PlatformNavbar(UIModule):
    """Flower's navbar with "Dead letters", "Alerts" and "Metrics" links added to its main navigation."""

    def render(self, active_tab: str = "") -> str:
        navbar = self.render_string(f"{FLOWER_PREFIX}navbar.html", active_tab=active_tab).decode()
        link = self.render_string("platform/nav_item.html", active=active_tab == "dead-letters").decode()
        link += self.render_string("platform/nav_alerts.html", active=active_tab == "alerts").decode()
        link += self.render_string("platform/nav_metrics.html", active=active_tab == "metrics").decode()
        if NAV_ANCHOR not in navbar:  # Flower changed its markup: still reachable, after the navbar
            return navbar + link
        return navbar.replace(NAV_ANCHOR, link + NAV_ANCHOR, 1)


def _flower_app_class():
    # Private API (Flower): Flower documents no Python API; its Tornado application is subclassed to add handlers.
    from flower.app import Flower, rewrite_handler

    from tasks.platform.flower.alerts import alert_handlers
    from tasks.platform.flower.edits import edit_handlers
    from tasks.platform.flower.handlers import platform_handlers
    from tasks.platform.flower.metrics import LedgerMetrics
    from tasks.platform.flower.metrics_page import metrics_page_handlers

    class PlatformFlower(Flower):
        """Flower's application plus the platform's handlers and ledger gauges."""

        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            handlers = platform_handlers() + alert_handlers() + metrics_page_handlers() + edit_handlers()
            if self.options.url_prefix:
                handlers = [rewrite_handler(handler, self.options.url_prefix) for handler in handlers]
            self.add_handlers(r".*", handlers)
            self.ledger_metrics = LedgerMetrics.register()

    return PlatformFlower


def _configuration_error(message: str) -> SystemExit:
    return SystemExit(f"configuration error: {message}")


def _parse_options(argv: list[str]):
    from django.conf import settings

    # Private API (Flower): `celery flower` reads its options with these functions; nothing public does.
    from flower import command
    from tornado.options import options

    # Flower looks for ./flowerconfig.py; the platform's is next to manage.py wherever we start.
    options.conf = str(settings.BASE_DIR / "flowerconfig.py")
    try:
        command.apply_env_options()
    except (KeyError, TypeError, ValueError) as exc:
        raise _configuration_error(f"a FLOWER_* variable is malformed ({exc})") from None
    command.apply_options(sys.argv[0], argv)
    if not options.basic_auth:  # flowerconfig.py refuses first; this guards a --conf pointing elsewhere
        raise _configuration_error("FLOWER_BASIC_AUTH is required (user:password); Flower never runs open")
    if options.persistent:
        state_dir = Path(options.db).resolve().parent
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _configuration_error(f"FLOWER_DB directory {state_dir} cannot be created ({exc})") from None
        if not os.access(state_dir, os.W_OK):
            raise _configuration_error(f"FLOWER_DB directory {state_dir} is not writable")
    command.extract_settings()
    return options


def main(argv: list[str] | None = None) -> None:
    """Start Flower as `celery flower` would, with the platform's additions."""
    options = _parse_options(sys.argv[1:] if argv is None else argv)

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    django.setup()  # the ORM, for the ledger: handlers run it in Flower's thread pool

    # Private API (Flower): `celery flower` starts Flower with these; Flower documents no Python API.
    from flower import command
    from flower.urls import settings

    from project.celery import app as celery_app

    command.setup_logging()
    flower_settings = {
        **settings,
        "template_loader": LayeredLoader(TEMPLATE_DIR, flower_directory=Path(settings["template_path"])),
        "ui_modules": {"PlatformNavbar": PlatformNavbar},
    }
    flower = _flower_app_class()(capp=celery_app, options=options, **flower_settings)
    atexit.register(flower.stop)  # saves the state file (persistent mode)
    signal.signal(signal.SIGTERM, command.sigterm_handler)
    port = flower.start_http_server()
    command.print_banner(celery_app, "ssl_options" in settings, port)
    logger.info(
        "platform additions: retry at /api/task/retry/<id>, dead letters at /dead-letters, pause and resume "
        "on the broker and task pages; state file %s",
        options.db if options.persistent else "(persistence off)",
    )
    with contextlib.suppress(KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM via Flower's handler
        flower.start()
