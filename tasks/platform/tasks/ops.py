"""Ops tasks: check from outside that every queue is consumed and the platform behaves.

Operators only (``Audience.OPERATORS``): they hold workers, fail on purpose and write to Redis.
Their payloads are strict (JSON types only, no coercion), as the API's schema states them.
"""

import math
import time
from typing import Literal

from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger
from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field

from tasks.platform.concurrency import Limit, Rate
from tasks.platform.errors import PermanentError
from tasks.platform.json_types import NO_NUL, PRINTABLE, json_int
from tasks.platform.queues import redis_client
from tasks.platform.registry import Audience, LedgerTask, public_task

logger = get_task_logger(__name__)

MAX_HOLD_SECONDS = 300
#: a hold reports progress about this often, in at most PROGRESS_MAX_REPORTS reports
PROGRESS_INTERVAL_SECONDS = 0.25
PROGRESS_MAX_REPORTS = 100


class PingPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    hold_seconds: float = Field(
        0,
        ge=0,
        le=MAX_HOLD_SECONDS,
        description="Keep the worker busy this long, to exercise time limits, failover and shutdown.",
    )
    ignore_soft_limit: bool = Field(
        False, description="Keep holding past the soft time limit, so that the hard limit ends the run."
    )


@public_task(name="ops.ping", payload=PingPayload, audience=Audience.OPERATORS)
def ops_ping(task: LedgerTask, payload: PingPayload) -> dict:
    """Report which worker and queue ran this job."""
    queue = (task.request.delivery_info or {}).get("routing_key", "")
    logger.info("ping on %s from queue %s, holding %ss", task.request.hostname, queue, payload.hold_seconds)
    if payload.hold_seconds:
        try:
            _hold(task, payload.hold_seconds)
        except SoftTimeLimitExceeded:
            if not payload.ignore_soft_limit:
                raise
            logger.warning("soft time limit ignored on request: holding until the hard limit")
            time.sleep(payload.hold_seconds)
    return {"worker": task.request.hostname, "queue": queue, "held_seconds": payload.hold_seconds}


class AccountPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    account_id: str = Field(min_length=1, max_length=64, description="The account the job works for.")
    hold_seconds: float = Field(0, ge=0, le=MAX_HOLD_SECONDS, description="Keep the worker busy this long.")


#: at most this many jobs of one account run at once (ops.account), across every worker
ACCOUNT_CONCURRENCY = 2


@public_task(
    name="ops.account",
    payload=AccountPayload,
    audience=Audience.OPERATORS,
    concurrency=Limit(ACCOUNT_CONCURRENCY, key="account_id"),
)
def ops_account(task: LedgerTask, payload: AccountPayload) -> dict:
    """Work for one account, at most ACCOUNT_CONCURRENCY at once per account: flow control's example."""
    if payload.hold_seconds:
        _hold(task, payload.hold_seconds)
    return {"account_id": payload.account_id, "worker": task.request.hostname}


class PacedPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    hold_seconds: float = Field(0, ge=0, le=MAX_HOLD_SECONDS, description="Keep the worker busy this long.")


#: ops.paced starts at most this often, across every worker
PACED_RATE = "5/s"


@public_task(name="ops.paced", payload=PacedPayload, audience=Audience.OPERATORS, rate=Rate(PACED_RATE))
def ops_paced(task: LedgerTask, payload: PacedPayload) -> dict:
    """A job whose task starts at most PACED_RATE, whatever the backlog: flow control's rate example."""
    if payload.hold_seconds:
        _hold(task, payload.hold_seconds)
    return {"worker": task.request.hostname}


class NoopPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    io_ms: float = Field(0, ge=0, le=1000, description="Wait this many milliseconds, as a short I/O call would.")


#: ops.noop and ops.fail are short by design: an enqueue_many of them travels 100 to a message
SHORT_TASK_BATCH_SIZE = 100


