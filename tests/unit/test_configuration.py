"""A bad setting stops start-up with one line that names it."""

import os
import subprocess

import pytest

from tests.support.processes import BASE_DIR, BIN_DIR


def start(argv: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "project.settings",
        "DJANGO_SECRET_KEY": "x" * 50,
        "FLOWER_BASIC_AUTH": "ops:secret-pass",
        **env,
    }
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
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG"),
        ({"API_MAX_BODY_BYTES": "lots"}, "API_MAX_BODY_BYTES"),
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
