"""Request-size limit of the HTTP API: a body over API_MAX_BODY_BYTES answers 413 JSON, unread."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse

API_PREFIX = "/api/"


def body_too_large_response(limit: int | None = None) -> JsonResponse:
    limit = settings.API_MAX_BODY_BYTES if limit is None else limit
    return JsonResponse({"detail": f"request body exceeds {limit} bytes", "code": "body_too_large"}, status=413)


class ApiBodyLimitMiddleware:
    """Reject an API request whose body is too large before any view (or parser) sees it.

    The declared Content-Length is checked first, so an honest oversized request is refused
    without reading it; the body is then read under Django's own limit, which also catches a
    chunked body (no Content-Length) or one longer than declared.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):
        if self.is_async:
            return self._acall(request)
        return self._check(request) or self.get_response(request)

    async def _acall(self, request: HttpRequest):
        return self._check(request) or await self.get_response(request)

    @staticmethod
    def _check(request: HttpRequest) -> HttpResponse | None:
        if not request.path_info.startswith(API_PREFIX):
            return None
        limit = settings.API_MAX_BODY_BYTES
        declared = request.META.get("CONTENT_LENGTH") or "0"
        try:
            length = int(declared)
        except ValueError:
            return JsonResponse(
                {"detail": f"malformed Content-Length header {declared!r}", "code": "malformed_request"}, status=400
            )
        if length > limit:
            return body_too_large_response(limit)
        if request.method in ("POST", "PUT", "PATCH"):
            try:
                body = request.body  # cached on the request for the view
            except RequestDataTooBig:
                return body_too_large_response(limit)
            if len(body) > limit:
                return body_too_large_response(limit)
        return None
