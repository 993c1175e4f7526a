"""What a task declares of flow control, read by the engine (tasks.platform.engine.flow).

``@ledger_task(..., concurrency=Limit(2, key="account_id"))``: at most two of its jobs run at once
with the same ``account_id`` in their payload, across every worker and host (without ``key``: two
in all). ``rate=Rate("10/s", key="account_id")``: at most ten of its jobs start a second per
account. The registry fills ``CONCURRENCY`` and ``RATES`` as tasks are declared; an admin may
override either per task and per key value (``ConcurrencyOverride``, ``RateOverride``) without a
deploy. A task that declares both counts them by the same key.

``share_by="tenant_id"``: on a fair-share queue (settings.FAIR_SHARE_QUEUES) its jobs take turns
per tenant instead of per owner (``SHARE_BY``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

#: the key of a limit without one: every job of the task shares it
EVERY_JOB = "*"
#: longest key value kept (the column's length)
KEY_MAX_LENGTH = 200


@dataclass(frozen=True)
class Limit:
    """At most ``running`` jobs of a task run at once, per value of payload field ``key`` if given."""

    running: int
    key: str | None = None

    def __post_init__(self) -> None:
        if self.running < 1:
            raise ValueError(f"a concurrency limit must be at least 1, not {self.running}")

    def key_of(self, payload: dict[str, Any]) -> str:
        """The job's key: its payload's value of the field (text), or EVERY_JOB without a field."""
        if self.key is None:
            return EVERY_JOB
        return str(payload.get(self.key, ""))[:KEY_MAX_LENGTH]


#: task name -> its concurrency limit, for every task that declares one
CONCURRENCY: dict[str, Limit] = {}

#: a rate: starts, a slash, a period (s, m, h): "10/s", "100/m", "5/h"
RATE_PATTERN = re.compile(r"^\s*([1-9][0-9]{0,6})\s*/\s*([smh])\s*$")
_PERIODS = {"s": 1, "m": 60, "h": 3600}


def parse_rate(text: str) -> timedelta:
    """The time between two starts at this rate ("10/s": 0.1 s); ValueError naming the form."""
    match = RATE_PATTERN.match(text or "")
    if match is None:
        raise ValueError(f"{text!r} is not a rate: write starts/period, as 10/s, 100/m or 5/h")
    count, period = int(match[1]), _PERIODS[match[2]]
    return timedelta(seconds=period / count)


@dataclass(frozen=True)
class Rate:
    """At most so many jobs of a task start per period ("10/s"), per value of payload field ``key``."""

    rate: str
    key: str | None = None
    interval: timedelta = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", parse_rate(self.rate))

    def key_of(self, payload: dict[str, Any]) -> str:
        return EVERY_JOB if self.key is None else str(payload.get(self.key, ""))[:KEY_MAX_LENGTH]


#: task name -> its rate, for every task that declares one
RATES: dict[str, Rate] = {}


#: task name -> the payload field its jobs take turns by on a fair-share queue, instead of their owner
SHARE_BY: dict[str, str] = {}


def flow_key(task_name: str, payload: dict[str, Any]) -> str:
    """The key a job of this task counts by ("" when the task declares no limit and no rate)."""
    declared = CONCURRENCY.get(task_name) or RATES.get(task_name)
    return "" if declared is None else declared.key_of(payload)
