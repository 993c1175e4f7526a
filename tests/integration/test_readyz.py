"""The readiness probe answers without authentication, so it names what is down and nothing more:
no host, port, user or database name (those go to the server log)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import requests
from django.db import connection

from tests.support.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)

USER, PASSWORD, DATABASE = "probe_user_7q", "probe-secret-7q", "probe_db_7q"


def test_readyz_names_what_is_down_and_nothing_of_where_or_who(start_web):
    database_port, redis_port = free_port(), free_port()  # nothing listens on either
    web, base = start_web(
        {
            "DATABASE_URL": f"postgres://{USER}:{PASSWORD}@127.0.0.1:{database_port}/{DATABASE}",
            "REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{redis_port}/3",
        }
    )

    ready = requests.get(f"{base}/readyz", timeout=10)

    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "down": ["database", "redis"]}
    for secret in ("127.0.0.1", "localhost", str(database_port), str(redis_port), USER, PASSWORD, DATABASE):
        assert secret not in ready.text, secret
    # Why is for the operator, in the server's log.
    log = web.log()
    assert "WARNING tasks.platform.health: readiness: the database does not answer" in log
    assert f"port {database_port} failed" in log
    assert "WARNING tasks.platform.health: readiness: Redis does not answer" in log


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL server that answers")
def test_readyz_names_the_database_when_the_server_answers_but_refuses(start_web):
    settings = connection.settings_dict
    user = quote(settings["USER"] or "")
    url = f"postgres://{user}@{settings['HOST']}:{settings['PORT'] or 5432}/{DATABASE}"  # no such database

    _, base = start_web({"DATABASE_URL": url})
    ready = requests.get(f"{base}/readyz", timeout=10)

    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "down": ["database"]}
    for secret in (settings["HOST"], DATABASE, settings["USER"]):
        assert secret not in ready.text, secret
