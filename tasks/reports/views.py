"""Views of reports: the PDF download, for its owner or staff (bearer token or session)."""

from collections.abc import AsyncIterator
from typing import IO
from uuid import UUID

from asgiref.sync import sync_to_async
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

from tasks.platform.auth import BearerToken
from tasks.reports.selectors import report_get_visible

_bearer = BearerToken()


def _api_user(request: HttpRequest):
    """The API's rules (as tasks.platform.live): a valid bearer token, else a logged-in session; None for neither."""
    user = _bearer(request)
    if user is not None:
        return user
    return request.user if request.user.is_authenticated else None


def _error(status: int, detail: str, code: str) -> JsonResponse:
    return JsonResponse({"detail": detail, "code": code}, status=status)


@csrf_exempt  # GET only and changes nothing; a bearer client has no CSRF token
@require_GET
def report_download(request: HttpRequest, report_id: UUID) -> HttpResponse:
    """The report's PDF as an attachment: 401 without credentials, 404 for a missing report or
    another user's, 409 while it is not built yet."""
    user = _api_user(request)
    if user is None:
        return _error(401, "authentication required: a bearer token or a session", "unauthenticated")
    try:
        report = report_get_visible(user=user, report_id=report_id)
    except Http404:
        return _error(404, "not found", "not_found")
    if not report.ready:
        return _error(409, "the report is not built yet: follow its job", "not_ready")
    try:
        pdf = report.file.open("rb")
    except FileNotFoundError:
        return _error(404, "the report's file is gone", "not_found")
    filename = f"sales-report-{report.date_from.isoformat()}-to-{report.date_to.isoformat()}.pdf"
    response = FileResponse(pdf, as_attachment=True, filename=filename, content_type="application/pdf")
    # The web process is ASGI: an async iterator streams the file in blocks, where a sync one
    # would be read whole into memory first (with a warning). The file is still closed with the
    # response, and Content-Length and the headers stay FileResponse's.
    response.streaming_content = _blocks(pdf, response.block_size)
    return response


async def _blocks(file: IO[bytes], size: int) -> AsyncIterator[bytes]:
    while block := await sync_to_async(file.read, thread_sensitive=False)(size):
        yield block


urlpatterns = [
    path("reports/<uuid:report_id>/download", report_download, name="report_download"),
]
