"""Django settings: everything comes from the environment, with safe local defaults.

A missing or malformed value stops start-up with one line naming the variable (see project.env).
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from project.env import SettingError, env_bool, env_int, env_list, env_redis_url, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
#: local state of a development run: SQLite database, embedded Redis data, generated secrets
VAR_DIR = BASE_DIR / "var"

DEBUG = env_bool("DJANGO_DEBUG", False)
# Only a DEBUG (local development) process may fall back to a fixed, public key.
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "insecure-development-key" if DEBUG else None)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")

# Behind a TLS-terminating proxy: secure cookies, HSTS and the forwarded-proto header.
HTTPS = env_bool("DJANGO_HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = 31536000
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "tasks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "tasks.middleware.ApiBodyLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/api/jobs"
ASGI_APPLICATION = "project.asgi.application"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database(url: str) -> dict:
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except ValueError as exc:  # dj-database-url's UnknownSchemeError and ParseError
        raise SettingError("DATABASE_URL", f"is malformed ({exc.__class__.__name__}): {url!r}") from None
    engine = config["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        # WAL lets workers read while web writes; IMMEDIATE + timeout wait for the lock
        # instead of failing with "database is locked".
        config["CONN_MAX_AGE"] = 0
        Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        }
    elif engine == "django.db.backends.postgresql":
        if not config["NAME"] or not config["HOST"]:
            raise SettingError("DATABASE_URL", f"must name a host and a database: {url!r}")
    else:
        raise SettingError("DATABASE_URL", f"must be a sqlite:// or postgres:// URL, got {url!r}")
    return config


DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
DATABASES = {"default": _database(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

#: the broker, and the channel for progress and locks
REDIS_URL = env_redis_url("REDIS_URL", "redis://127.0.0.1:6379/0")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

#: how often the relay looks for unpublished and due delayed jobs
RELAY_INTERVAL_SECONDS = env_int("RELAY_INTERVAL_SECONDS", 1, minimum=1)
#: succeeded jobs are pruned from the ledger after this many days (failed and dead ones are kept)
JOB_RETENTION_DAYS = env_int("JOB_RETENTION_DAYS", 30, minimum=1)

# Failure handling: a task may override each of these, and an enqueue may override max attempts.
#: runs a job gets before it is dead (the first run counts)
TASK_MAX_ATTEMPTS = env_int("TASK_MAX_ATTEMPTS", 5, minimum=1)
#: exponential backoff between attempts: base * 2^(attempt-1) seconds, at most the ceiling, jittered
TASK_BACKOFF_BASE_SECONDS = env_int("TASK_BACKOFF_BASE_SECONDS", 2, minimum=0)
TASK_BACKOFF_MAX_SECONDS = env_int("TASK_BACKOFF_MAX_SECONDS", 600, minimum=1)
#: deliveries whose worker died mid-run (a poison job) before the job is dead
TASK_MAX_WORKER_LOSSES = env_int("TASK_MAX_WORKER_LOSSES", 3, minimum=1)

#: largest JSON body the API accepts
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 256 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}
