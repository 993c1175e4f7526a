"""Property tests (hypothesis) for every ledger task's payload schema.

Whatever JSON arrives, enqueue validation either accepts it or refuses it with InvalidPayload,
never another exception; what it accepts, the worker's own validation of the stored payload
accepts too, unchanged; and through the HTTP API any JSON body answers a JSON 2xx or 4xx, never a
5xx. Bounded for CI (PROPERTY_EXAMPLES, 200 by default); ``make fuzz`` runs more.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic_core import PydanticSerializationError, to_jsonable_python

from tasks.platform.registry import LEDGER_TASKS, PUBLIC_TASKS
from tasks.platform.services.jobs import InvalidPayload, job_payload_validate
from tests.fixtures import bearer

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "200"))
PROPERTIES = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
TASK_NAMES = sorted(LEDGER_TASKS)

# Any JSON value Python's json module can produce, and then some: huge integers, NaN and infinity
# (which a JSON body cannot carry, but a service or a beat schedule's kwargs could).
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**20])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    # "\\u0000" is no NUL, though its JSON holds the text of one's escape (enqueue's quick check)
    | st.sampled_from(["", "0", "1", "true", "null", "NaN", "2026-01-01", "\x00", "\\u0000", "\ud7ff" * 3])
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5), max_leaves=20
)


def field_values(annotation: Any) -> st.SearchStrategy[Any]:
    """Arbitrary JSON, or a value of the field's own type (as JSON), so valid payloads come up too."""
    try:
        typed = st.from_type(annotation)
    except (TypeError, ValueError):  # a type hypothesis cannot build
        return json_values
    return json_values | typed_json(typed)


@st.composite
def typed_json(draw, typed: st.SearchStrategy[Any]) -> Any:
    """A value of ``typed`` as JSON; arbitrary JSON where hypothesis built a nested model with
    values its constraints refuse (a pattern, a bound), which raises as the model is made."""
    try:
        return to_jsonable_python(draw(typed))
    except (ValueError, PydanticSerializationError):  # pydantic's ValidationError is a ValueError
        return draw(json_values)


