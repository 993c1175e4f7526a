"""Django settings: everything comes from the environment, with safe local defaults.

A missing or malformed value stops start-up with one line naming the variable (see project.env).
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url

from project.env import SettingError, env_bool, env_http_url, env_int, env_list, env_redis_url, env_str

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
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    # A plain-HTTP request that reached us past the proxy is sent to https, except what is called
    # inside the deployment over plain HTTP: the probes (compose's healthcheck) and the sandbox
    # gateway that workers call at http://web:8000 when it is on.
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^sandbox/"]
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
#: benchmarks only: a Redis where every process counts the SQL statements it runs (project.statement_counter)
DB_STATEMENT_COUNTER_URL = env_str("DB_STATEMENT_COUNTER_URL", "", allow_empty=True)

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
#: uploaded and generated files (report PDFs); served only through views that check access
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
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

# --- the shop: payments, e-mail, webhooks, maintenance --------------------------------------
#: serve the sandbox payment gateway (/sandbox/payments/charges, test tokens tok_ok, tok_decline,
#: tok_flaky, tok_slow); `make run` turns it on, never leave it on where real payments are taken
PAYMENT_SANDBOX = env_bool("PAYMENT_SANDBOX", DEBUG)
#: the web process's port, for the sandbox gateway's default address
WEB_PORT = env_int("WEB_PORT", 8000, minimum=1)
_sandbox_url = f"http://127.0.0.1:{WEB_PORT}/sandbox/payments/charges" if PAYMENT_SANDBOX else None
#: the payment gateway's charge endpoint (POST), and the key it expects as a bearer token
PAYMENT_GATEWAY_URL = env_http_url("PAYMENT_GATEWAY_URL", _sandbox_url)
PAYMENT_GATEWAY_API_KEY = env_str("PAYMENT_GATEWAY_API_KEY", "sandbox-key" if PAYMENT_SANDBOX else None)
#: a gateway that has not answered after this long is treated as down (the charge is retried)
PAYMENT_GATEWAY_TIMEOUT_SECONDS = env_int("PAYMENT_GATEWAY_TIMEOUT_SECONDS", 5, minimum=1)
#: retries of a charge after a timeout or a 5xx, and the first backoff (doubled each retry)
PAYMENT_MAX_RETRIES = env_int("PAYMENT_MAX_RETRIES", 2)
PAYMENT_RETRY_BACKOFF_SECONDS = env_int("PAYMENT_RETRY_BACKOFF_SECONDS", 5)

#: outgoing mail: the console when DEBUG, else SMTP (EMAIL_HOST, EMAIL_PORT, ...)
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
)
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "", allow_empty=True)
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "", allow_empty=True)
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "shop@localhost")
#: this site's address, for links in e-mails
SITE_URL = env_http_url("SITE_URL", f"http://127.0.0.1:{WEB_PORT}")

#: webhook deliveries: how long a receiver may take, attempts before a delivery is dead, first backoff
WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1)
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
WEBHOOK_BACKOFF_BASE_SECONDS = env_int("WEBHOOK_BACKOFF_BASE_SECONDS", 10)

#: cancelled orders are deleted after this many days (nightly, in batches)
CANCELLED_ORDER_RETENTION_DAYS = env_int("CANCELLED_ORDER_RETENTION_DAYS", 90, minimum=1)
#: an order still pending after this many minutes raises an ops alert
PENDING_ORDER_ALERT_MINUTES = env_int("PENDING_ORDER_ALERT_MINUTES", 10, minimum=1)
#: beat leader lease in Redis: a standby beat takes over within twice this after the leader dies
BEAT_LEASE_SECONDS = env_int("BEAT_LEASE_SECONDS", 10, minimum=2)

#: largest JSON body the API accepts
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 256 * 1024, minimum=1024)
#: jobs one user may enqueue through the API a minute: a burst up to it, then refilled evenly; a
#: batch counts each job; staff are limited too. 0 turns it off. The default lets a full batch (1000) through.
API_RATE_LIMIT_PER_MINUTE = env_int("API_RATE_LIMIT_PER_MINUTE", 1200)
#: largest payload of one job as JSON (it travels in the message and is kept in the ledger)
JOB_MAX_PAYLOAD_BYTES = env_int("JOB_MAX_PAYLOAD_BYTES", 64 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}
