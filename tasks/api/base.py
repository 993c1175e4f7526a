"""The HTTP API (django-ninja): the NinjaAPI object, its JSON parser, error schemas and handlers.
Endpoints live in one module per domain (tasks.api.jobs, ...). OpenAPI at /api/openapi.json.

Every error answers a JSON body ``{"detail": ..., "code": ...}`` (plus details such as field
errors or a batch item's ``index``), and nothing is enqueued.
"""

import json
from typing import Any

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest
from ninja import Field, NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser

from tasks.auth import API_AUTH
from tasks.middleware import body_too_large_response
from tasks.selectors.queues import BrokerUnavailable
from tasks.services.jobs import EnqueueError, contains_nul
from tasks.services.recovery import ActionRefused


class MalformedJSON(ValueError):
    pass


class StrictJSONParser(Parser):
    """JSON bodies only, without the NaN/Infinity extensions Python's json module accepts."""

    def parse_body(self, request: HttpRequest) -> Any:
        def reject_constant(name: str) -> None:
            raise MalformedJSON(f"{name} is not valid JSON")

        body = request.body
        try:
            # Decoded as json.loads decodes bytes (UTF-8, or UTF-16/32 when it detects them).
            text = body.decode(json.detect_encoding(body), "surrogatepass")
            data = json.loads(text, parse_constant=reject_constant)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise MalformedJSON(str(exc)) from exc
        # JSON can hold a NUL only escaped: a body without that text has none, and needs no walk.
        if "\\u0000" in text and contains_nul(data):
            # Valid JSON, but no text column (nor PostgreSQL's jsonb) can hold it: refused here,
            # not as a database error in the middle of an enqueue.
            raise MalformedJSON("strings must not contain NUL (\\u0000)")
        return data


# The interactive docs and schema are for staff (admin session); API clients use the endpoints.
api = NinjaAPI(
    title="Task platform",
    version="1",
    auth=API_AUTH,
    urls_namespace="api",
    docs_decorator=staff_member_required,
    parser=StrictJSONParser(),
)


# --- schemas ---------------------------------------------------------------------------------


# --- error schemas ---------------------------------------------------------------------------


class Error(Schema):
    detail: str
    code: str


class FieldError(Schema):
    field: str
    message: str
    index: int | None = Field(None, description="The batch item, for POST /api/jobs/batch.")


class Unprocessable(Error):
    """A request that fails the schema (code invalid_request) or that the service refuses."""

    errors: list[FieldError] | None = Field(None, description="Field errors, of the request or of the payload.")
    index: int | None = Field(None, description="The (first) bad item of a batch.")
    tasks: list[str] | None = Field(None, description="The public tasks, when the task is unknown.")
    queues: list[str] | None = Field(None, description="The queues, when the queue is unknown.")


# --- errors ----------------------------------------------------------------------------------


class IdempotencyKeyInUse(Exception):
    """The key is held by another owner's job, which must not be revealed."""

    def __init__(self, index: int | None = None) -> None:
        super().__init__("idempotency_key is already in use for this task")
        self.index = index


def _error(request: HttpRequest, status: int, detail: str, code: str, **extra: Any):
    return api.create_response(request, {"detail": detail, "code": code, **extra}, status=status)


@api.exception_handler(EnqueueError)
def _enqueue_error(request: HttpRequest, exc: EnqueueError):
    return _error(request, 422, str(exc), exc.code, **exc.details)


@api.exception_handler(IdempotencyKeyInUse)
def _idempotency_key_in_use(request: HttpRequest, exc: IdempotencyKeyInUse):
    extra = {} if exc.index is None else {"index": exc.index}
    return _error(request, 409, str(exc), "idempotency_key_in_use", **extra)


@api.exception_handler(ValidationError)
def _invalid_request(request: HttpRequest, exc: ValidationError):
    if exc.errors and all(tuple(error.get("loc", ()))[:1] == ("path",) for error in exc.errors):
        # /api/jobs/<not a uuid> names no resource that could exist: not found, as for a missing id.
        return _error(request, 404, "not found", "not_found")
    errors = [_field_error(error) for error in exc.errors]
    indexes = [error["index"] for error in errors if "index" in error]
    extra = {"index": min(indexes)} if indexes else {}
    fields = ", ".join(dict.fromkeys(error["field"] for error in errors))
    return _error(request, 422, f"invalid request: {fields}", "invalid_request", errors=errors, **extra)


def _field_error(error: dict[str, Any]) -> dict[str, Any]:
    """A ninja/pydantic error as {"field", "message"} (and "index" for a batch item)."""
    loc = list(error.get("loc", ()))
    source = loc.pop(0) if loc else ""
    if source == "body" and loc and loc[0] == "body":
        loc.pop(0)  # the view's parameter name
    field = ".".join(map(str, loc)) or source
    # Not pydantic's "a valid dictionary or instance of <model>": the model's name means nothing here.
    message = "must be a JSON object" if error.get("type") == "model_type" else error.get("msg", "invalid")
    out: dict[str, Any] = {"field": field, "message": message}
    if len(loc) >= 2 and loc[0] == "jobs" and isinstance(loc[1], int):
        out["index"] = loc[1]
    return out


@api.exception_handler(HttpError)
def _http_error(request: HttpRequest, exc: HttpError):
    if isinstance(exc, AuthenticationError) or (exc.status_code == 403 and not _has_session(request)):
        # Session auth checks CSRF before it looks for a session, so a POST with no (or a bad)
        # bearer token would read "CSRF check Failed": without a session the answer is 401.
        return _error(request, 401, "authentication required: a bearer token or a session", "unauthenticated")
    if isinstance(exc.__cause__, MalformedJSON):
        return _error(request, 400, f"malformed JSON body: {exc.__cause__}", "malformed_json")
    if isinstance(exc.__cause__, RequestDataTooBig):
        return body_too_large_response()
    codes = {403: "forbidden", 404: "not_found", 429: "throttled"}
    return _error(request, exc.status_code, str(exc), codes.get(exc.status_code, f"http_{exc.status_code}"))


def _has_session(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated)


@api.exception_handler(RequestDataTooBig)
def _body_too_large(request: HttpRequest, exc: RequestDataTooBig):
    # Normally answered by ApiBodyLimitMiddleware before the view; this covers a direct read.
    return body_too_large_response()


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404):
    return _error(request, 404, "not found", "not_found")


@api.exception_handler(BrokerUnavailable)
def _broker_unavailable(request: HttpRequest, exc: BrokerUnavailable):
    return _error(request, 503, str(exc), "redis_unavailable")


@api.exception_handler(ActionRefused)
def _action_refused(request: HttpRequest, exc: ActionRefused):
    return _error(request, 409, str(exc), "conflict")
