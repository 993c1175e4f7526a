"""Pure translations between Django's task API and the platform's ledger: priorities, states,
arguments, errors. No database and no broker here, so each is tested in-process."""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Optional, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    create_model,
    model_serializer,
)

from tasks.platform.django_tasks.compat import TASK_MAX_PRIORITY, TASK_MIN_PRIORITY, TaskResultStatus, normalize_json
from tasks.platform.models import Job
from tasks.platform.queues import PRIORITY_DEFAULT, PRIORITY_HIGHEST, PRIORITY_LOWEST

# --- priority: Django's -100 (least urgent) … 0 (default) … 100 (most urgent) onto the platform's
# 9 (least urgent) … 5 (default) … 0 (most urgent). Every positive priority goes before the
# default and every negative one after it, so the order Django promises between tasks holds.
_URGENT_STEPS = PRIORITY_DEFAULT - PRIORITY_HIGHEST  # 5 steps above the default
_LAZY_STEPS = PRIORITY_LOWEST - PRIORITY_DEFAULT  # 4 steps below it


def platform_priority(priority: int) -> int:
    """The platform's priority step for a Django priority (-100…100)."""
    if priority > 0:
        return PRIORITY_DEFAULT - math.ceil(priority * _URGENT_STEPS / TASK_MAX_PRIORITY)
    if priority < 0:
        return PRIORITY_DEFAULT + math.ceil(priority * _LAZY_STEPS / TASK_MIN_PRIORITY)
    return PRIORITY_DEFAULT


def django_priority(step: int, declared: int) -> int:
    """The Django priority a job of ``step`` shows: the task's own when it maps to that step, else
    the most urgent Django priority of the step (a step holds a range of them)."""
    if platform_priority(declared) == step:
        return declared
    if step < PRIORITY_DEFAULT:
        return (PRIORITY_DEFAULT - step) * TASK_MAX_PRIORITY // _URGENT_STEPS
    if step > PRIORITY_DEFAULT:
        return (step - PRIORITY_DEFAULT - 1) * TASK_MIN_PRIORITY // _LAZY_STEPS - 1
    return 0


# --- states: Django knows ready, running, failed and successful. A job waiting for anything
# (its publish, a delay, a retry's backoff, a pause, a workflow step) is ready to run (again).
_STATUSES = {
    Job.State.STARTED: TaskResultStatus.RUNNING,
    Job.State.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    Job.State.FAILED: TaskResultStatus.FAILED,
    Job.State.DEAD: TaskResultStatus.FAILED,
    # Django has no cancelled status: a cancelled job was "unable to start", which FAILED means.
    Job.State.CANCELLED: TaskResultStatus.FAILED,
}


def result_status(state: str) -> TaskResultStatus:
    return _STATUSES.get(state, TaskResultStatus.READY)


# --- arguments
def json_round_trip(value: Any) -> Any:
    """``value`` as Django normalizes task arguments and return values (its own TypeError or
    ValueError for anything else), refused also when JSON would not give it back unchanged: keys
    that are not strings, NaN and infinities (the ledger's JSON cannot hold them either)."""
    normalized = normalize_json(value)
    try:
        again = json.loads(json.dumps(normalized, allow_nan=False))
    except ValueError as exc:
        raise ValueError(f"Unsupported value: {exc}") from None
    if again != normalized:
        raise TypeError("Unsupported value: only strings can be keys of a JSON object")
    return normalized


def parameters(func: Callable, *, takes_context: bool) -> list[inspect.Parameter]:
    """The parameters a caller passes: the function's, without the context Django gives it."""
    found = list(signature(func).parameters.values())
    return found[1:] if takes_context else found


def signature(func: Callable) -> inspect.Signature:
    try:
        return inspect.signature(func, eval_str=True)
    except (NameError, TypeError, SyntaxError):  # an annotation that cannot be evaluated here
        return inspect.signature(func)


def bind(params: list[inspect.Parameter], args: list, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The payload of a call: each passed argument under its parameter's name (``*args`` as a list,
    ``**kwargs`` as an object). A call the function would refuse raises Python's TypeError."""
    bound = inspect.Signature(params).bind(*args, **kwargs).arguments
    return {name: list(value) if isinstance(value, tuple) else value for name, value in bound.items()}


def call_arguments(params: list[inspect.Parameter], payload: BaseModel) -> tuple[list, dict[str, Any]]:
    """The positional and keyword arguments that call the function with a validated payload: the
    leading positional parameters positionally while each was passed, the rest by name."""
    args: list = []
    kwargs: dict[str, Any] = {}
    passed = payload.model_fields_set
    positional = True
    for param in params:
        if param.name not in passed:
            positional = positional and param.kind not in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
            continue
        value = getattr(payload, param.name)
        if param.kind is param.VAR_POSITIONAL:
            args.extend(value)
        elif param.kind is param.VAR_KEYWORD:
            kwargs.update(value)
        elif param.kind is param.POSITIONAL_ONLY or (positional and param.kind is param.POSITIONAL_OR_KEYWORD):
            args.append(value)
        else:
            kwargs[param.name] = value
    return args, kwargs


