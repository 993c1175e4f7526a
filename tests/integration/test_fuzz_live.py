"""The API fuzzed over HTTP against a real web process (uvicorn, as the Procfile runs it), where
an independent schemathesis run found 500s that the in-process fuzz missed.

Schemathesis, with every built-in check and a user's bearer token, on every operation of the API's
OpenAPI document: no 5xx, answers as declared, a request the schema admits is accepted (or refused
for a state: 401, 403, 404, 409, 429), one it does not admit is refused with a 4xx. Bounded and
fixed-seed for CI (FUZZ_EXAMPLES per operation); ``make fuzz`` runs it with fresh data, and
``make fuzz FUZZ_LIVE=1`` runs ``st run`` against a live ``make run`` (tests/fuzz_live.py). Also
here: the list endpoints' page bounds, and the schema and docs (with their assets) over HTTP.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests
import schemathesis

from tasks.platform.api.pagination import MAX_PAGE, MAX_PAGE_SIZE
from tests.fixtures import bearer, launch_web
from tests.fuzz_live import api_schema, make_fuzz_user
from tests.integration.test_fuzz_api import HYPOTHESIS

pytestmark = pytest.mark.django_db(transaction=True)

LISTS = ("/api/jobs", "/api/orders", "/api/reports")

# The document the web process serves (test_the_schema_and_the_docs_are_served_over_http checks
# it is this one), built at import: the web process starts later, in a fixture.
schema = schemathesis.openapi.from_dict(api_schema())


@pytest.fixture(scope="module")
def live_web(process_env, static_files) -> Iterator[str]:
    """One web process for the module, as start_web starts one a test: the fuzz is one test per
    operation, all against it. No enqueue rate limit, so that valid requests reach the services."""
    process, base = launch_web({**process_env, "API_RATE_LIMIT_PER_MINUTE": "0"})
    try:
        yield base
    finally:
        process.stop()


@pytest.fixture
def token_headers(broker) -> dict[str, str]:
    """A customer's token, as a user registered at /accounts/register holds one (not an operator)."""
    return {"Authorization": bearer(make_fuzz_user())["HTTP_AUTHORIZATION"]}


@schema.parametrize()
@HYPOTHESIS
def test_the_live_server_accepts_what_its_schema_admits_and_never_fails(case, live_web, token_headers):
    case.call_and_validate(base_url=live_web, headers=token_headers)


@pytest.mark.parametrize("path", LISTS)
def test_pages_out_of_bounds_are_refused_naming_the_field(path, live_web, token_headers):
    def get(**query) -> requests.Response:
        return requests.get(f"{live_web}{path}", params=query, headers=token_headers, timeout=10)

    # The independent run's 500: an OFFSET past the database's 64-bit integers.
    refused = get(page=72057594037927936, page_size=2950)
    assert refused.status_code == 422, refused.text
    assert refused.json()["code"] == "invalid_request"
    assert {error["field"] for error in refused.json()["errors"]} == {"page", "page_size"}
    for query, field in [
        ({"page": MAX_PAGE + 1}, "page"),
        ({"page": 0}, "page"),
        ({"page": -1}, "page"),
        ({"page_size": MAX_PAGE_SIZE + 1}, "page_size"),
        ({"page_size": 0}, "page_size"),
        ({"page": "1e3"}, "page"),
    ]:
        answer = get(**query)
        assert answer.status_code == 422, (query, answer.text)
        assert [error["field"] for error in answer.json()["errors"]] == [field], query

    last = get(page=MAX_PAGE, page_size=MAX_PAGE_SIZE)  # the bounds themselves are served
    assert last.status_code == 200, last.text
    assert last.json() == {"items": [], "count": 0, "count_capped": False}
    assert get().json() == {"items": [], "count": 0, "count_capped": False}

    declared = {
        parameter["name"]: parameter["schema"]
        for parameter in requests.get(f"{live_web}/api/openapi.json", headers=token_headers, timeout=10).json()[
            "paths"
        ][path]["get"]["parameters"]
    }
    assert (declared["page"]["minimum"], declared["page"]["maximum"]) == (1, MAX_PAGE)
    assert (declared["page_size"]["minimum"], declared["page_size"]["maximum"]) == (1, MAX_PAGE_SIZE)


def test_the_schema_and_the_docs_are_served_over_http(live_web, token_headers):
    served = requests.get(f"{live_web}/api/openapi.json", headers=token_headers, timeout=10)
    assert served.status_code == 200
    assert served.json() == api_schema()
    anonymous = requests.get(f"{live_web}/api/openapi.json", timeout=10)
    assert (anonymous.status_code, anonymous.json()["code"]) == (401, "unauthenticated")

    docs = requests.get(f"{live_web}/api/docs", headers=token_headers, timeout=10)
    assert docs.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", docs.text)
    assert any(asset.endswith(".js") for asset in assets) and any(asset.endswith(".css") for asset in assets)
    for asset in assets:
        assert asset.startswith("/static/"), asset  # the platform's own files, no CDN
        fetched = requests.get(f"{live_web}{asset}", timeout=10)  # static files need no credentials
        assert fetched.status_code == 200, asset
        assert fetched.content, asset
