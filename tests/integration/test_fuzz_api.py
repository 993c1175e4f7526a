"""Schemathesis against the API's own OpenAPI document, served by the app in-process (WSGI).

Every operation is fuzzed with valid and invalid input (path, query, body), with a normal user's
bearer token and without credentials: no 5xx, every response conforms to its declared status
codes and schema, and without credentials every endpoint answers 401. Bounded for CI
(FUZZ_EXAMPLES per operation, 25 by default); ``make fuzz`` runs it longer. Enqueueing endpoints
publish real messages to the test Redis (no worker consumes them; ``broker`` empties it).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client
from hypothesis import HealthCheck, settings

from tests.conftest import bearer

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
    """The API's OpenAPI document, fuzzed against the app in-process (Django's WSGI handler).

    Built as the app builds it for /api/openapi.json (test_staff_are_served_the_fuzzed_schema
    checks that staff get exactly this document). Loaded at import, without a request: the
    served document is staff-only, and schemathesis' fixture-based loader does not run on this
    pytest."""
    from tasks.api import api

    # Every built-in check but "schema-valid data is accepted": the API rightly refuses requests
    # that fit the schema but not the domain (an unknown task or sku, a payload its task's schema
    # refuses, a date range too long) with a documented 4xx, which the other checks validate.
    config = schemathesis.Config.from_dict({"checks": {"positive_data_acceptance": {"enabled": False}}})
    loaded = schemathesis.openapi.from_dict(api.get_openapi_schema(path_prefix="/api/"), config=config)
    loaded.app = WSGIHandler()
    return loaded


schema = load_schema()


@pytest.fixture
def fuzz_user_headers(user, broker, settings) -> dict[str, str]:
    settings.API_RATE_LIMIT_PER_MINUTE = 0  # hundreds of enqueues a minute, on purpose
    return {"Authorization": bearer(user)["HTTP_AUTHORIZATION"]}


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


def test_the_schema_is_for_staff_only(user, auth):
    anonymous = Client().get(SCHEMA_PATH)
    assert anonymous.status_code == 302
    assert "/admin/login/" in anonymous["Location"]
    client = Client()
    client.force_login(user)
    assert client.get(SCHEMA_PATH).status_code == 302  # a signed-in user who is not staff
    assert Client().get(SCHEMA_PATH, **auth).status_code == 302  # a bearer token is not a staff session


def test_staff_are_served_the_fuzzed_schema():
    staff = get_user_model().objects.create_user("fuzz-staff", password="unused-pass-123", is_staff=True)
    client = Client()
    client.force_login(staff)
    response = client.get(SCHEMA_PATH)
    assert response.status_code == 200
    assert response.json() == schema.raw_schema