def _json_only(value: Any) -> Any:
    try:
        json_round_trip(value)
    except TypeError as exc:  # a validator's refusal must be a ValueError to become a field's error
        raise ValueError(str(exc)) from None
    return value


#: any JSON value JSON gives back unchanged (no NaN, no infinity): a parameter of any other
#: annotation, or of none
JsonValue = Annotated[object, AfterValidator(_json_only)]
#: annotations the schema made from a signature checks (strictly: what JSON gives a worker)
_JSON_SCALARS: dict[Any, Any] = {
    str: str,
    int: int,
    bool: bool,
    float: Annotated[Union[int, float], AfterValidator(_json_only)],  # noqa: UP007 - a runtime Union
}
#: parameter names a pydantic model cannot take as fields
_RESERVED = re.compile(r"^(_|model_)")


class SignatureArguments(BaseModel):
    """Base of the payload schema made from a task function's signature: a job's payload holds
    only the arguments its caller passed, so the function's own defaults apply when it runs."""

    model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)

    @model_serializer(mode="wrap")
    def _passed_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {name: value for name, value in handler(self).items() if name in self.model_fields_set}


def signature_schema(name: str, params: list[inspect.Parameter]) -> type[BaseModel]:
    """A payload schema from a signature: one field per parameter, required when it has no default;
    an unknown or missing argument is refused (at enqueue, in admin's schedule form, by the worker).
    Raises ValueError for a parameter name a schema field cannot have."""
    fields: dict[str, Any] = {}
    for param in params:
        if _RESERVED.match(param.name):
            raise ValueError(f"parameter {param.name!r}: names starting with '_' or 'model_' cannot be arguments")
        annotation = _field_type(param.annotation)
        if param.kind is param.VAR_POSITIONAL:
            fields[param.name] = (list[annotation], Field(default_factory=list))
        elif param.kind is param.VAR_KEYWORD:
            fields[param.name] = (dict[str, annotation], Field(default_factory=dict))
        elif param.default is param.empty:
            fields[param.name] = (annotation, ...)
        else:
            fields[param.name] = (annotation, _json_default(param.default))
    return create_model(f"{name} arguments", __base__=SignatureArguments, **fields)


def _field_type(annotation: Any) -> Any:
    if annotation is list or annotation is dict:
        return list[JsonValue] if annotation is list else dict[str, JsonValue]
    if annotation in _JSON_SCALARS:
        return _JSON_SCALARS[annotation]
    optional = {str | None: str, int | None: int, bool | None: bool, float | None: float}
    if annotation in optional:
        return Optional[_JSON_SCALARS[optional[annotation]]]  # noqa: UP045 - of a runtime type
    return JsonValue


def _json_default(default: Any) -> Any:
    """A default as the schema shows it; one JSON cannot hold is left to the function (the payload
    then omits the argument, as the caller did), so the schema shows none."""
    try:
        return json_round_trip(default)
    except (TypeError, ValueError):
        return None


def payload_schema_fits(schema: type[BaseModel], params: list[inspect.Parameter]) -> str | None:
    """Why a declared pydantic schema cannot carry the function's arguments, or None when it can:
    each field must be a parameter the function takes by name (unless it takes ``**kwargs``), and
    each required parameter a field."""
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
    fields = set(schema.model_fields)
    if not takes_any and (extra := sorted(fields - named)):
        return f"its payload schema has fields the function does not take: {', '.join(extra)}"
    required = {p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    if missing := sorted(required - fields):
        return f"its payload schema lacks the function's required parameters: {', '.join(missing)}"
    if any(p.kind is p.POSITIONAL_ONLY for p in params):
        return "a task with a payload schema takes its arguments by name (no positional-only parameters)"
    return None


# --- errors
_CLASS_PATH = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*): ")


def exception_path(exc_type: type[BaseException]) -> str:
    """How a job's error names its exception: the class's import path (``builtins.`` left off)."""
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"


def error_class_path(error: str) -> str:
    """The import path of the exception a job's error text names, for Django's TaskError; an error
    that names none (a lost worker, a time limit, a cancel) is a plain Exception."""
    match = _CLASS_PATH.match(error)
    if match is None:
        return "builtins.Exception"
    path = match.group(1)
    return path if "." in path else f"builtins.{path}"
