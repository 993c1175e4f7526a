"""A lowered CPU priority holds against other sessions only through the session's autogroup, and
only a session that is the process's own may get it (tasks.platform.cpu_priority). Real
processes in real sessions: a session of its own, one whose leader is the shell that started it
(honcho's way under ``make run``), one shared with another program, and a terminal's."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support.processes import BASE_DIR

ASK = "from tasks.platform.cpu_priority import session_is_own; print(session_is_own())"
LOWER = "from tasks.platform.cpu_priority import lower; lower(7); print(open('/proc/self/autogroup').read())"
#: a process that burns a core, for the share test
SPIN = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass"

needs_autogroup = pytest.mark.skipif(
    not Path("/proc/self/autogroup").exists(), reason="this kernel has no autogroup scheduling"
)


def run(command: str, *, by_sh: bool = False) -> str:
    """Python ``command``'s output, or with ``by_sh`` the output of a script run by ``sh -c`` (as
    honcho runs a Procfile's line); in a new session."""
    argv = ["sh", "-c", command] if by_sh else [sys.executable, "-c", command]
    result = subprocess.run(argv, cwd=BASE_DIR, capture_output=True, text=True, timeout=30, start_new_session=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def beside_another_program(code: str) -> str:
    """A shell command: ``code`` run while another program of the same session runs."""
    return f'sleep 30 >/dev/null 2>&1 & other=$!; {sys.executable} -c "{code}"; status=$?; kill $other; exit $status'


def test_a_session_of_its_own():
    assert run(ASK) == "True"


def test_a_session_led_by_the_shell_that_started_it():
    assert run(f'{sys.executable} -c "{ASK}"', by_sh=True) == "True"


def test_a_session_shared_with_another_program():
    assert run(beside_another_program(ASK), by_sh=True) == "False"


def test_a_terminals_session_is_not_its_own():
    # pty.fork: the child leads a new session whose controlling terminal is the pty, as a shell in
    # a terminal window does; nothing else runs in it yet, but its user may start more there
    in_a_terminal = (
        "import os, pty, sys\n"
        "pid, fd = pty.fork()\n"
        "if pid == 0:\n"
        f"    {ASK}\n"
        "    sys.stdout.flush()\n"
        "    os._exit(0)\n"
        "out = b''\n"
        "while True:\n"
        "    try:\n"
        "        chunk = os.read(fd, 1024)\n"
        "    except OSError:\n"
        "        break\n"
        "    if not chunk:\n"
        "        break\n"
        "    out += chunk\n"
        "os.waitpid(pid, 0)\n"
        "print(out.decode().strip())\n"
    )
    assert run(in_a_terminal) == "False"


@needs_autogroup
def test_its_own_session_gets_the_nice_value_and_a_shared_one_keeps_its_own():
    assert run(LOWER).endswith("nice 7")
    shared = run(beside_another_program(LOWER), by_sh=True)
    assert shared.endswith("nice 0")


@needs_autogroup
def test_a_lowered_process_of_another_session_yields_the_core():
    """Two busy processes on one core, each in a session of its own: the lowered one gets its nice
    value's share (about a tenth at nice 10), not half as with os.nice alone."""
    lowered = f"from tasks.platform.cpu_priority import lower; lower(10)\n{SPIN}"
    spinners = [
        subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", code], cwd=BASE_DIR, start_new_session=True)
        for code in (SPIN, lowered)
    ]
    try:
        time.sleep(0.5)  # both started and spinning
        processes = [psutil.Process(spinner.pid) for spinner in spinners]
        before = [sum(process.cpu_times()[:2]) for process in processes]
        time.sleep(2)
        used = [sum(process.cpu_times()[:2]) - start for process, start in zip(processes, before, strict=True)]
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert used[1] < 0.3 * (used[0] + used[1]), used
