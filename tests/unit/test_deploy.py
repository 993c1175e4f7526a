"""Production settings: `manage.py check --deploy` is clean with docker-compose's app environment
behind TLS, DEBUG is off there, secrets come only from the environment, plain HTTP is sent to
HTTPS (but not the probes), and every HTML form wants its CSRF token."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess

import pytest
import yaml
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from tests.support.processes import BASE_DIR, BIN_DIR

PYTHON = str(BIN_DIR / "python")

_REQUIRED = re.compile(r"\$\{([A-Z_][A-Z0-9_]*):\?[^}]*\}")
_DEFAULTED = re.compile(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}")


def _strong() -> str:
    # URL-safe, as compose's comment asks of the passwords that go into URLs; long as Django wants.
    return secrets.token_hex(32)


#: what the required variables are set to in the run (an operator's .env)
REQUIRED_VALUES = {"PAYMENT_GATEWAY_URL": "https://payments.example.com/v1/charges"}


def compose_app_env() -> dict[str, str]:
    """docker-compose's app environment (x-app-env) as compose would expand it with every required
    secret set (strong random values) and nothing else in the environment."""
    compose = yaml.safe_load((BASE_DIR / "docker-compose.yml").read_text())
    expanded = {}
    for name, value in compose["x-app-env"].items():
        text = str(value)
        text = _REQUIRED.sub(lambda m: REQUIRED_VALUES.get(m[1]) or _strong(), text)
        text = _DEFAULTED.sub(lambda m: m[2], text)
        expanded[name] = text
    return expanded


def production_env(**overrides: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    env.update(compose_app_env())
    env.update(
        DJANGO_SETTINGS_MODULE="project.settings", DJANGO_HTTPS="true", MEDIA_ROOT=str(BASE_DIR / "var" / "media")
    )
    # The image has no var/local.env (.dockerignore): this checkout's must not fill in what compose leaves unset.
    env["LOCAL_ENV_FILE"] = ""
    env.pop("DJANGO_DEBUG", None)
    env.update(overrides)
    return {name: value for name, value in env.items() if value is not None}


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120)


def test_compose_environment_is_production_like():
    env = compose_app_env()
    assert "DJANGO_DEBUG" not in env, "compose must not turn DEBUG on"
    assert env["PAYMENT_SANDBOX"] == "false"
    assert env["DJANGO_SECRET_KEY"] and "insecure" not in env["DJANGO_SECRET_KEY"]


def test_check_deploy_is_clean_behind_tls():
    done = run([PYTHON, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], production_env())

    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout, done.stdout + done.stderr


_PROBE = """
import json
import django
django.setup()
from django.conf import settings as s
from django.test import Client
c = Client(HTTP_HOST="localhost")
plain_api = c.get("/api/jobs")
tls_api = c.get("/api/jobs", HTTP_X_FORWARDED_PROTO="https")
print(json.dumps({
    "DEBUG": s.DEBUG,
    "SESSION_COOKIE_SECURE": s.SESSION_COOKIE_SECURE,
    "CSRF_COOKIE_SECURE": s.CSRF_COOKIE_SECURE,
    "SESSION_COOKIE_HTTPONLY": s.SESSION_COOKIE_HTTPONLY,
    "PAYMENT_SANDBOX": s.PAYMENT_SANDBOX,
    "healthz": c.get("/healthz").status_code,
    "plain_api": [plain_api.status_code, plain_api.get("Location", "")],
    "tls_api": tls_api.status_code,
    "hsts": tls_api.get("Strict-Transport-Security", ""),
    "middleware_csrf": "django.middleware.csrf.CsrfViewMiddleware" in s.MIDDLEWARE,
}))
"""


def test_production_settings_debug_off_secure_cookies_and_https_redirect_except_probes():
    done = run([PYTHON, "-c", _PROBE], production_env())
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    assert seen["DEBUG"] is False
    assert seen["PAYMENT_SANDBOX"] is False
    assert seen["SESSION_COOKIE_SECURE"] and seen["CSRF_COOKIE_SECURE"] and seen["SESSION_COOKIE_HTTPONLY"]
    assert seen["middleware_csrf"]
    # compose's healthcheck calls http://127.0.0.1:8000/healthz: answered, not redirected.
    assert seen["healthz"] == 200
    assert seen["plain_api"] == [301, "https://localhost/api/jobs"]
    assert seen["tls_api"] == 401  # through the proxy: the API itself answers
    assert "max-age=31536000" in seen["hsts"] and "includeSubDomains" in seen["hsts"]


@pytest.mark.parametrize("secret", ["DJANGO_SECRET_KEY", "PAYMENT_GATEWAY_API_KEY"])
def test_secrets_have_no_default_in_production(secret):
    done = run([PYTHON, "manage.py", "check"], production_env(**{secret: None}))

    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == f"configuration error: {secret} is required but not set"


def test_the_settings_hold_no_secret_literal():
    """Secrets are read with env_str and no default (or a development-only one), never written in."""
    text = (BASE_DIR / "project" / "settings.py").read_text()
    assignments = re.findall(r"^([A-Z_]*(?:SECRET_KEY|PASSWORD|API_KEY|TOKEN))\s*=\s*(.+)$", text, re.M)
    names = {name for name, _ in assignments}
    assert {"SECRET_KEY", "EMAIL_HOST_PASSWORD", "PAYMENT_GATEWAY_API_KEY"} <= names, names
    for name, value in assignments:
        assert value.startswith("env_str("), f"{name} must come from the environment: {value}"


# --- CSRF on every form --------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("page", "signed_in", "data"),
    [
        ("login", False, {"username": "csrf", "password": "unused-pass-123"}),
        (
            "register",
            False,
            {"username": "new", "email": "n@example.com", "password1": "Xq9!long-pass", "password2": "Xq9!long-pass"},
        ),
        ("admin:login", False, {"username": "csrf", "password": "unused-pass-123"}),
        ("order_form", True, {"payment_token": "tok_ok", "email": "c@example.com"}),
        ("logout", True, {}),
        (
            "admin:tasks_webhookendpoint_add",
            True,
            {"name": "x", "url": "https://example.com", "event_types": ["order.paid"]},
        ),
    ],
)
def test_every_form_post_without_the_csrf_token_is_refused(page, signed_in, data):
    user = get_user_model().objects.create_superuser("csrf", "csrf@example.com", None)
    client = Client(enforce_csrf_checks=True)
    if signed_in:
        client.force_login(user)
    path = reverse(page)

    form = client.get(path)
    refused = client.post(path, data)

    if page != "logout":  # logout is a POST-only button on other pages
        assert form.status_code == 200, form.status_code
        assert 'name="csrfmiddlewaretoken"' in form.content.decode()
    assert refused.status_code == 403, (page, refused.status_code)
    assert get_user_model().objects.count() == 1
