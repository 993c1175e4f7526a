"""Lowering a process's CPU priority so that it holds against processes of other sessions.

On Linux with autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``, on by default in
most distributions), the CPU is shared fairly between sessions first, and a nice value counts only
against processes of the same session (sched(7), "The autogroup feature"). A process supervisor
that starts each program in a session of its own (honcho under ``make run``, the test harness)
therefore made ``os.nice`` alone change nothing against the web: the two shared a core half and
half. The session's autogroup gets the same nice value (written to ``/proc/self/autogroup``), but
only when every other process of the session is an ancestor of this one (the shell that started
it), and the session has no terminal: a session shared with other programs, or a terminal's that
will start more, keeps its priority for their sake, and the nice value then counts against them
only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

AUTOGROUP = Path("/proc/self/autogroup")


def lower(nice: int) -> None:
    """Lower this process's CPU priority by ``nice``, and its session's, where that is its own."""
    os.nice(nice)
    if not AUTOGROUP.exists():
        return  # not Linux, or a kernel without autogroup scheduling: the nice value is enough
    if not session_is_own():
        logger.warning(
            "the CPU priority is lowered only against processes of this one's session (session %s, shared "
            "with other programs or a terminal's)",
            os.getsid(0),
        )
        return
    try:
        AUTOGROUP.write_text(str(os.nice(0)))
    except OSError as exc:
        logger.warning("the session's CPU priority was not lowered (%s): it counts against its own processes only", exc)


def session_is_own() -> bool:
    """Whether this process's session is its own: no terminal, and every other process of the
    session one of its ancestors."""
    me = psutil.Process()
    if me.terminal() is not None:
        return False  # a terminal's session: what its user starts there later would share the priority
    session = os.getsid(0)
    ancestors = {parent.pid for parent in me.parents()}
    for process in psutil.process_iter():
        try:
            if process.pid != me.pid and os.getsid(process.pid) == session and process.pid not in ancestors:
                return False
        except (ProcessLookupError, PermissionError):
            continue  # gone meanwhile, or not ours to ask about: not in our session either way
    return True
