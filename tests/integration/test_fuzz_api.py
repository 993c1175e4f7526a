"""Schemathesis against the API's own OpenAPI document, served by the app in-process (WSGI).

Every operation is fuzzed with valid and invalid input (path, query, body), with a normal user's
bearer token and without credentials, under every built-in check: no 5xx, every response conforms
to its declared status codes and schema, a request the schema admits is accepted (or refused for
a state no schema states: 401, 403, 404, 409, 429), one it does not admit is refused with a 4xx,
and without credentials every endpoint answers 401. Bounded for CI (FUZZ_EXAMPLES per operation,
25 by default, a fixed seed); ``make fuzz`` runs it longer with fresh data. Enqueueing endpoints
publish real messages to the test Redis (no worker consumes them; ``broker`` empties it).
tests/integration/test_fuzz_live.py does the same against a real web process.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client
from hypothesis import HealthCheck, settings

from tests.fixtures import bearer
from tests.fuzz_live import api_schema, make_fuzz_user

pytestmark = pytest.mark.django_db(transaction=True)

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SCHEMA_PATH = "/api/openapi.json"
HYPOTHESIS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("FUZZ_RANDOM"),
    suppress_health_check=list(HealthCheck),
    database=None,
)


def load_schema():
    """The API's OpenAPI document, fuzzed against the app in-process (Django's WSGI handler), with
    every built-in check (positive_data_acceptance included). Built as the app builds it for
    /api/openapi.json (test_token_holders_are_served_the_fuzzed_schema checks that a token gets
    exactly this), at import, without a request: schemathesis' fixture-based loader does not run
    on this pytest."""
    loaded = schemathesis.openapi.from_dict(api_schema())
    loaded.app = WSGIHandler()
    return loaded


schema = load_schema()


@pytest.fixture
def fuzz_user_headers(broker, settings) -> dict[str, str]:
    """A customer's token, as a user registered at /accounts/register holds one (not an operator)."""
    settings.API_RATE_LIMIT_PER_MINUTE = 0  # hundreds of enqueues a minute, on purpose
    return {"Authorization": bearer(make_fuzz_user())["HTTP_AUTHORIZATION"]}


@schema.parametrize()
@HYPOTHESIS
def test_authenticated_requests_never_fail_and_match_the_schema(case, fuzz_user_headers):
    case.call_and_validate(headers=fuzz_user_headers)


@schema.parametrize()
@HYPOTHESIS
@pytest.mark.parametrize("credentials", [{}, {"Authorization": "Bearer not-a-token"}], ids=["none", "bad-token"])
def test_every_endpoint_refuses_anonymous_requests(case, credentials, broker):
    response = case.call(headers=credentials)
    declared = {method.upper() for method in case.operation.schema.raw_schema["paths"][case.operation.path]}
    if case.method.upper() not in declared:
        assert response.status_code == 405  # a method the path does not have: nothing runs
        return
    assert response.status_code == 401, f"{case.method} {case.formatted_path} answered {response.status_code}"
    assert response.json()["code"] == "unauthenticated"
    case.validate_response(response, headers=credentials)


def test_token_holders_are_served_the_fuzzed_schema(user, auth):
    anonymous = Client().get(SCHEMA_PATH)
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthenticated")
    by_token = Client().get(SCHEMA_PATH, **auth)  # an API client, not staff, with no session
    assert by_token.status_code == 200
    assert by_token.json() == api_schema()
    session = Client()
    session.force_login(user)  # a signed-in user who is not staff
    assert session.get(SCHEMA_PATH).json() == api_schema()
