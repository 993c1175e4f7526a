"""The processes a benchmark starts: Celery workers in a given topology (ours, raw, or Celery +
django-celery-results), and the web.

Every side starts with the same flags (pool, concurrency, prefetch, no mingle/gossip, log level),
so a figure and its counterpart differ only in what runs inside the worker.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.processes import BASE_DIR, BIN_DIR, ManagedProcess, free_port, wait_until

HOST = socket.gethostname()
#: flags every worker gets, ours and raw; the log level WARNING, so neither side pays for a log line per task
COMMON_FLAGS = ["--prefetch-multiplier", "1", "--without-mingle", "--without-gossip", "--loglevel", "WARNING"]
#: as the results describe a worker's command line
WORKER_FLAGS = f"celery -A <app> worker -Q <queue> --pool <pool> --concurrency <n> {' '.join(COMMON_FLAGS)}"

_node_numbers = itertools.count(1)


@dataclass(frozen=True)
class Topology:
    """How many worker processes, with which pool and concurrency each."""

    name: str
    pool: str
    concurrency: int
    processes: int = 1

    @property
    def label(self) -> str:
        workers = "1 worker" if self.processes == 1 else f"{self.processes} workers"
        if self.pool == "solo":
            return f"{workers}, solo pool"
        each = "" if self.processes == 1 else " each"
        return f"{workers}, {self.pool} pool, concurrency {self.concurrency}{each}"


#: the Procfile's worker-default (and worker-critical): one prefork worker, two processes
DEFAULT_TOPOLOGY = Topology("prefork-c2", "prefork", 2)
#: the Procfile's worker-bulk: one prefork worker, one process
BULK_TOPOLOGY = Topology("prefork-c1", "prefork", 1)


@dataclass(frozen=True)
class Side:
    """Ours (the platform's app, ledger and events on), raw Celery (bench.raw_app), or Celery +
    django-celery-results (bench.dcr_app)."""

    name: str
    app_module: str
    queue: str
    #: an empty queue a worker may consume while the bench fills the real one (see Workers.consume)
    idle_queue: str
    #: the DJANGO_SETTINGS_MODULE of its workers, when not the bench process's own
    settings_module: str | None = None
    #: whether its workers set Django up (Celery's Django fix-up does whenever DJANGO_SETTINGS_MODULE
    #: is set): raw Celery's must not, or the platform's worker signal handlers would run in them
    django: bool = True

    def control_app(self) -> Any:
        if self.name == "ours":
            from project.celery import app
        elif self.name == "dcr":
            from bench.dcr_app import app
        else:
            from bench.raw_app import app
        return app

    def env(self) -> dict[str, str]:
        """What its processes' environment has on top of the bench process's."""
        return {"DJANGO_SETTINGS_MODULE": self.settings_module} if self.settings_module else {}


# Ours wait on the critical queue, not the bulk one: a worker of the bulk queue alone runs at a
# lower CPU priority (BULK_WORKER_NICE), and raw Celery's run at the usual one.
OURS = Side("ours", "project", "default", idle_queue="critical")
RAW = Side("raw", "bench.raw_app", "raw", idle_queue="raw-idle", django=False)
DCR = Side("dcr", "bench.dcr_app", "dcr", idle_queue="dcr-idle", settings_module="bench.dcr_settings")


class Workers:
    """A topology's worker processes; a context manager that starts them, waits until every one
    answers a ping, and stops them all (SIGTERM, a warm shutdown, then SIGKILL) on exit."""

    def __init__(
        self, side: Side, topology: Topology, *, queues: list[str], log_dir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.side, self.topology, self.queues = side, topology, queues
        self.log_dir, self.env = log_dir, env or {}
        self.nodes: list[str] = []
        self.processes: list[ManagedProcess] = []

    def __enter__(self) -> Workers:
        self.spawn()
        try:
            self.wait_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def spawn(self) -> None:
        for _ in range(self.topology.processes):
            node = f"{self.side.name}-{self.topology.name}-{next(_node_numbers)}@{HOST}"
            argv = [
                str(BIN_DIR / "celery"), "-A", self.side.app_module, "worker",
                "-Q", ",".join(self.queues), "-n", node,
                "--pool", self.topology.pool, "--concurrency", str(self.topology.concurrency), *COMMON_FLAGS,
            ]  # fmt: skip
            log_path = self.log_dir / f"{node.split('@')[0]}.log"
            env = {**os.environ, **self.side.env(), **self.env}
            if not self.side.django:
                env.pop("DJANGO_SETTINGS_MODULE", None)
            process = ManagedProcess(argv, env, node, log_path=log_path)
            self.nodes.append(node)
            self.processes.append(process.start())

    def wait_answering(self) -> None:
        app = self.side.control_app()

        def all_answer() -> bool:
            for process in self.processes:
                if not process.alive():
                    raise SystemExit(f"worker {process.name} exited:\n{process.log()[-3000:]}")
            replies = app.control.ping(destination=self.nodes, timeout=0.5, limit=len(self.nodes))
            return {node for reply in replies for node in reply} >= set(self.nodes)

        wait_until(all_answer, timeout=90, interval=0.2, what=f"workers {self.nodes} to answer a ping")

    def consume(self, queue: str, *, instead_of: str) -> None:
        """Start consuming ``queue``, stop consuming ``instead_of``: how a drain starts, with the
        workers already up and idle (so their start-up is not timed), and how they go back to idle."""
        control = self.side.control_app().control
        for command, name in ((control.add_consumer, queue), (control.cancel_consumer, instead_of)):
            replies = command(name, destination=self.nodes, reply=True, limit=len(self.nodes), timeout=10)
            if len(replies) < len(self.nodes) or any("error" in answer for r in replies for answer in r.values()):
                raise SystemExit(f"{command.__name__} {name!r} on {self.nodes}: {replies}")

    def rss_bytes(self) -> int:
        """Resident memory of every worker process and its children (the pool), summed."""
        import psutil

        total = 0
        for process in self.processes:
            main = psutil.Process(process.pid)
            total += sum(p.memory_info().rss for p in [main, *main.children(recursive=True)])
        return total

    def stop(self) -> None:
        stop_all(self.processes)


def stop_all(processes: list[ManagedProcess], timeout: float = 30) -> None:
    """SIGTERM to all at once (a warm shutdown each: Celery takes a second or two to stop its pool),
    then SIGKILL whatever is left."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(max(0.1, deadline - time.monotonic()))
        process.kill()


@contextlib.contextmanager
def running_together(*groups: Workers) -> Iterator[None]:
    """Several topologies at once, their start-ups overlapping: every process spawned, then each
    waited for; all stopped on exit."""
    try:
        for group in groups:
            group.spawn()
        for group in groups:
            group.wait_answering()
        yield
    finally:
        stop_all([process for group in groups for process in group.processes])


def procfile_command(name: str) -> str:
    for line in (BASE_DIR / "Procfile").read_text().splitlines():
        key, sep, command = line.partition(":")
        if sep and key.strip() == name:
            return command.strip()
    raise SystemExit(f"Procfile has no {name!r} process")


def start_web(log_dir: Path) -> tuple[ManagedProcess, str]:
    """The Procfile's web line on a free port, with no API rate limit: the bench measures the API,
    not the limit. Returns the process and its base URL once /healthz answers."""
    import requests

    port = free_port()
    env = {**os.environ, "WEB_PORT": str(port), "API_RATE_LIMIT_PER_MINUTE": "0"}
    argv = ["sh", "-c", f"exec {procfile_command('web')}"]
    web = ManagedProcess(argv, env, f"web:{port}", log_path=log_dir / f"web-{port}.log").start()
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if not web.alive():
            raise SystemExit(f"web exited ({shlex.join(argv)}):\n{web.log()[-3000:]}")
        try:
            return requests.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(healthy, timeout=60, interval=0.1, what="the web process to answer /healthz")
    return web, base_url


@contextlib.contextmanager
def relay_running(log_dir: Path) -> Iterator[ManagedProcess]:
    """The Procfile's relay line (publishes delayed jobs when due, admits held ones), from its
    first pass until exit."""
    # INFO: its start-up line is how the bench knows it runs, whatever LOG_LEVEL the shell has.
    env = {**os.environ, "LOG_LEVEL": "INFO"}
    argv = ["sh", "-c", f"exec {procfile_command('relay')}"]
    log_path = log_dir / f"relay-{next(_node_numbers)}.log"
    relay = ManagedProcess(argv, env, "relay", log_path=log_path).start()

    def running() -> bool:
        if not relay.alive():
            raise SystemExit(f"relay exited ({shlex.join(argv)}):\n{relay.log()[-3000:]}")
        return "relay: publishing" in relay.log()

    try:
        wait_until(running, timeout=60, interval=0.1, what="the relay to start")
        yield relay
    finally:
        relay.stop()


def api_token(username: str) -> str:
    """A bearer token from the create_api_token command, as an operator makes one."""
    argv = [str(BIN_DIR / "python"), "manage.py", "create_api_token", username]
    done = subprocess.run(argv, cwd=BASE_DIR, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode:
        raise SystemExit(f"create_api_token failed:\n{done.stderr}")
    return done.stdout.strip()
