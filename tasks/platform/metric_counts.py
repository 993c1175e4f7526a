"""Job counts and duration histograms, aggregated in Redis per minute, queue and task.

The engine calls ``count`` once per transition call, after its transaction (an insert of 5,000
jobs, a batch's claim or its successes: one call each), with the transition's live events
(tasks.platform.engine.events) riding along. Each call is one pipelined round trip: the events'
PUBLISHes and HINCRBYs into two hashes:

- the minute's (``platform:metrics:minute:<minute since the epoch>``, listed in the sorted set
  ``platform:metrics:minutes``, expiring MINUTE_TTL after its last write): the relay copies it into
  the database (tasks.platform.services.metric_history), whole, however often, so a minute's row is
  always the minute's full count and two relays copying it agree;
- the running totals (``platform:metrics:totals``), never reset, which Flower's ``/metrics``
  serves as Prometheus counters and histograms.

A field is ``<measure>|<queue>|<task>``: a count (``enqueued``, ``started``, ``succeeded``,
``failed``, ``dead``), a histogram bucket (``wait:<i>``, enqueue to start; ``run:<i>``, start to
end; tasks.platform.histogram), or a sum in microseconds (``wait_us``, ``run_us``).

Counting never fails a job: when Redis does not answer, the counts of that call are lost (logged,
at most once a minute per process) and the process stops trying for OUTAGE_PAUSE_SECONDS, so an
outage does not slow every job by a connect timeout.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from tasks.platform import histogram
from tasks.platform.queues import platform_redis

logger = logging.getLogger(__name__)

MINUTE_PREFIX = "platform:metrics:minute:"
MINUTES = "platform:metrics:minutes"
TOTALS = "platform:metrics:totals"
#: a minute's hash lives this long after its last write: the relay copies it long before, and a
#: relay that is down for longer loses those minutes only
MINUTE_TTL = 6 * 3600
#: counts a transition records
COUNTS = ("enqueued", "started", "succeeded", "failed", "dead")
#: outcomes of a run (``count``'s ``ended``)
OUTCOMES = ("succeeded", "failed", "dead")
#: after a failed write, this process records nothing for this long
OUTAGE_PAUSE_SECONDS = 5.0
#: a lost count is logged at most this often per process
LOG_EVERY_SECONDS = 60.0

_outage = {"until": 0.0, "logged_at": float("-inf"), "lost": 0}


@dataclass
class Tally:
    """What one queue and task did over a period: counts, and durations as histograms."""

    enqueued: int = 0
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    wait: list[int] = field(default_factory=histogram.empty)
    run: list[int] = field(default_factory=histogram.empty)
    wait_us: int = 0
    run_us: int = 0

    @classmethod
    def of(cls, row: object) -> Tally:
        """The tally of an object with the same fields (a JobMetric row)."""
        tally = cls(**{name: getattr(row, name) for name in (*COUNTS, "wait_us", "run_us")})
        tally.wait, tally.run = histogram.merged([row.wait]), histogram.merged([row.run])
        return tally

    def add(self, other: Tally) -> None:
        for name in (*COUNTS, "wait_us", "run_us"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.wait = histogram.merged([self.wait, other.wait])
        self.run = histogram.merged([self.run, other.run])

    def put(self, measure: str, value: int) -> None:
        """Add a field's value (``measure`` as in the module's docstring)."""
        name, _, index = measure.partition(":")
        if index:
            if name in ("wait", "run") and index.isdigit() and int(index) < histogram.SIZE:
                getattr(self, name)[int(index)] += value
        elif name in (*COUNTS, "wait_us", "run_us"):
            setattr(self, name, getattr(self, name) + value)


def seconds_between(start: datetime | None, end: datetime) -> float | None:
    return None if start is None else (end - start).total_seconds()


def count(
    *,
    enqueued: Iterable[tuple[str, str]] = (),
    started: Iterable[tuple[str, str, float | None]] = (),
    ended: Iterable[tuple[str, str, str, float | None]] = (),
    at: float | None = None,
    publish: Iterable[tuple[str, str]] = (),
) -> None:
    """Record, in one round trip: jobs enqueued, (queue, task) each; runs started, (queue, task,
    seconds since it was queued); runs ended, (outcome, queue, task, seconds it ran). A duration
    of None is counted without a histogram entry. ``at``: the moment counted (seconds since the
    epoch; now by default). ``publish``: pub/sub messages, (channel, message) each, sent in the
    same round trip (lost with the counts when Redis does not answer)."""
    fields: Counter[str] = Counter()
    for queue, task in enqueued:
        fields[f"enqueued|{queue}|{task}"] += 1
    for queue, task, waited in started:
        _timed(fields, "started", "wait", queue, task, waited)
    for outcome, queue, task, ran in ended:
        _timed(fields, outcome, "run", queue, task, ran)
    publish = list(publish)
    if fields or publish:
        _write(fields, time.time() if at is None else at, publish)


def _timed(fields: Counter, name: str, kind: str, queue: str, task: str, seconds: float | None) -> None:
    pair = f"|{queue}|{task}"
    fields[name + pair] += 1
    if seconds is not None:
        seconds = max(seconds, 0.0)
        fields[f"{kind}:{histogram.bucket_of(seconds)}{pair}"] += 1
        fields[f"{kind}_us{pair}"] += round(seconds * 1_000_000)


def _write(fields: Counter[str], at: float, publish: list[tuple[str, str]]) -> None:
    now = time.monotonic()
    if now < _outage["until"]:
        _lost(fields, now, "Redis did not answer a moment ago")
        return
    minute = int(at // 60)
    key = f"{MINUTE_PREFIX}{minute}"
    try:
        pipe = platform_redis().pipeline(transaction=False)
        for channel, message in publish:
            pipe.publish(channel, message)
        for name, value in fields.items():
            pipe.hincrby(key, name, value)
            pipe.hincrby(TOTALS, name, value)
        if fields:
            pipe.expire(key, MINUTE_TTL)
            pipe.zadd(MINUTES, {str(minute): minute})
        pipe.execute()
    except Exception as exc:  # noqa: BLE001 - counting must never fail a job or an enqueue
        _outage["until"] = now + OUTAGE_PAUSE_SECONDS
        _lost(fields, now, f"{type(exc).__name__}: {exc}")


def _lost(fields: Counter[str], now: float, reason: str) -> None:
    _outage["lost"] += sum(value for name, value in fields.items() if name.split("|", 1)[0] in COUNTS)
    if now - _outage["logged_at"] >= LOG_EVERY_SECONDS:
        _outage["logged_at"] = now
        logger.warning("metric history: %d count(s) lost so far in this process (%s)", _outage["lost"], reason)


# -- reads (the relay's copy, Flower's /metrics) --------------------------------------------------


def _tallies(raw: dict[bytes, bytes]) -> dict[tuple[str, str], Tally]:
    out: dict[tuple[str, str], Tally] = {}
    for name, value in raw.items():
        parts = name.decode().split("|", 2)
        if len(parts) == 3:
            measure, queue, task = parts
            out.setdefault((queue, task), Tally()).put(measure, int(value))
    return out


def minutes_listed(*, until: int) -> list[int]:
    """Minutes (since the epoch) with counts not yet copied for good, up to ``until``."""
    return [int(member) for member in platform_redis().zrangebyscore(MINUTES, "-inf", until)]


def minute_tallies(minutes: list[int]) -> dict[int, dict[tuple[str, str], Tally]]:
    """Each minute's tallies per (queue, task), in one round trip."""
    pipe = platform_redis().pipeline(transaction=False)
    for minute in minutes:
        pipe.hgetall(f"{MINUTE_PREFIX}{minute}")
    return {minute: _tallies(raw) for minute, raw in zip(minutes, pipe.execute(), strict=True)}


def minutes_done(minutes: list[int]) -> None:
    """These minutes are copied for good: off the list (their hashes expire; a late count lists
    its minute again, and the next copy has it)."""
    if minutes:
        platform_redis().zrem(MINUTES, *[str(minute) for minute in minutes])


def totals() -> dict[tuple[str, str], Tally]:
    """The running totals per (queue, task)."""
    return _tallies(platform_redis().hgetall(TOTALS))