@public_task(name="ops.noop", payload=NoopPayload, audience=Audience.OPERATORS, batch_size=SHORT_TASK_BATCH_SIZE)
def ops_noop(task: LedgerTask, payload: NoopPayload) -> None:
    """Do nothing (or wait ``io_ms``): what the platform itself costs per job, for benchmarks and checks."""
    if payload.io_ms:
        time.sleep(payload.io_ms / 1000)


def _hold(task: LedgerTask, seconds: float) -> None:
    """Sleep ``seconds`` in even steps, reporting progress after each, so a watcher sees a live bar."""
    steps = max(1, min(PROGRESS_MAX_REPORTS, math.ceil(seconds / PROGRESS_INTERVAL_SECONDS)))
    start = time.monotonic()
    for step in range(1, steps + 1):
        held = seconds * step / steps
        # Sleep to a deadline, not for a step, so the time spent reporting does not add up.
        time.sleep(max(0.0, start + held - time.monotonic()))
        task.report_progress(100 * step // steps, f"held {held:.1f} of {seconds:g}s")


class FailPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    mode: Literal["transient", "permanent"] = Field(
        description="transient: retried with backoff; permanent: dead at once."
    )
    succeed_on_attempt: json_int(ge=1) | None = Field(
        None, description="Transient mode: fail until this attempt, then succeed."
    )
    # Bounded so the payload stays within JOB_MAX_PAYLOAD_BYTES even when every character is escaped.
    note: str = Field(
        "",
        max_length=8_000,
        pattern=NO_NUL,
        exclude_if=lambda value: not value,  # stored payloads without a note stay as they were
        description="Free text returned on success: shows that a retry replays the stored arguments, "
        "even past the 1024 characters Celery keeps of them for Flower.",
    )


class TransientOpsError(Exception):
    """What ops.fail raises in transient mode: retried like any unexpected error."""


@public_task(name="ops.fail", payload=FailPayload, audience=Audience.OPERATORS, batch_size=SHORT_TASK_BATCH_SIZE)
def ops_fail(task: LedgerTask, payload: FailPayload) -> dict:
    """Fail on purpose, to exercise retries, dead letters, alerts and manual retry in a live deployment."""
    attempt = task.request.attempt
    if payload.mode == "permanent":
        raise PermanentError(f"ops.fail: permanent failure requested (attempt {attempt})")
    if payload.succeed_on_attempt is not None and attempt >= payload.succeed_on_attempt:
        return {"succeeded_on_attempt": attempt, **({"note": payload.note} if payload.note else {})}
    raise TransientOpsError(f"ops.fail: transient failure on attempt {attempt}")


class MarkPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    key: str = Field(
        min_length=1,
        max_length=100,
        pattern=PRINTABLE,
        description="What to mark; one mark per key while it lasts (OPS_MARK_TTL_SECONDS).",
    )
    hold_seconds: float = Field(0, ge=0, le=MAX_HOLD_SECONDS, description="Hold after marking.")


def ops_mark_key(key: str) -> str:
    return f"ops:mark:{key}"


@public_task(name="ops.mark", payload=MarkPayload, audience=Audience.OPERATORS)
def ops_mark(task: LedgerTask, payload: MarkPayload) -> dict:
    """An idempotent side effect, to check at-least-once delivery in a live deployment: the mark
    is set once per key (SET NX) however often the job runs, then the task holds. Both keys expire
    after OPS_MARK_TTL_SECONDS, so marks do not pile up in the broker's Redis."""
    client = redis_client()
    ttl = settings.OPS_MARK_TTL_SECONDS
    first = bool(client.set(ops_mark_key(payload.key), task.request.id, nx=True, ex=ttl))
    if first:
        with client.pipeline() as pipe:  # MULTI/EXEC: the counter never exists without its expiry
            pipe.incr(f"{ops_mark_key(payload.key)}:effects")
            pipe.expire(f"{ops_mark_key(payload.key)}:effects", ttl)
            pipe.execute()
    if payload.hold_seconds:
        _hold(task, payload.hold_seconds)
    return {"key": payload.key, "marked_now": first}
