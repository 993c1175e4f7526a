"""The soak's processes, host by host, under a restart policy as docker-compose's
``restart: always`` would keep them: a process that dies is started again a second later, unless
its host is down on purpose."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.soak.network import Host
from tests.support.processes import BIN_DIR, ManagedProcess

WEB_PORT = 8000
RESTART_DELAY_SECONDS = 1.0


def host_roles(worker_concurrency: int) -> dict[str, dict[str, list[str]]]:
    """What each host runs: a web host, two worker hosts (every queue, prefork), two beat hosts
    (beat and relay; one beat leads, the other stands by)."""
    celery = str(BIN_DIR / "celery")
    python = str(BIN_DIR / "python")

    def worker(name: str) -> list[str]:
        return [celery, "-A", "project", "worker", "-Q", "critical,default,bulk", "-n", f"{name}@soak",
                "--concurrency", str(worker_concurrency), "--loglevel", "INFO"]  # fmt: skip

    beat = [celery, "-A", "project", "beat", "--loglevel", "INFO"]
    relay = [python, "manage.py", "relay_jobs"]
    every_address = "0.0.0.0"  # noqa: S104 - every address of the web host's own namespace
    web = [str(BIN_DIR / "uvicorn"), "project.asgi:application", "--host", every_address, "--port", str(WEB_PORT),
           "--workers", "1", "--no-server-header"]  # fmt: skip
    return {
        "web": {"web": web},
        "w1": {"worker": worker("w1")},
        "w2": {"worker": worker("w2")},
        "b1": {"beat": beat, "relay": relay},
        "b2": {"beat": beat, "relay": relay},
    }


@dataclass
class Service:
    host: Host
    role: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: ManagedProcess | None = None
    down_until: float = 0.0
    starts: int = 0

    @property
    def name(self) -> str:
        return f"{self.host.name}/{self.role}"

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def start(self) -> None:
        self.process = ManagedProcess(self.host.exec_argv(self.argv), self.env, self.name, log_path=self.log_path)
        self.process.start()
        self.starts += 1

    def pid(self) -> int | None:
        return self.process.pid if self.alive() else None


@dataclass
class Cluster:
    services: list[Service]
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for service in self.services:
            service.start()
        threading.Thread(target=self._supervise, name="restart-policy", daemon=True).start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                for service in self.services:
                    if not service.alive() and time.monotonic() >= service.down_until:
                        if service.process is not None and service.process.popen.poll() is not None:
                            time.sleep(RESTART_DELAY_SECONDS)
                        service.start()

    def on(self, host: str, role: str | None = None) -> list[Service]:
        return [s for s in self.services if s.host.name == host and role in (None, s.role)]

    def kill(self, service: Service) -> None:
        with contextlib.suppress(ProcessLookupError, AttributeError):
            os.killpg(service.process.pid, signal.SIGKILL)

    def kill_host(self, host: str, down_for: float) -> None:
        """SIGKILL every process of the host (its namespace's pids, pool children too); the restart
        policy brings them back after ``down_for`` seconds, as a rebooted host would."""
        with self._lock:
            services = self.on(host)
            for service in services:
                service.down_until = time.monotonic() + down_for
            for pid in services[0].host.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def pool_children(self, service: Service) -> list[int]:
        try:
            return [child.pid for child in psutil.Process(service.process.pid).children(recursive=True)]
        except (psutil.Error, AttributeError):
            return []

    def all_alive(self) -> bool:
        return all(service.alive() for service in self.services)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for service in self.services:
                if service.process is not None:
                    service.process.stop(timeout=10, group=True)
