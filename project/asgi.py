"""The web process's ASGI application (uvicorn, the Procfile's ``web`` line).

Django's ASGI handler, with the sync views (the API, admin, pages) served the way a threaded WSGI
server serves them, which keeps a request's latency low under load:

- One thread hop a request. Django's built-in middleware is sync code: in Django's async chain
  each ``process_request`` / ``process_response`` hops to a thread and back, each hop a wake-up
  on a busy machine. Here the middleware and a sync view run in one hop.
- Long-lived request threads. Django gives every request a new thread, so a persistent database
  connection (CONN_MAX_AGE) would be opened for each request and left to the garbage collector,
  so under steady load PostgreSQL runs out of connections. A sync view's request borrows one of
  ``REQUEST_THREADS`` threads instead, each keeping its own connection. When all are busy (a
  burst, or slow clients of file downloads), a request gets a thread of its own, as in Django.

Async views (the SSE stream, the sandbox gateway) keep Django's async handling, so what they await
holds no thread; their sync parts (middleware, signals, the stream's checks) run one at a time on
one long-lived thread of their own, with its own connection, so an open stream holds neither a
thread nor a database connection. A sync request on a thread of its own has its database
connection closed at the end.

In front of it all, ``tasks.platform.middleware.BodyLimit`` refuses a body over the limit before anything
reads it.
"""

import gc
import os
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext, iscoroutinefunction, sync_to_async

# Private API (Django): only get_asgi_application() is documented, and it runs django.setup() again.
from django.core.handlers.asgi import ASGIHandler
from django.db import connections
from django.urls import Resolver404, get_resolver, resolve

from tasks.platform import tracing
from tasks.platform.middleware import BodyLimit

#: threads (each with its database connection) a web process keeps for sync views
REQUEST_THREADS = 8
#: sync requests after which what they loaded lazily is frozen too (see _freeze_long_lived_objects)
WARM_UP_REQUESTS = 100


class SyncChainHandler(ASGIHandler):
    """Django's ASGI handler with the middleware chain built in sync mode, called in one hop."""

    # Private API (Django): no setting builds the ASGI handler's middleware chain in sync mode.
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)
        # Private API (Django): the built chain is reachable only as the handler's _middleware_chain.
        self._middleware_chain = sync_to_async(self._middleware_chain, thread_sensitive=True)


class PlatformApplication:
    def __init__(self) -> None:
        self._sync_views = SyncChainHandler()
        self._async_views = ASGIHandler()
        # Used from the event loop only. Last in, first out: a quiet process keeps using the same
        # few threads and connections.
        self._idle_threads = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="request") for _ in range(REQUEST_THREADS)
        ]
        # Shared by every async request (its sync calls are short): no thread, no connection per stream.
        self._async_views_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="async-views")
        self._warm_up_left = WARM_UP_REQUESTS

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self._async_views(scope, receive, send)  # Django refuses it (lifespan)
        elif _is_async_view(scope):
            async with ThreadSensitiveContext(executor=self._async_views_thread):
                await self._async_views(scope, receive, send)
        elif not self._idle_threads:
            await _handle_on_own_thread(self._sync_views, scope, receive, send)
        else:
            thread = self._idle_threads.pop()
            try:
                async with ThreadSensitiveContext(executor=thread):
                    await self._sync_views(scope, receive, send)
            finally:
                self._idle_threads.append(thread)
            self._warm_up_left -= 1
            if self._warm_up_left == 0:
                _freeze_long_lived_objects()


async def _handle_on_own_thread(handler: ASGIHandler, scope, receive, send) -> None:
    async with ThreadSensitiveContext():
        try:
            await handler(scope, receive, send)
        finally:
            # The thread ends with the request: its connection must not outlive it.
            await sync_to_async(connections.close_all)()


def _is_async_view(scope) -> bool:
    path_info = scope["path"].removeprefix(scope.get("root_path", ""))
    try:
        return iscoroutinefunction(resolve(path_info).func)
    except Resolver404:
        return False


def _freeze_long_lived_objects() -> None:
    """Take every object alive now out of the garbage collector's full passes: Django, the URL
    resolvers, schemas, the broker and database clients live as long as the process. A full pass
    otherwise scans them all, pausing every request in flight; frozen, it scans only what requests
    left since."""
    gc.collect()
    gc.freeze()


os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup(set_prefix=False)
# Before the handlers below build their middleware chains: the Django instrumentation adds its own.
tracing.configure(tracing.WEB, web=True)
application = BodyLimit(PlatformApplication())
# Every view, the API and its schemas imported now, not by the first request: they are frozen below.
# Private API (Django): nothing documented loads the URLconf without resolving a path.
get_resolver().url_patterns  # noqa: B018 - the property loads the URLconf
_freeze_long_lived_objects()
