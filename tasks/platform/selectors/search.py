"""The job search: one filter, read by the API's job list, the admin's job list and the bulk actions.

A ``JobSearch`` is validated once, wherever it comes from (a query string, a JSON body, the admin's
list filters, a bulk job's payload), so every door refuses the same bad filters with the same words.

What serves each filter on PostgreSQL (migration 0022_job_search):

- ``payload``: containment (``payload @> '{"order_id": 42}'``), by the GIN ``jsonb_path_ops`` index
  ``job_payload_contains``;
- ``error``: a case-insensitive substring (``UPPER(error) LIKE UPPER('%text%')``), by the ``pg_trgm``
  GIN index ``job_error_trigram``; trigrams need three characters, so shorter text is refused;
- id, task, state, queue, owner and the time ranges: the ledger's b-tree indexes (state, owner, task
  with created_at).

SQLite has neither index nor a containment operator: there the payload filter becomes one equality
per key path (``JSON_EXTRACT``) and the error filter a ``LIKE``, both a scan of the table. The
meaning is the same for what the filter accepts: strings and numbers, and objects of them (one level
down) followed key by key. Arrays, true, false and null are refused everywhere (by the schema, so
the API's OpenAPI schema states it): SQLite's JSON_EXTRACT cannot tell true from 1 or a null from a
missing key, and has nothing like containment in an array.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import F, Q, QuerySet
from django.db.models.fields.json import KeyTransform
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from tasks.platform.json_types import NO_NUL
from tasks.platform.models import Job
from tasks.platform.models.jobs import JobState
from tasks.platform.queues import QueueName
from tasks.platform.selectors.jobs import jobs_visible_to

#: the shortest error text searched for: the trigram index cannot serve fewer characters
ERROR_MIN_LENGTH = 3
#: what a task's name is made of (dotted words); a NUL could not even be compared with the column
TASK_NAME = r"^[A-Za-z0-9_.:-]+$"
#: largest payload filter, as JSON
PAYLOAD_MAX_BYTES = 2048

#: a payload key or text value: a NUL has no place in jsonb
_Text = Annotated[str, StringConstraints(pattern=NO_NUL)]
#: a value searched for: a string or a number (JSON types only: no true for 1, no "1" for 1)
_Value = _Text | StrictInt | StrictFloat
#: the error text searched for
_ErrorText = Annotated[str, StringConstraints(min_length=ERROR_MIN_LENGTH, max_length=200, pattern=NO_NUL)]
#: the payload filter: values, or objects of values (one level down), never empty
_PayloadFilter = Annotated[
    dict[_Text, _Value | Annotated[dict[_Text, _Value], Field(min_length=1)]], Field(min_length=1)
]


class JobSearch(BaseModel):
    """What a search asks for; every field left out matches every job. Frozen, and dumped to JSON as
    the payload of a bulk job (``as_payload``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: UUID | None = Field(None, description="Only this job.")
    task: Annotated[str, StringConstraints(max_length=200, pattern=TASK_NAME)] | None = Field(
        None, description="Only jobs of this task."
    )
    state: JobState | None = Field(None, description="Only jobs in this state.")
    queue: QueueName | None = Field(None, description="Only jobs of this queue.")
    owner: Annotated[str, StringConstraints(min_length=1, max_length=150, pattern=NO_NUL)] | None = Field(
        None, description="Only jobs of this username."
    )
    created_after: datetime | None = Field(None, description="Only jobs created at or after this time.")
    created_before: datetime | None = Field(None, description="Only jobs created before this time.")
    finished_after: datetime | None = Field(None, description="Only jobs finished at or after this time.")
    finished_before: datetime | None = Field(None, description="Only jobs finished before this time.")
    payload: _PayloadFilter | None = Field(
        None,
        description='Only jobs whose payload contains this JSON object, e.g. {"order_id": 42}: every key '
        "given, with that value. Values are strings and numbers, or objects of them (one level down, "
        'e.g. {"address": {"city": "Oslo"}}); arrays, true, false and null are refused. At most '
        f"{PAYLOAD_MAX_BYTES} bytes as JSON. In a query string: the object as JSON text.",
    )
    error: _ErrorText | None = Field(
        None,
        description=f"Only jobs whose error contains this text, ignoring case (at least {ERROR_MIN_LENGTH} "
        "characters).",
    )

    @field_validator("created_after", "created_before", "finished_after", "finished_before", mode="before")
    @classmethod
    def _iso_8601(cls, value: Any) -> Any:
        """A date-time as the schema says (ISO 8601 with its offset; not pydantic's other readings,
        such as 0.5 for a Unix time), in UTC: the database takes any instant, not any offset."""
        if value is None:
            return None
        try:
            moment = datetime.fromisoformat(value) if isinstance(value, str) else value
            if not isinstance(moment, datetime) or moment.utcoffset() is None:
                raise ValueError
            return moment.astimezone(UTC)
        except (ValueError, OverflowError):
            raise ValueError("must be an ISO 8601 date-time with its offset, e.g. 2026-01-31T12:00:00Z") from None

    @field_validator("payload", mode="wrap")
    @classmethod
    def _payload_searchable(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> dict[str, Any] | None:
        """JSON text (a query string's) read as JSON; then the declared types, refused in one sentence
        naming the key rather than once per type of the union."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as exc:
                raise ValueError(f'must be a JSON object, e.g. {{"order_id": 42}} ({exc})') from None
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ValueError('must be a JSON object, e.g. {"order_id": 42}')
        if not value:
            raise ValueError("must name at least one key")
        try:
            value = handler(value)
        except ValidationError as exc:
            raise ValueError(_payload_refusal(value, exc.errors()[0])) from None
        _check_finite(value, path="payload")
        if len(json.dumps(value)) > PAYLOAD_MAX_BYTES:
            raise ValueError(f"must be at most {PAYLOAD_MAX_BYTES} bytes as JSON")
        return value

    def as_payload(self) -> dict[str, Any]:
        """The filters given, as JSON types (a bulk job's payload keeps them so)."""
        return self.model_dump(mode="json", exclude_none=True)


def _payload_refusal(value: dict[str, Any], error: dict[str, Any]) -> str:
    """Why the payload filter was refused, at the key the first error is about."""
    path, current = ["payload"], value
    for part in error["loc"]:  # keys, and the union members pydantic tried (not keys)
        if isinstance(current, dict) and part in current:
            path.append(str(part))
            current = current[part]
    where = ".".join(path)
    if error["type"] == "string_pattern_mismatch":
        return f"{where}: must not contain NUL"
    if isinstance(current, dict) and not current:
        return f"{where}: an empty object matches nothing useful; give a key"
    return f"{where}: only strings, numbers and objects of them (one level down) can be searched for"


def _check_finite(value: dict[str, Any], *, path: str) -> None:
    """What the types leave: a number JSON can carry (a Python caller could pass NaN)."""
    for key, item in value.items():
        if isinstance(item, dict):
            _check_finite(item, path=f"{path}.{key}")
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"{path}.{key}: must be a finite number")


def jobs_search(search: JobSearch, *, jobs: QuerySet[Job] | None = None) -> QuerySet[Job]:
    """``jobs`` (every job when None) narrowed by ``search``, in no particular order: the caller orders
    (newest first for a list, by id for the bulk walk)."""
    jobs = Job.objects.all() if jobs is None else jobs
    if search.id is not None:
        jobs = jobs.filter(pk=search.id)
    if search.task is not None:
        jobs = jobs.filter(task_name=search.task)
    if search.state is not None:
        jobs = jobs.filter(state=search.state)
    if search.queue is not None:
        jobs = jobs.filter(queue=search.queue)
    if search.owner is not None:
        # A subquery, not a join: an unknown username matches nothing.
        owner_ids = get_user_model().objects.filter(username=search.owner).values("pk")
        jobs = jobs.filter(owner__in=owner_ids)
    if search.created_after is not None:
        jobs = jobs.filter(created_at__gte=search.created_after)
    if search.created_before is not None:
        jobs = jobs.filter(created_at__lt=search.created_before)
    if search.finished_after is not None:
        jobs = jobs.filter(finished_at__gte=search.finished_after)
    if search.finished_before is not None:
        jobs = jobs.filter(finished_at__lt=search.finished_before)
    if search.payload is not None:
        jobs = jobs.filter(_payload_contains(search.payload))
    if search.error is not None:
        jobs = jobs.filter(error__icontains=search.error)
    return jobs


def _payload_contains(value: dict[str, Any]) -> Q:
    """Containment where the database has it (PostgreSQL's ``@>``, served by the GIN index),
    otherwise one equality per key path (SQLite's JSON_EXTRACT, a scan)."""
    if connection.features.supports_json_field_contains:
        return Q(payload__contains=value)
    # Lookups built from expressions, not keyword paths, so that a key such as "contains" or "a__b"
    # stays a key. The value goes as JSON text, as JSONField would prepare it for a keyword lookup
    # (an unresolved key transform cannot tell the lookup its field).
    equalities = [
        transform.get_lookup("exact")(transform, json.dumps(item))
        for transform, item in _key_paths(value, F("payload"))
    ]
    return Q(*equalities)


def _key_paths(value: dict[str, Any], parent: Any) -> list[tuple[KeyTransform, Any]]:
    paths: list[tuple[KeyTransform, Any]] = []
    for key, item in value.items():
        transform = KeyTransform(key, parent)
        if isinstance(item, dict):
            paths.extend(_key_paths(item, transform))
        else:
            paths.append((transform, item))
    return paths


def jobs_search_visible(*, user, search: JobSearch) -> QuerySet[Job]:
    """The jobs ``user`` may see (tasks.platform.selectors.jobs) that ``search`` matches, newest first
    (id breaks ties, so pages are stable)."""
    return jobs_search(search, jobs=jobs_visible_to(user)).order_by("-created_at", "-id")


def jobs_search_count(search: JobSearch, *, up_to: int) -> int:
    """How many jobs ``search`` matches, counted up to ``up_to`` (the count of a bulk action, which
    is refused past its cap: counting further would only read rows for nothing)."""
    return jobs_search(search).order_by()[:up_to].count()
