"""One local configuration: var/local.env is written once (secrets generated, an older checkout's
kept), read by every entry point with the environment winning, and its absence is named."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values

from tests.support.processes import BASE_DIR, BIN_DIR

PYTHON = str(BIN_DIR / "python")
WRITE = [PYTHON, "-c", "from project import localconfig; localconfig.main()"]
SHOW_SETTINGS = [
    PYTHON,
    "manage.py",
    "shell",
    "-c",
    "from django.conf import settings as s; print(s.SECRET_KEY, s.DEBUG, s.PAYMENT_SANDBOX, s.EMAIL_PORT)",
]


def run(argv: list[str], local_env: Path, **env: str) -> subprocess.CompletedProcess:
    """``argv`` in the checkout with nothing of the platform's settings exported but ``env``."""
    environment = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    environment.update(LOCAL_ENV_FILE=str(local_env), **env)
    return subprocess.run(argv, cwd=BASE_DIR, env=environment, capture_output=True, text=True, timeout=120)


@pytest.fixture
def local_env(tmp_path: Path) -> Path:
    return tmp_path / "var" / "local.env"


def test_the_file_is_written_once_private_with_secrets_and_local_defaults(local_env):
    first = run(WRITE, local_env)
    assert first.returncode == 0, first.stderr
    written = local_env.read_text()
    values = dotenv_values(local_env)
    second = run(WRITE, local_env)

    assert second.returncode == 0, second.stderr
    assert local_env.read_text() == written, "a second run must not rewrite the file"
    assert local_env.stat().st_mode & 0o777 == 0o600
    header = " ".join(line.lstrip("# ") for line in written.splitlines() if line.startswith("#"))
    assert "make run, manage.py, celery -A project and make test" in header
    assert "the environment wins over this file" in header
    assert values["DJANGO_DEBUG"] == "true"
    assert values["DJANGO_SUPERUSER_USERNAME"] == "admin"
    assert values["DJANGO_SUPERUSER_EMAIL"] == "admin@localhost"
    assert values["PAYMENT_SANDBOX"] == "true"
    assert values["FLOWER_BASIC_AUTH"].startswith("ops:") and len(values["FLOWER_BASIC_AUTH"]) > 12
    assert len(values["DJANGO_SECRET_KEY"]) >= 50
    assert len(values["DJANGO_SUPERUSER_PASSWORD"]) >= 12
    assert values["PAYMENT_GATEWAY_API_KEY"] not in ("", "sandbox-key")
    assert values["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"
    assert (values["EMAIL_HOST"], values["EMAIL_PORT"]) == ("127.0.0.1", "1025")
    assert values["MAIL_CATCHER_DIR"] == "var/mail"


def test_a_new_file_keeps_the_passwords_of_an_older_checkouts_local_secrets_json(local_env):
    local_env.parent.mkdir(parents=True)
    older = {
        "DJANGO_SECRET_KEY": "k" * 50,
        "DJANGO_SUPERUSER_PASSWORD": "kept-admin-pass",
        "FLOWER_BASIC_AUTH": "ops:kept-flower-pass",
    }
    (local_env.parent / "local-secrets.json").write_text(json.dumps(older))

    assert run(WRITE, local_env).returncode == 0

    values = dotenv_values(local_env)
    assert {name: values[name] for name in older} == older
    assert values["PAYMENT_GATEWAY_API_KEY"]  # not in the old file: generated


def test_manage_py_reads_the_file_and_the_environment_wins(local_env):
    assert run(WRITE, local_env).returncode == 0
    secret_key = dotenv_values(local_env)["DJANGO_SECRET_KEY"]

    from_file = run(SHOW_SETTINGS, local_env)
    assert from_file.returncode == 0, from_file.stderr
    # The mail port follows MAIL_CATCHER_PORT when one is exported (the launcher's catcher).
    from_file_with_port = run(SHOW_SETTINGS, local_env, MAIL_CATCHER_PORT="2525")
    from_environment = run(SHOW_SETTINGS, local_env, DJANGO_SECRET_KEY="e" * 50, DJANGO_DEBUG="false",
                           PAYMENT_SANDBOX="false", PAYMENT_GATEWAY_URL="https://pay.example.com/charges",
                           PAYMENT_GATEWAY_API_KEY="real-key", EMAIL_PORT="587")  # fmt: skip

    assert from_file.stdout.split()[-4:] == [secret_key, "True", "True", "1025"]
    assert from_file_with_port.stdout.split()[-1] == "2525"
    assert from_environment.returncode == 0, from_environment.stderr
    assert from_environment.stdout.split()[-4:] == ["e" * 50, "False", "False", "587"]


def test_celery_reads_the_file(local_env):
    assert run(WRITE, local_env).returncode == 0
    with local_env.open("a") as out:
        out.write("REDIS_URL=redis://127.0.0.1:6391/7\n")

    done = run([str(BIN_DIR / "celery"), "-A", "project", "report"], local_env)

    assert done.returncode == 0, done.stderr
    assert "127.0.0.1:6391/7" in done.stdout


def test_without_the_file_a_missing_setting_is_named_with_where_make_run_writes_it(local_env):
    done = run([PYTHON, "manage.py", "check"], local_env)

    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.strip() == (
        "configuration error: DJANGO_SECRET_KEY is required but not set "
        f"(in a checkout, `make run` writes the local settings to {local_env})"
    )
    assert not local_env.exists(), "only make run and make test write the file"
