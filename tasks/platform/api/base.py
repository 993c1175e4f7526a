"""The HTTP API (django-ninja): the NinjaAPI object, its JSON parser, error schemas and handlers.
Endpoints live in one module per domain (tasks.platform.api.jobs, ...). OpenAPI at /api/openapi.json.

Every error answers a JSON body ``{"detail": ..., "code": ...}`` (plus details such as field
errors or a batch item's ``index``), and nothing is enqueued.
"""

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, JsonResponse
from ninja import Field, NinjaAPI, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser

from tasks.platform.auth import API_AUTH
from tasks.platform.middleware import body_too_large_response
from tasks.platform.registry import LEDGER_TASKS, PUBLIC_TASKS
from tasks.platform.selectors.queues import BrokerUnavailable
from tasks.platform.services.allowances import Allowance, EnqueueRefused, allowance_for
from tasks.platform.services.bulk import BulkRefused
from tasks.platform.services.jobs import EnqueueError, contains_nul
from tasks.platform.services.recovery import ActionRefused


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


def for_api_users(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The schema and the docs for anyone the API authenticates (a bearer token or a session), so
    a token holder can generate a client; anonymous gets 401 JSON, or the sign-in page for the docs."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])  # reads only (and the session's CSRF check passes)
        if not any(authenticate(request) for authenticate in API_AUTH):
            # ninja names its docs page's URL "openapi-view", its schema's "openapi-json".
            if request.resolver_match and request.resolver_match.url_name == "openapi-view":
                return redirect_to_login(request.get_full_path())
            body = {"detail": "authentication required: a bearer token or a session", "code": "unauthenticated"}
            return JsonResponse(body, status=401)
        return view(request, *args, **kwargs)

    return wrapped


api = NinjaAPI(
    title="Task platform",
    version="1",
    auth=API_AUTH,
    urls_namespace="api",
    docs_decorator=for_api_users,
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


class Forbidden(Exception):
    """The caller is known but may not do this (403)."""

    def __init__(self, detail: str, *, code: str = "forbidden") -> None:
        super().__init__(detail)
        self.code = code


def request_allowance(request: HttpRequest) -> Allowance:
    """What the caller may enqueue: their user's allowance, or their token's (tasks.platform.auth)."""
    return allowance_for(user=request.user, token=getattr(request, "api_token", None))


def _error(request: HttpRequest, status: int, detail: str, code: str, **extra: Any):
    return api.create_response(request, {"detail": detail, "code": code, **extra}, status=status)


@api.exception_handler(EnqueueError)
def _enqueue_error(request: HttpRequest, exc: EnqueueError):
    return _error(request, 422, str(exc), exc.code, **exc.details)


@api.exception_handler(EnqueueRefused)
def _enqueue_refused(request: HttpRequest, exc: EnqueueRefused):
    extra = {} if exc.index is None else {"index": exc.index}
    response = _error(request, exc.status, str(exc), exc.code, **extra)
    if exc.retry_after is not None:
        response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(BulkRefused)
def _bulk_refused(request: HttpRequest, exc: BulkRefused):
    return _error(request, exc.status, str(exc), exc.code)


@api.exception_handler(Forbidden)
def _forbidden(request: HttpRequest, exc: Forbidden):
    return _error(request, 403, str(exc), exc.code)


@api.exception_handler(ValidationError)
def _invalid_request(request: HttpRequest, exc: ValidationError):
    if exc.errors and all(tuple(error.get("loc", ()))[:1] == ("path",) for error in exc.errors):
        # /api/jobs/<not a uuid> names no resource that could exist: not found, as for a missing id.
        return _error(request, 404, "not found", "not_found")
    errors = [_field_error(error) for error in exc.errors]
    indexes = [error["index"] for error in errors if "index" in error]
    extra = {"index": min(indexes)} if indexes else {}
    unknown = [error for error in exc.errors if error.get("type") == "union_tag_invalid"]
    if unknown:
        task = (unknown[0].get("ctx") or {}).get("tag", "")
        return _error(request, 422, f"unknown task {task!r}", "unknown_task", tasks=sorted(PUBLIC_TASKS), **extra)
    fields = ", ".join(dict.fromkeys(error["field"] for error in errors))
    # A job's payload comes in a body; the job list's ``payload`` filter is a query parameter.
    from_body = all(tuple(error.get("loc", ()))[:1] == ("body",) for error in exc.errors)
    if from_body and all(_in_payload(error["field"]) for error in errors):
        return _error(request, 422, f"invalid payload: {fields}", "invalid_payload", errors=errors, **extra)
    return _error(request, 422, f"invalid request: {fields}", "invalid_request", errors=errors, **extra)


def _in_payload(field: str) -> bool:
    """Whether a field error is inside a job's payload (``payload.x`` or ``jobs.3.payload.x``)."""
    parts = field.split(".")
    return parts[0] == "payload" or (len(parts) > 2 and parts[0] == "jobs" and parts[2] == "payload")


def _field_error(error: dict[str, Any]) -> dict[str, Any]:
    """A ninja/pydantic error as {"field", "message"} (and "index" for a batch item)."""
    loc = list(error.get("loc", ()))
    source = loc.pop(0) if loc else ""
    if source == "body" and loc and loc[0] == "body":
        loc.pop(0)  # the view's parameter name
    # A job's body is a union told apart by its task: pydantic names the task in the location.
    loc = [part for part in loc if not (isinstance(part, str) and part in LEDGER_TASKS)]
    kind = error.get("type")
    if kind == "union_tag_not_found":
        loc, message = [*loc, "task"], "Field required"
    elif kind in ("model_type", "model_attributes_type"):
        # Not pydantic's "a valid dictionary or instance of <model>": the model's name means nothing here.
        message = "must be a JSON object"
    else:
        message = error.get("msg", "invalid")
    field = ".".join(map(str, loc)) or source
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
    # Over HTTP tasks.platform.middleware.BodyLimit answers before Django reads the body; this is the second line.
    return body_too_large_response()


@api.exception_handler(Http404)
def _not_found(request: HttpRequest, exc: Http404):
    return _error(request, 404, "not found", "not_found")


@api.exception_handler(BrokerUnavailable)
def _broker_unavailable(request: HttpRequest, exc: BrokerUnavailable):
    return _error(request, 503, str(exc), "redis_unavailable")


#: how soon a client may ask again when the database did not answer (a restart or a failover)
DATABASE_RETRY_AFTER_SECONDS = 5


@api.exception_handler(OperationalError)
@api.exception_handler(InterfaceError)
def _database_unavailable(request: HttpRequest, exc: OperationalError | InterfaceError):
    """The database did not answer (a restart, a failover, a dropped connection): nothing was done,
    and asking again later is safe (with an idempotency key, an enqueue is never doubled)."""
    response = _error(request, 503, "the database is unavailable: try again shortly", "database_unavailable")
    response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response


@api.exception_handler(ActionRefused)
def _action_refused(request: HttpRequest, exc: ActionRefused):
    return _error(request, 409, str(exc), "conflict")
