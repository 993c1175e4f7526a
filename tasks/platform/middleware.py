"""The request-body limit, enforced in front of Django (an ASGI wrapper) before anything reads the body.

Django's ASGI handler reads a whole body into a temporary file (on disk past
FILE_UPLOAD_MAX_MEMORY_SIZE) before any middleware or view runs, so a limit checked there comes
after the damage. ``BodyLimit`` answers 413 JSON (``code: body_too_large``) instead:

- at once, without reading, when the declared Content-Length is over the limit;
- as soon as a chunked body (no Content-Length) passes the limit, without reading further.

Otherwise it reads the body itself, at most the limit (in memory), and hands it to Django as one
message; Django then gets the client's disconnect from the server as usual. Requests without a
body pass straight through. The limit is DATA_UPLOAD_MAX_MEMORY_SIZE (API_MAX_BODY_BYTES), on
every path; Django's own check of that setting stays as a second line (its test client, for one,
never goes through this wrapper).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.http import JsonResponse

logger = logging.getLogger(__name__)


def body_too_large(limit: int) -> dict[str, str]:
    """The error body of a refused request body, the same from this wrapper and from the API."""
    return {"detail": f"request body exceeds {limit} bytes", "code": "body_too_large"}


def body_too_large_response() -> JsonResponse:
    return JsonResponse(body_too_large(settings.DATA_UPLOAD_MAX_MEMORY_SIZE), status=413)


class BodyLimit:
    """ASGI wrapper: an HTTP request body over DATA_UPLOAD_MAX_MEMORY_SIZE is refused before the app sees it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if scope["type"] != "http" or limit is None:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # lowercase names (ASGI); a repeated header keeps its last value
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await _answer(send, 400, {"detail": "malformed Content-Length header", "code": "malformed_request"})
                return
            if length > limit:
                _refused(scope, limit, read=0, declared=length)
                await _answer(send, 413, body_too_large(limit))
                return
            if length == 0:
                await self.app(scope, receive, send)
                return
        elif b"transfer-encoding" not in headers and scope.get("http_version", "1.1").startswith("1"):
            await self.app(scope, receive, send)  # HTTP/1 without either header: no body
            return

        chunks: list[bytes] = []
        read = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body ended: nobody to answer
            chunk = message.get("body", b"")
            read += len(chunk)
            if read > limit:
                _refused(scope, limit, read=read, declared=None)
                await _answer(send, 413, body_too_large(limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break

        body: dict[str, Any] | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> dict[str, Any]:
            nonlocal body
            if body is not None:
                message, body = body, None
                return message
            return await receive()  # after the body: the client's disconnect, as Django listens for it

        await self.app(scope, replay, send)


def _refused(scope, limit: int, *, read: int, declared: int | None) -> None:
    logger.info(
        "request body refused (over %d bytes): %s %s, Content-Length %s, %d bytes read",
        limit,
        scope["method"],
        scope["path"],
        "none" if declared is None else declared,
        read,
    )


async def _answer(send, status: int, data: dict[str, str]) -> None:
    # The connection is closed after the answer: the rest of the body is never read.
    content = json.dumps(data).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
