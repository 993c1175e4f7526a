"""A bad setting stops start-up with one line that names it."""

import os
import subprocess

import pytest

from tests.support.processes import BASE_DIR, BIN_DIR


def start(argv: list[str], **env: str | None) -> subprocess.CompletedProcess:
    """``argv`` with the test environment and ``env`` (None: unset), and no local settings file."""
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_SECRET_KEY": "x" * 50,
        "FLOWER_BASIC_AUTH": "ops:secret-pass",
        "LOCAL_ENV_FILE": "",
        **env,
    }
    environment = {name: value for name, value in environment.items() if value is not None}
    return subprocess.run(argv, cwd=BASE_DIR, env=environment, capture_output=True, text=True, timeout=60)


MANAGE_CHECK = [str(BIN_DIR / "python"), "manage.py", "check"]


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DATABASE_URL": "postgres://user@host:notaport/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysqlx://nowhere/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgres://"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://127.0.0.1:port/0"}, "REDIS_URL"),
        ({"REDIS_URL": "sentinel://127.0.0.1:26379;redis://127.0.0.1:6379/0"}, "REDIS_URL"),
        ({"REDIS_URL": "sentinel://127.0.0.1:26379/1;sentinel://127.0.0.1:26380/2"}, "REDIS_URL"),
        ({"REDIS_URL": "sentinel://127.0.0.1:26379/0", "REDIS_SENTINEL_MASTER": " "}, "REDIS_SENTINEL_MASTER"),
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG"),
        ({"API_MAX_BODY_BYTES": "lots"}, "API_MAX_BODY_BYTES"),
        ({"LOG_FORMAT": "yaml"}, "LOG_FORMAT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "grpc://collector:4317"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
    ],
)
def test_bad_django_setting_stops_start_up_with_one_line(env, named):
    done = start(MANAGE_CHECK, **env)

    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith(f"configuration error: {named} ")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BROKER_VISIBILITY_TIMEOUT": "600", "TASK_TIME_LIMIT": "660"}, "BROKER_VISIBILITY_TIMEOUT"),
        ({"TASK_SOFT_TIME_LIMIT": "100", "TASK_TIME_LIMIT": "90"}, "TASK_TIME_LIMIT"),
        ({"REDIS_URL": "redis://:secret@"}, "REDIS_URL"),
        ({"REDIS_URL": "sentinel://127.0.0.1:port/0"}, "REDIS_URL"),
    ],
)
def test_bad_celery_setting_stops_a_worker_with_one_line(env, named):
    done = start([str(BIN_DIR / "celery"), "-A", "project", "worker", "-Q", "default"], **env)

    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith(f"configuration error: {named} "), done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr


@pytest.mark.parametrize("credentials", ["", "ops", "ops:", ":secret"])
def test_flower_refuses_to_start_without_basic_auth(credentials):
    done = start([str(BIN_DIR / "python"), "-m", "project.flower", "--port=0"], FLOWER_BASIC_AUTH=credentials)

    assert done.returncode != 0
    assert "configuration error: FLOWER_BASIC_AUTH" in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr


# --- the sandbox payment gateway only where it belongs ---------------------------------------------

SANDBOX_WITHOUT_DEBUG = {"DJANGO_DEBUG": "false", "PAYMENT_SANDBOX": "true", "PAYMENT_GATEWAY_API_KEY": "test-key"}


def test_the_sandbox_with_debug_off_refuses_to_start_and_names_the_setting():
    done = start(MANAGE_CHECK, **SANDBOX_WITHOUT_DEBUG, PAYMENT_SANDBOX_WITHOUT_DEBUG=None)

    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("configuration error: PAYMENT_SANDBOX is on with DJANGO_DEBUG off"), done.stderr
    assert "PAYMENT_SANDBOX_WITHOUT_DEBUG=true" in done.stderr  # how to say so, if meant


def test_the_sandbox_without_debug_starts_when_said_so_and_every_process_warns():
    done = start(MANAGE_CHECK, **SANDBOX_WITHOUT_DEBUG, PAYMENT_SANDBOX_WITHOUT_DEBUG="true")

    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "PAYMENT_SANDBOX_WITHOUT_DEBUG" in line]
    assert len(warnings) == 1, done.stderr
    assert " WARNING tasks.apps: PAYMENT_SANDBOX_WITHOUT_DEBUG is on" in warnings[0]


def test_without_debug_the_sandbox_key_has_no_public_default():
    done = start(
        MANAGE_CHECK, **{**SANDBOX_WITHOUT_DEBUG, "PAYMENT_GATEWAY_API_KEY": None}, PAYMENT_SANDBOX_WITHOUT_DEBUG="true"
    )

    assert done.returncode != 0
    assert (
        done.stderr.strip().splitlines()[-1] == "configuration error: PAYMENT_GATEWAY_API_KEY is required but not set"
    )


# --- tracing and log format -------------------------------------------------------------------------

SHOW_OBSERVABILITY = [
    str(BIN_DIR / "python"),
    "manage.py",
    "shell",
    "-c",
    "from django.conf import settings; print(settings.TRACING, settings.LOG_FORMAT)",
]


@pytest.mark.parametrize(
    ("env", "shown"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": None, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": None}, "False text"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""}, "False text"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "LOG_FORMAT": "JSON"}, "True json"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector/v1/traces"}, "True text"),
    ],
)
def test_tracing_is_on_only_with_an_otlp_endpoint(env, shown):
    done = start(SHOW_OBSERVABILITY, **{"OTEL_EXPORTER_OTLP_ENDPOINT": None, "LOG_FORMAT": None, **env})

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == shown