def field_dicts(task_name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts made of the schema's own field names (some, all, or none) with arbitrary or typed
    values, sometimes with an unknown key: they get past "unknown field" to each field's checks."""
    fields = LEDGER_TASKS[task_name].payload_schema.model_fields
    known = st.fixed_dictionaries({}, optional={name: field_values(info.annotation) for name, info in fields.items()})
    extra = st.dictionaries(st.text(min_size=1), json_values, max_size=1)
    return st.tuples(known, extra | st.just({})).map(lambda pair: {**pair[1], **pair[0]})


def payloads(task_name: str) -> st.SearchStrategy[Any]:
    return json_values | field_dicts(task_name)


def validate(task_name: str, payload: Any) -> dict[str, Any] | None:
    """Enqueue's validation: the accepted payload, or None when InvalidPayload refuses it."""
    try:
        return job_payload_validate(task_name=task_name, payload=payload)
    except InvalidPayload as exc:
        assert exc.details["errors"], "a refusal names the field"
        json.dumps(exc.details)  # the API serialises the errors: they must be JSON
        return None


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False


def worker_accepts(task_name: str, payload: Any) -> bool:
    schema = LEDGER_TASKS[task_name].payload_schema
    try:
        schema.model_validate(payload)
    except ValueError:  # pydantic's ValidationError
        return False
    return True


@pytest.mark.parametrize("task_name", TASK_NAMES)
def test_every_payload_is_accepted_or_refused_and_the_worker_agrees(task_name):
    @PROPERTIES
    @given(payload=payloads(task_name))
    def check(payload):
        accepted = validate(task_name, payload)
        if not isinstance(payload, dict | None):
            assert accepted is None, "only a JSON object (or nothing) can be a payload"
        # The worker validates the kwargs the message carries with the same schema: same verdict,
        # except that enqueue also refuses NUL in strings (the ledger cannot store it).
        if accepted is None:
            assert not worker_accepts(task_name, {} if payload is None else payload) or has_nul(payload)
            return
        assert worker_accepts(task_name, payload if isinstance(payload, dict) else {})
        # What enqueue stores is plain JSON, and the worker takes it as it arrives (a JSON
        # round trip through the message) without a complaint or a change.
        sent = json.loads(json.dumps(accepted, allow_nan=False))
        assert sent == accepted
        assert validate(task_name, sent) == accepted

    check()


@pytest.mark.parametrize("task_name", sorted(PUBLIC_TASKS))
def test_the_strategies_reach_both_outcomes(task_name):
    """The generators are not vacuous: they produce accepted payloads as well as refused ones."""
    seen = set()

    @hypothesis_settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(payload=field_dicts(task_name))
    def collect(payload):
        seen.add(validate(task_name, payload) is not None)

    collect()
    assert seen == {True, False}


# --- through the HTTP API -----------------------------------------------------------------------

SANE_OPTIONS = {
    "queue": st.sampled_from(["critical", "default", "bulk"]),
    "priority": st.integers(0, 9),
    "delay_seconds": st.floats(0, 3600),
    "idempotency_key": st.text(min_size=1, max_size=20),
    "max_attempts": st.integers(1, 10),
}
EDGY_OPTIONS = {
    "queue": json_values | st.sampled_from(["critical", "Critical", "celery", ""]),
    "priority": json_values | st.integers(-2, 12),
    "delay_seconds": json_values | st.floats(-1, 3e6) | st.just(30 * 86400 + 1),
    "idempotency_key": json_values | st.text(max_size=210),
    "max_attempts": json_values | st.integers(-1, 120),
}


def job_bodies(name: str) -> st.SearchStrategy[dict[str, Any]]:
    """A request for a public task: sane options around a fuzzed payload (so the payload's
    validation is reached), or anything in every field."""
    sane = st.fixed_dictionaries({"task": st.just(name), "payload": field_dicts(name)}, optional=SANE_OPTIONS)
    edgy = st.fixed_dictionaries({"task": st.just(name)}, optional={"payload": payloads(name), **EDGY_OPTIONS})
    return sane | edgy


bodies_for_public_tasks = st.sampled_from(sorted(PUBLIC_TASKS)).flatmap(job_bodies)


def finite(value: Any) -> bool:
    """Whether ``value`` can be sent as standard JSON (no NaN or infinity anywhere)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(item) for item in value.values())
    if isinstance(value, list):
        return all(finite(item) for item in value)
    return True


@pytest.fixture
def api_client(client, user, settings):
    settings.API_RATE_LIMIT_PER_MINUTE = 0  # thousands of requests a minute, on purpose
    client.defaults.update(bearer(user))
    return client


def post_json(client, path: str, body: Any):
    text = json.dumps(body, allow_nan=not finite(body))
    return client.post(path, data=text, content_type="application/json")


def assert_answered(response, *ok: int) -> None:
    event(f"{response.status_code} {response.json().get('code', '')}")  # see --hypothesis-show-statistics
    assert response.status_code in ok or 400 <= response.status_code < 500, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    answer = response.json()
    if response.status_code >= 400:
        assert isinstance(answer["detail"], str)
        assert isinstance(answer["code"], str)


@pytest.mark.django_db
def test_any_job_request_answers_json_and_never_a_server_error(api_client):
    @PROPERTIES
    @given(body=bodies_for_public_tasks | json_values)
    def check(body):
        response = post_json(api_client, "/api/jobs", body)
        assert_answered(response, 200, 202)
        if not finite(body):
            assert response.status_code == 400
            assert response.json()["code"] == "malformed_json"

    check()


@pytest.mark.django_db
def test_any_batch_answers_json_and_never_a_server_error(api_client):
    @PROPERTIES
    @given(body=st.fixed_dictionaries({"jobs": st.lists(bodies_for_public_tasks | json_values, max_size=4)}))
    def check(body):
        response = post_json(api_client, "/api/jobs/batch", body)
        assert_answered(response, 202)

    check()
