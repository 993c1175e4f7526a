"""Every Celery setting of the platform, in one place (lowercase keys).

Loaded by project.celery via ``config_from_object("celeryconfig")``. Tunables come from the
environment through project.env, so a bad value stops start-up with one line naming it.
"""

from django.conf import settings
from kombu import Queue

from project.env import SettingError, env_int
from project.redis_clients import celery_broker
from tasks.platform.queues import PRIORITY_DEFAULT, PRIORITY_HIGHEST, PRIORITY_LOWEST, QueueName

# --- broker -------------------------------------------------------------------------------
# A Redis, or the master of a Redis Sentinel (sentinel://…;sentinel://…/db, REDIS_SENTINEL_MASTER).
broker_url, _sentinel_options = celery_broker(settings.REDIS_URL, settings.REDIS_SENTINEL_MASTER)
# Workers, beat and Flower wait for Redis at start-up instead of exiting.
broker_connection_retry_on_startup = True
# A publish from a web request must fail fast when Redis is down (the view answers 503 and
# the ledger keeps the job pending), not hang the request.
broker_connection_timeout = 3
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}

# --- time limits ----------------------------------------------------------------------------
# Soft limit: the task gets SoftTimeLimitExceeded and can clean up. Hard limit: the worker
# child is killed and replaced. Tasks may set tighter limits of their own.
task_soft_time_limit = env_int("TASK_SOFT_TIME_LIMIT", 600, minimum=1)
task_time_limit = env_int("TASK_TIME_LIMIT", 660, minimum=1)
if task_time_limit <= task_soft_time_limit:
    raise SettingError(
        "TASK_TIME_LIMIT", f"({task_time_limit}s) must exceed TASK_SOFT_TIME_LIMIT ({task_soft_time_limit}s)"
    )

# With Redis, a message not acknowledged within the visibility timeout is delivered again.
# It must outlast the longest task (its hard limit), or a running task would be duplicated.
broker_visibility_timeout = env_int("BROKER_VISIBILITY_TIMEOUT", 3600, minimum=1)
if broker_visibility_timeout <= task_time_limit:
    raise SettingError(
        "BROKER_VISIBILITY_TIMEOUT",
        f"({broker_visibility_timeout}s) must exceed TASK_TIME_LIMIT ({task_time_limit}s)",
    )

broker_transport_options = {
    "visibility_timeout": broker_visibility_timeout,
    # Ten priority lists per queue; a worker drains the most urgent list first.
    "priority_steps": list(range(PRIORITY_HIGHEST, PRIORITY_LOWEST + 1)),
    "sep": ":",
    "queue_order_strategy": "priority",
    # How often a worker looks for unacknowledged messages past the visibility timeout (those of
    # a worker that died) and puts them back: every interval, scanning each time.
    "unacked_restore_interval": env_int("BROKER_UNACKED_RESTORE_INTERVAL", 10, minimum=1),
    "unacked_restore_throttle": 1,
    "socket_connect_timeout": 3,
    "socket_timeout": 10,
    # No retry_on_timeout: kombu batches publishes (enqueue_many) only on connections that
    # never silently retry a pipeline, which could push a message twice.
    **_sentinel_options,
}

# --- queues and routes ----------------------------------------------------------------------
task_queues = [Queue(name, routing_key=name) for name in QueueName.values]
task_default_queue = QueueName.DEFAULT.value
task_create_missing_queues = False
task_routes = {
    "ops.*": {"queue": QueueName.DEFAULT.value},
    "webhooks.*": {"queue": QueueName.DEFAULT.value},
    "notifications.*": {"queue": QueueName.DEFAULT.value},
    "reports.*": {"queue": QueueName.BULK.value},
    # The order workflow is what customers wait for.
    "orders.validate_payment": {"queue": QueueName.CRITICAL.value},
    "orders.reserve_inventory": {"queue": QueueName.CRITICAL.value},
    "orders.send_confirmation": {"queue": QueueName.CRITICAL.value},
    # A quote is a short read of the catalogue, asked for through the API.
    "orders.quote": {"queue": QueueName.DEFAULT.value},
    # Shop housekeeping fired by beat.
    "orders.prune_cancelled": {"queue": QueueName.DEFAULT.value},
    "orders.alert_stuck_pending": {"queue": QueueName.DEFAULT.value},
}
# Without this a message with no priority lands in list 0, the most urgent one.
task_default_priority = PRIORITY_DEFAULT

# --- reliability ------------------------------------------------------------------------------
# Acknowledge after the task ran, so a task whose worker dies is delivered again
# (at-least-once: tasks must be idempotent).
task_acks_late = True
# A worker child killed mid-task (OOM, SIGKILL) puts the message back instead of acking it.
task_reject_on_worker_lost = True
# One message at a time per process: long tasks do not hold others hostage in a prefetch
# buffer, and in-queue priorities are honoured.
worker_prefetch_multiplier = 1
# On a broker connection loss, late-ack tasks already running cannot be acked any more and will
# be delivered again; cancel them rather than let two copies run.
worker_cancel_long_running_tasks_on_connection_loss = True
# The job ledger in the database is the result store; Redis keeps no results.
task_ignore_result = True
# Celery's Django fixup closes the database connections after every task unless told otherwise: a
# new PostgreSQL connection (a handshake and a server process) per job. Never close them here;
# tasks.platform.signals closes them as Django does per request: when broken or older than CONN_MAX_AGE.
# Private API (Celery): the Django fixup's CELERY_DB_REUSE_MAX is undocumented; no setting stops its closing.
CELERY_DB_REUSE_MAX = 2**31

# A message the worker cannot decode marks its job dead in the ledger (Celery only logs it).
worker_consumer = "tasks.platform.worker:LedgerConsumer"

# --- serialization: JSON only, never pickle --------------------------------------------------
accept_content = ["json"]
task_serializer = "json"
result_serializer = "json"
event_serializer = "json"
result_accept_content = ["json"]

# --- monitoring: Flower sees every worker and every task -------------------------------------
worker_send_task_events = True
# No "task-sent" event: the ledger already records every queued job (API, admin, /api/queues), and
# the event would add a Redis PUBLISH to every enqueue. Flower shows a task from
# the moment a worker receives it.
task_send_sent_event = False

# --- beat: schedules live in the database, edited in Django admin -----------------------------
# django-celery-beat's DatabaseScheduler, subclassed: one leader at a time (a Redis lease), each run
# a ledger job whose key is its due time, and a missed-run policy (see tasks/beat.py).
beat_scheduler = "tasks.platform.beat:LeaderScheduler"
timezone = settings.TIME_ZONE
enable_utc = True
