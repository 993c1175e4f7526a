"""Settings for the test process; worker, beat, web and Flower subprocesses use project.settings
with the environment the fixtures give them (see tests/conftest.py)."""

import os

# Set before anything imports the `project` package, which fills what is still unset from the
# checkout's var/local.env: the test process and every process it starts (they inherit this
# environment) run with DEBUG off and these values, whatever a developer's local.env says.
os.environ["DJANGO_DEBUG"] = "false"
os.environ.setdefault("DJANGO_SECRET_KEY", "tests-only-secret-key")
# The web process serves the sandbox payment gateway; tests point workers at it (PAYMENT_GATEWAY_URL).
# With DEBUG off that must be said explicitly (and every process logs a WARNING about it).
os.environ.setdefault("PAYMENT_SANDBOX", "true")
os.environ.setdefault("PAYMENT_SANDBOX_WITHOUT_DEBUG", "true")
os.environ.setdefault("PAYMENT_GATEWAY_API_KEY", "sandbox-key")
# Mail goes where a test points it (tests/support/smtp.py), never to a developer's local catcher.
os.environ.setdefault("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend")
os.environ.setdefault("EMAIL_HOST", "localhost")
os.environ.setdefault("EMAIL_PORT", "25")
os.environ.setdefault("MAIL_CATCHER_DIR", "")
# The suite's own Redis database, so a developer's running platform (db 0) is not disturbed.
os.environ.setdefault("REDIS_URL", os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))

from project.redis_server import answers, is_local  # after the environment above

if not answers(os.environ["REDIS_URL"]):
    if not is_local(os.environ["REDIS_URL"]):
        raise SystemExit(f"configuration error: REDIS_URL {os.environ['REDIS_URL']} does not answer")
    from tests.support.processes import start_bundled_redis

    os.environ["REDIS_URL"] = start_bundled_redis().url

from project.settings import *  # noqa: F403
from project.settings import DATABASES, VAR_DIR

# One test database per run, so two runs on one machine do not trample each other.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not pytest-django's in-memory default, so worker processes share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-db-{os.getpid()}.sqlite3")}
else:
    DATABASES["default"]["TEST"] = {"NAME": f"test_{DATABASES['default']['NAME']}_{os.getpid()}"}

# Pages rendered in the test process (Django's test client: admin, forms) need no collected
# files; the web processes the tests start use the manifest storage, after collectstatic.
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405
