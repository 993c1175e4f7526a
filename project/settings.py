"""Django settings: everything comes from the environment, with safe local defaults.

A missing or malformed value stops start-up with one line naming the variable (see project.env).
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
import django

from project.env import (
    SettingError,
    env_bool,
    env_http_url,
    env_int,
    env_list,
    env_optional_http_url,
    env_str,
)
from project.redis_clients import redis_url_setting
from tasks.platform.queues import QueueName

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
    # The API docs' Swagger UI from ninja's own static files (collected, served by WhiteNoise), not a CDN
    "ninja",
    # Bootstrap's stylesheet for the customer-facing pages, served by the platform itself
    "bootstrap",
    "tasks",
]
if django.VERSION < (6, 0):
    # Django's task API from the pinned backport (Django 6 ships it as django.tasks): its checks
    # and signal handlers, as the backport asks.
    INSTALLED_APPS.insert(INSTALLED_APPS.index("tasks"), "django_tasks")

#: Django's task API (``@task``, ``.enqueue()``, ``get_result``) runs on the platform: each task a
#: ledger job (tasks.platform.django_tasks). DJANGO_TASK_MODULES: modules of Django tasks other
#: than the apps' ``tasks`` modules, which every process imports at start.
TASKS = {
    "default": {
        "BACKEND": "tasks.platform.django_tasks.PlatformTaskBackend",
        "OPTIONS": {"MODULES": env_list("DJANGO_TASK_MODULES", "")},
    }
}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
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
        # Each domain of the tasks app (tasks/<domain>/templates) keeps its own templates.
        "DIRS": sorted((BASE_DIR / "tasks").glob("*/templates")),
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tasks.localmail.views.mail_page_context",
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

#: the broker, and the channel for progress and locks: a Redis, or the master of a Redis Sentinel
#: (``sentinel://host:port;sentinel://host:port/db``, the master named REDIS_SENTINEL_MASTER);
#: project.redis_clients makes every client of it
REDIS_URL, REDIS_SENTINEL_MASTER = redis_url_setting(
    "REDIS_URL", "redis://127.0.0.1:6379/0", master_setting="REDIS_SENTINEL_MASTER"
)

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

# Fair share: on these queues owners take turns. Each owner (or each value of a task's declared
# share key) has at most FAIR_SHARE_DEPTH jobs in the queue at once; the rest wait in the ledger,
# held, and the next one goes as one of theirs starts (tasks.platform.engine.flow).
FAIR_SHARE_QUEUES = env_list("FAIR_SHARE_QUEUES", "bulk")
if unknown := sorted(set(FAIR_SHARE_QUEUES) - set(QueueName.values)):
    raise SettingError("FAIR_SHARE_QUEUES", f"names no queue: {', '.join(unknown)} (queues: {', '.join(QueueName)})")
FAIR_SHARE_DEPTH = env_int("FAIR_SHARE_DEPTH", 1, minimum=1)

#: a worker that consumes the bulk queue alone lowers its CPU priority by this much (os.nice; 0
#: keeps it), so that CPU-heavy jobs do not slow the web, the other queues and the database
BULK_WORKER_NICE = env_int("BULK_WORKER_NICE", 10, minimum=0)
if BULK_WORKER_NICE > 19:
    raise SettingError("BULK_WORKER_NICE", f"({BULK_WORKER_NICE}) must be 0 to 19, the range of nice")

#: how often the relay looks for unpublished and due delayed jobs
RELAY_INTERVAL_SECONDS = env_int("RELAY_INTERVAL_SECONDS", 1, minimum=1)
#: after Redis lost data, how long a queued job found missing from it may still be on its way
#: into a worker before the relay sends it again (tasks.platform.services.broker_loss)
BROKER_LOSS_GRACE_SECONDS = env_int("BROKER_LOSS_GRACE_SECONDS", 2, minimum=1)
#: succeeded jobs are pruned from the ledger after this many days (nightly, jobs.prune_finished)
JOB_RETENTION_DAYS = env_int("JOB_RETENTION_DAYS", 30, minimum=1)
#: failed, dead and cancelled jobs are pruned after this many days: longer, they are what ops look into
JOB_FAILED_RETENTION_DAYS = env_int("JOB_FAILED_RETENTION_DAYS", 90, minimum=1)
#: sales reports (row and PDF) are deleted this many days after they were built (nightly)
REPORT_RETENTION_DAYS = env_int("REPORT_RETENTION_DAYS", 30, minimum=1)
#: ops.mark's keys in Redis expire after this many seconds (a week)
OPS_MARK_TTL_SECONDS = env_int("OPS_MARK_TTL_SECONDS", 7 * 24 * 3600, minimum=1)

# Failure handling: a task may override each of these, and an enqueue may override max attempts.
#: runs a job gets before it is dead (the first run counts)
TASK_MAX_ATTEMPTS = env_int("TASK_MAX_ATTEMPTS", 5, minimum=1)
#: exponential backoff between attempts: base * 2^(attempt-1) seconds, at most the ceiling, jittered
TASK_BACKOFF_BASE_SECONDS = env_int("TASK_BACKOFF_BASE_SECONDS", 2, minimum=0)
TASK_BACKOFF_MAX_SECONDS = env_int("TASK_BACKOFF_MAX_SECONDS", 600, minimum=1)
#: deliveries whose worker died mid-run (a poison job) before the job is dead
TASK_MAX_WORKER_LOSSES = env_int("TASK_MAX_WORKER_LOSSES", 3, minimum=1)
#: seconds without a heartbeat after which a worker counts as lost and the relay runs its started
#: jobs again; at least three heartbeats (WORKER_HEARTBEAT_SECONDS, 1 s, apart) fit in it, so a
#: heartbeat that comes late never makes a live worker's job run twice
WORKER_LOST_AFTER = env_int("WORKER_LOST_AFTER", 30, minimum=3)

# Alerts from the ledger (tasks.platform.services.alerts): each rule's default threshold; admins
# override them per queue or per task (Alert thresholds). Seconds unless said otherwise.
#: the oldest queued job of a queue has waited this long for a worker to start it
ALERT_LATENCY_SECONDS = env_int("ALERT_LATENCY_SECONDS", 300, minimum=1)
#: jobs have waited queued this long on a queue no live worker consumes
ALERT_NO_CONSUMER_SECONDS = env_int("ALERT_NO_CONSUMER_SECONDS", 60, minimum=1)
#: a queue runs jobs and none of them started (took a slot another job freed) for this long
ALERT_STALLED_SECONDS = env_int("ALERT_STALLED_SECONDS", 900, minimum=1)
#: more than this many jobs of a queue died within ALERT_DEAD_LETTERS_WINDOW_SECONDS
ALERT_DEAD_LETTERS = env_int("ALERT_DEAD_LETTERS", 10, minimum=1)
ALERT_DEAD_LETTERS_WINDOW_SECONDS = env_int("ALERT_DEAD_LETTERS_WINDOW_SECONDS", 300, minimum=1)
#: a schedule's due run has not been fired this long after its due time (or its latest run failed)
ALERT_SCHEDULE_LATE_SECONDS = env_int("ALERT_SCHEDULE_LATE_SECONDS", 120, minimum=1)
#: a started job ran this long past its soft time limit and no worker heartbeat lists it
ALERT_OVERRUN_SECONDS = env_int("ALERT_OVERRUN_SECONDS", 60, minimum=1)
#: an open alert resolves once its condition has been clear this long (no flapping on one good reading)
ALERT_RESOLVE_AFTER_SECONDS = env_int("ALERT_RESOLVE_AFTER_SECONDS", 60, minimum=0)
#: who gets alert e-mails (comma-separated); empty: the active superusers' addresses
ALERT_EMAILS = env_list("ALERT_EMAILS", "")

# --- the shop: payments, e-mail, webhooks, maintenance --------------------------------------
#: serve the sandbox payment gateway (/sandbox/payments/charges, test tokens tok_ok, tok_decline,
#: tok_flaky, tok_slow); on with DEBUG (`make run`), never where real payments are taken
PAYMENT_SANDBOX = env_bool("PAYMENT_SANDBOX", DEBUG)
#: the sandbox without DEBUG (the test suite, a demo deployment) only when said so; logged as a WARNING
PAYMENT_SANDBOX_WITHOUT_DEBUG = env_bool("PAYMENT_SANDBOX_WITHOUT_DEBUG", False)
if PAYMENT_SANDBOX and not DEBUG and not PAYMENT_SANDBOX_WITHOUT_DEBUG:
    raise SettingError(
        "PAYMENT_SANDBOX",
        "is on with DJANGO_DEBUG off: tok_ok would pay for any order; turn it off, or set "
        "PAYMENT_SANDBOX_WITHOUT_DEBUG=true if this is no real shop",
    )
#: the web process's port, for the sandbox gateway's default address
WEB_PORT = env_int("WEB_PORT", 8000, minimum=1)
_sandbox_url = f"http://127.0.0.1:{WEB_PORT}/sandbox/payments/charges" if PAYMENT_SANDBOX else None
#: the payment gateway's charge endpoint (POST), and the key it expects as a bearer token
PAYMENT_GATEWAY_URL = env_http_url("PAYMENT_GATEWAY_URL", _sandbox_url)
# A public default key only in development; local.env has a random one.
PAYMENT_GATEWAY_API_KEY = env_str("PAYMENT_GATEWAY_API_KEY", "sandbox-key" if PAYMENT_SANDBOX and DEBUG else None)
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
#: the Maildir of the local mail catcher (`make run`; var/local.env sets it), shown at /mail/ with
#: DEBUG on; empty: no mail page
_mail_dir = env_str("MAIL_CATCHER_DIR", "", allow_empty=True)
MAIL_CATCHER_DIR = (BASE_DIR / _mail_dir) if _mail_dir else None

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

#: largest request body on any path: refused (413) by tasks.platform.middleware.BodyLimit before it is read
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 256 * 1024, minimum=1024)
#: jobs one user may enqueue through the API a minute: a burst up to it, then refilled evenly; a
#: batch counts each job; staff are limited too. 0 turns it off. The default lets a full batch (1000) through.
API_RATE_LIMIT_PER_MINUTE = env_int("API_RATE_LIMIT_PER_MINUTE", 1200)
#: jobs one user (or token) may have not yet finished at once, counted at each API enqueue; 0: no cap.
#: Past a full batch (1000) with room to spare; a service token gets its own in admin (EnqueueLimits).
API_MAX_ACTIVE_JOBS = env_int("API_MAX_ACTIVE_JOBS", 5000)
#: the most urgent priority a user who is not an operator may ask for (0 most urgent ... 9); the
#: default priority, so users' jobs never jump ahead of the platform's own urgent work
API_USER_HIGHEST_PRIORITY = env_int("API_USER_HIGHEST_PRIORITY", 5)
if API_USER_HIGHEST_PRIORITY > 9:
    raise SettingError("API_USER_HIGHEST_PRIORITY", f"must be a priority from 0 to 9, got {API_USER_HIGHEST_PRIORITY}")
#: orders one user may place a minute (API and form alike): a card tester tries many cards fast
ORDER_RATE_LIMIT_PER_MINUTE = env_int("ORDER_RATE_LIMIT_PER_MINUTE", 10)
#: largest payload of one job as JSON (it travels in the message and is kept in the ledger)
JOB_MAX_PAYLOAD_BYTES = env_int("JOB_MAX_PAYLOAD_BYTES", 64 * 1024, minimum=1024)
#: most jobs one bulk action (retry, cancel, discard everything a search matches) may change; a
#: filter matching more is refused before anything is enqueued
JOB_BULK_MAX_JOBS = env_int("JOB_BULK_MAX_JOBS", 100_000, minimum=1)
#: a retry with an edited payload waits until a second staff user approves it (the two-person rule)
JOB_EDIT_REQUIRES_APPROVAL = env_bool("JOB_EDIT_REQUIRES_APPROVAL", False)
#: the one knob: the ASGI wrapper and Django's own check (the second line) both read this
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_BODY_BYTES
#: live-progress streams (SSE) one user may hold open across all web processes; an order page opens
#: one a step not finished (up to three), so ten leave room for a few pages; over it 429 too_many_streams
SSE_MAX_STREAMS_PER_USER = env_int("SSE_MAX_STREAMS_PER_USER", 10, minimum=1)
#: streams one web process holds open: each is a coroutine and a queue, and one id in a single
#: ledger query every 2 s; 500 keep that query small and leave the process its API latency
SSE_MAX_STREAMS_PER_PROCESS = env_int("SSE_MAX_STREAMS_PER_PROCESS", 500, minimum=1)
#: seconds after which a stream ends even if its job has not (the browser reconnects by itself): a
#: vanished client's slot is freed by then, and a reconnect costs only one check and one read
SSE_MAX_STREAM_SECONDS = env_int("SSE_MAX_STREAM_SECONDS", 300, minimum=1)

# --- tracing and logs (tasks.platform.tracing, tasks.platform.logs) ------------------------------
# Tracing is on only where an OTLP endpoint is set, under the OpenTelemetry SDK's own variable names
# (the SDK's exporter reads them too): without one, nothing is instrumented.
OTEL_EXPORTER_OTLP_ENDPOINT = env_optional_http_url("OTEL_EXPORTER_OTLP_ENDPOINT")
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = env_optional_http_url("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
TRACING = bool(OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
# Spans go over HTTP/protobuf (the one exporter installed); a gRPC collector would get nothing.
for _name in ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
    if (_protocol := env_str(_name, "http/protobuf")) != "http/protobuf":
        raise SettingError(_name, f"must be http/protobuf (the only OTLP exporter installed), got {_protocol!r}")
#: the service name on this process's spans; empty: task-platform-web, -worker, -relay or -beat
OTEL_SERVICE_NAME = env_str("OTEL_SERVICE_NAME", "", allow_empty=True)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
#: text: one readable line a record; json: one JSON object a line, with job_id, task and attempt
#: inside a task (and trace_id, span_id when tracing)
LOG_FORMAT = env_str("LOG_FORMAT", "text").strip().lower()
if LOG_FORMAT not in ("text", "json"):
    raise SettingError("LOG_FORMAT", f"must be text or json, got {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "tasks.platform.logs.json_formatter"},
    },
    "filters": {"job": {"()": "tasks.platform.logs.JobContextFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"}
        if LOG_FORMAT == "text"
        else {"class": "logging.StreamHandler", "formatter": "json", "filters": ["job"]}
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # uvicorn configured its own loggers before it loaded the application: in JSON they write here too.
    "loggers": {}
    if LOG_FORMAT == "text"
    else {name: {"handlers": ["console"], "propagate": False} for name in ("uvicorn", "uvicorn.access")},
}
