"""The local settings of a checkout: one git-ignored dotenv file, generated once, read by every process.

`make run` (project.launcher) and `make test` (localconfig.main) write `var/local.env`
when it is missing: generated secrets (the values of an older checkout's var/local-secrets.json are
kept) and the local defaults (DEBUG, the sandbox gateway, mail to the local catcher). Every process
of the platform loads it when the `project` package is imported (manage.py, `celery -A project`,
uvicorn, Flower, the launcher), filling only the variables the environment does not set: the
environment always wins. Production has no such file (.dockerignore keeps var/ out of the image),
so there every setting must be given explicitly. `LOCAL_ENV_FILE` names another file; set empty,
no file is read (what the production-like tests do in a checkout).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from pathlib import Path

from dotenv import dotenv_values

BASE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_PATH = "var/local.env"
#: where older checkouts kept the launcher's generated secrets (beside the local file); taken over
#: once, then left alone
LEGACY_SECRETS_NAME = "local-secrets.json"

#: names this process took from the local file (not from its environment), and their values
LOADED: dict[str, str] = {}

HEADER = """\
# Local settings of this checkout, written once by `make run` / `make test` (project/localconfig.py).
# Read at start by make run, manage.py, celery -A project and make test (and every process they
# start); a variable set in the environment wins over this file. Git-ignored: it holds this
# checkout's generated secrets. Edit it freely (a value may refer to variables, as in a shell);
# delete it to get new secrets. Production has no such file: every setting comes from the environment.
"""


def path() -> Path | None:
    """The local settings file (LOCAL_ENV_FILE, relative to the checkout), or None when turned off."""
    name = os.environ.get("LOCAL_ENV_FILE", DEFAULT_PATH)
    return (BASE_DIR / name) if name else None


def load() -> Path | None:
    """Fill the variables the environment does not set from the local file; returns it if read."""
    file = path()
    if file is None or not file.is_file():
        return None
    for name, value in dotenv_values(file).items():
        if value is not None and name not in os.environ:
            os.environ[name] = LOADED[name] = value
    return file


def missing_hint() -> str:
    """What a 'required but not set' error adds when the local file is missing."""
    file = path()
    if file is None or file.is_file():
        return ""
    shown = file.relative_to(BASE_DIR) if file.is_relative_to(BASE_DIR) else file
    return f" (in a checkout, `make run` writes the local settings to {shown})"


def _generated(legacy_file: Path) -> dict[str, str]:
    """The secrets of a new file: an older checkout's, so its passwords stay, else new random ones."""
    legacy = json.loads(legacy_file.read_text()) if legacy_file.is_file() else {}
    fresh = {
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_SUPERUSER_PASSWORD": secrets.token_urlsafe(12),
        "FLOWER_BASIC_AUTH": f"ops:{secrets.token_urlsafe(12)}",
        "PAYMENT_GATEWAY_API_KEY": secrets.token_urlsafe(24),
    }
    return {name: legacy.get(name) or value for name, value in fresh.items()}


def render(generated: dict[str, str]) -> str:
    lines = [
        HEADER,
        "# Local development: DEBUG pages, and the sandbox payment gateway the web process serves.",
        "DJANGO_DEBUG=true",
        f"DJANGO_SECRET_KEY={generated['DJANGO_SECRET_KEY']}",
        "",
        "# The admin `make run` creates or updates (manage.py ensure_admin).",
        "DJANGO_SUPERUSER_USERNAME=admin",
        "DJANGO_SUPERUSER_EMAIL=admin@localhost",
        f"DJANGO_SUPERUSER_PASSWORD={generated['DJANGO_SUPERUSER_PASSWORD']}",
        "",
        "# Flower's basic auth (user:password).",
        f"FLOWER_BASIC_AUTH={generated['FLOWER_BASIC_AUTH']}",
        "",
        "# Payments: the sandbox gateway (test cards tok_ok, tok_decline, tok_flaky, tok_slow) and its key.",
        "PAYMENT_SANDBOX=true",
        f"PAYMENT_GATEWAY_API_KEY={generated['PAYMENT_GATEWAY_API_KEY']}",
        "",
        "# Mail goes to the catcher `make run` starts, which keeps it in MAIL_CATCHER_DIR (a Maildir);",
        "# read it at http://127.0.0.1:8000/mail/ (or the WEB_PORT you use).",
        "EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST=127.0.0.1",
        "EMAIL_PORT=${MAIL_CATCHER_PORT:-1025}",
        "MAIL_CATCHER_DIR=var/mail",
        "",
    ]
    return "\n".join(lines)


def ensure() -> Path | None:
    """Write the local file when it is missing (never rewrites one); returns it, or None when turned off."""
    file = path()
    if file is None or file.is_file():
        return file
    file.parent.mkdir(parents=True, exist_ok=True)
    # Written private (0600: it holds passwords) under another name, then linked into place, so no
    # process reads half a file, and of two entry points writing at once the first one's stands.
    draft = file.with_name(f".{file.name}.{os.getpid()}")
    descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(render(_generated(file.with_name(LEGACY_SECRETS_NAME))))
    try:
        with contextlib.suppress(FileExistsError):
            os.link(draft, file)
    finally:
        draft.unlink()
    return file


def main() -> None:
    """`make test`'s step (`python -c 'from project import localconfig; localconfig.main()'`): the file, once."""
    file = path()
    if file is None:
        print("LOCAL_ENV_FILE is empty: no local settings file is used", file=sys.stderr)
        return
    existed = file.is_file()
    ensure()
    print(f"local settings: {file} ({'kept' if existed else 'written'})")
