"""Pause and resume: one service behind every door (API, admin, Flower, command).

The engine records the pause and holds or releases the jobs (tasks.platform.engine.flow); this
service checks that the queue or task exists, so a typo is an error and not a pause of nothing.
"""

from __future__ import annotations

from tasks.platform.engine import engine
from tasks.platform.models import Pause, PauseScope
from tasks.platform.queues import QueueName
from tasks.platform.registry import LEDGER_TASKS

__all__ = ["PauseScope", "UnknownTarget", "flow_pause", "flow_resume", "flow_target_check"]


class UnknownTarget(Exception):
    """No queue or task of that name (HTTP 404); the message names what exists."""


def flow_target_check(scope: str, name: str) -> None:
    if scope == PauseScope.QUEUE and name not in QueueName.values:
        raise UnknownTarget(f"unknown queue {name!r}; queues: {', '.join(QueueName.values)}")
    if scope == PauseScope.TASK and name not in LEDGER_TASKS:
        raise UnknownTarget(f"unknown task {name!r}")
    if scope not in PauseScope.values:
        raise UnknownTarget(f"unknown scope {scope!r}; scopes: {', '.join(PauseScope.values)}")


def flow_pause(*, scope: str, name: str, by=None, via: str) -> Pause:
    """Pause a queue or a task (see ``Engine.pause``); UnknownTarget when there is no such thing."""
    flow_target_check(scope, name)
    return engine().pause(scope=scope, name=name, by=by, via=via)


def flow_resume(*, scope: str, name: str, by=None, via: str) -> int:
    """Resume a queue or a task (see ``Engine.resume``): how many held jobs go again."""
    flow_target_check(scope, name)
    return engine().resume(scope=scope, name=name, by=by, via=via)
