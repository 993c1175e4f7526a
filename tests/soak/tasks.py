"""The soak's tasks, loaded in every process through DJANGO_TASK_MODULES.

Each execution is recorded outside Redis and the ledger, in a file every host shares (one
``O_APPEND`` line per run, atomic at this size), so that the report can count runs the ledger
cannot see. The effect itself is idempotent: a file created with ``O_EXCL`` under the job's key, so
a second run of one key is deduplicated and says so.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from tasks.platform.registry import Audience, LedgerTask, ledger_task, public_task

KEY_PATTERN = r"^[A-Za-z0-9_.:/-]+$"


def soak_dir() -> Path:
    return Path(os.environ["SOAK_DIR"])


def executions_path() -> Path:
    return soak_dir() / "executions.jsonl"


def effect_path(key: str) -> Path:
    return soak_dir() / "effects" / key.replace("/", "~")


def record_execution(task: LedgerTask, key: str, *, applied: bool) -> None:
    line = {
        "key": key,
        "job": str(task.request.id),
        "attempt": task.request.attempt,
        "worker": task.request.hostname,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "applied": applied,
        "at": time.time(),
    }
    fd = os.open(executions_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def apply_effect(key: str) -> bool:
    """The side effect: True the first time for a key, False for a repeated run (deduplicated)."""
    try:
        os.close(os.open(effect_path(key), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        return False
    return True


class EffectPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=150, pattern=KEY_PATTERN)
    hold_seconds: float = Field(0, ge=0, le=30)


def _effect(task: LedgerTask, payload: EffectPayload) -> dict:
    applied = apply_effect(payload.key)
    record_execution(task, payload.key, applied=applied)
    if payload.hold_seconds:
        time.sleep(payload.hold_seconds)
    return {"key": payload.key, "applied": applied}


soak_effect = public_task(name="soak.effect", payload=EffectPayload, audience=Audience.OPERATORS)(_effect)


class TickPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")


@ledger_task(name="soak.tick", payload=TickPayload, schedulable=True)
def soak_tick(task: LedgerTask, payload: TickPayload) -> dict:
    """The 2 s schedule's task: its key is its job's id, one job per due time (beat's key)."""
    key = f"tick/{task.request.id}"
    record_execution(task, key, applied=apply_effect(key))
    return {}


class PoisonPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=150, pattern=KEY_PATTERN)


class PoisonError(Exception):
    """Raised by every run of soak.poison: retried, then dead."""


@public_task(
    name="soak.poison",
    payload=PoisonPayload,
    audience=Audience.OPERATORS,
    max_attempts=2,
    backoff_base=1,
    backoff_max=2,
)
def soak_poison(task: LedgerTask, payload: PoisonPayload) -> dict:
    """A job designed to die: it fails on every attempt."""
    record_execution(task, payload.key, applied=False)
    raise PoisonError(f"soak.poison {payload.key}: fails by design")
