"""The faults the soak injects, one kind at a time or at random, each recorded with its time.

A fault either ends by itself (a killed process is started again by the restart policy, a
restarted server answers again) or is healed by the soak (a partition, a host kept down).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from tasks.platform.queues import LEASE_KEY
from tests.soak.cluster import Cluster
from tests.soak.network import REDIS_ADDRESS, Network
from tests.soak.services import SoakPostgres, SoakRedis

PARTITION_SECONDS = 30
HOST_DOWN_SECONDS = 5

KINDS = (
    "worker_host_kill",
    "pool_child_kill",
    "relay_kill",
    "beat_leader_kill",
    "worker_partition",
    "redis_restart",
    "redis_kill_aof",
    "redis_data_loss",
    "redis_flushall",
    "postgres_restart",
)


@dataclass
class Fault:
    kind: str
    at: float  # wall clock, when it struck
    target: str
    ends: float = 0.0  # wall clock, when the soak healed it (the partition's end); `at` otherwise
    workers: tuple[str, ...] = ()  # worker node names whose running jobs it interrupted


@dataclass
class Faults:
    cluster: Cluster
    network: Network
    redis: SoakRedis
    postgres: SoakPostgres
    rng: random.Random
    injected: list[Fault] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _healers: list[threading.Thread] = field(default_factory=list)

    def run(self, plan: list[str] | None, *, gap: tuple[float, float]) -> threading.Thread:
        """Inject ``plan``'s kinds in order, or random kinds until stopped, ``gap`` seconds apart."""
        kinds = iter(plan) if plan is not None else iter(lambda: self.rng.choice(KINDS), None)
        thread = threading.Thread(target=self._loop, args=(kinds, gap), name="faults", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        for healer in self._healers:
            healer.join()

    def _loop(self, kinds, gap: tuple[float, float]) -> None:
        for kind in kinds:
            if self._stop.wait(self.rng.uniform(*gap)):
                return
            fault = self.inject(kind)
            print(f"fault {len(self.injected)}: {fault.kind} on {fault.target}", flush=True)

    def inject(self, kind: str) -> Fault:
        fault = getattr(self, kind)()
        fault.ends = fault.ends or fault.at
        self.injected.append(fault)
        return fault

    def _later(self, seconds: float, heal: Callable[[], None]) -> None:
        def wait_then_heal() -> None:
            time.sleep(seconds)
            heal()

        healer = threading.Thread(target=wait_then_heal, daemon=True)
        healer.start()
        self._healers.append(healer)

    def _worker_host(self) -> str:
        return self.rng.choice(["w1", "w2"])

    def worker_host_kill(self) -> Fault:
        host = self._worker_host()
        fault = Fault("worker_host_kill", time.time(), host, workers=(f"{host}@soak",))
        self.cluster.kill_host(host, down_for=HOST_DOWN_SECONDS)
        return fault

    def pool_child_kill(self) -> Fault:
        host = self._worker_host()
        worker = self.cluster.on(host, "worker")[0]
        children = self.cluster.pool_children(worker)
        fault = Fault("pool_child_kill", time.time(), f"{host} pid {children[0] if children else '-'}")
        if children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(children), signal.SIGKILL)
            fault.workers = (f"{host}@soak",)
        return fault

    def relay_kill(self) -> Fault:
        relay = self.rng.choice([s for s in self.cluster.services if s.role == "relay"])
        fault = Fault("relay_kill", time.time(), relay.name)
        self.cluster.kill(relay)
        return fault

    def beat_leader_kill(self) -> Fault:
        beats = [s for s in self.cluster.services if s.role == "beat"]
        try:
            holder = (self.redis.client().get(LEASE_KEY) or b"").decode()
        except redis.RedisError:
            holder = ""
        pid = holder.split(":")[1] if holder.count(":") >= 2 else ""
        leader = next((b for b in beats if str(b.pid()) == pid), None) or self.rng.choice(beats)
        fault = Fault(
            "beat_leader_kill", time.time(), f"{leader.name}{'' if str(leader.pid()) == pid else ' (no leader seen)'}"
        )
        self.cluster.kill(leader)
        return fault

    def worker_partition(self) -> Fault:
        host = self.network.hosts[self._worker_host()]
        fault = Fault("worker_partition", time.time(), f"{host.name} from Redis", workers=(f"{host.name}@soak",))
        host.cut_from(REDIS_ADDRESS)

        def heal() -> None:
            host.heal(REDIS_ADDRESS)
            fault.ends = time.time()

        self._later(PARTITION_SECONDS, heal)
        fault.ends = fault.at + PARTITION_SECONDS
        return fault

    def redis_restart(self) -> Fault:
        fault = Fault("redis_restart", time.time(), "redis (SHUTDOWN, start)")
        self.redis.restart_gracefully()
        return fault

    def redis_kill_aof(self) -> Fault:
        fault = Fault("redis_kill_aof", time.time(), "redis (SIGKILL, AOF everysec)")
        self.redis.kill()
        self.redis.start()
        return fault

    def redis_data_loss(self) -> Fault:
        fault = Fault("redis_data_loss", time.time(), "redis (killed, data removed)")
        self.redis.wipe()
        self.redis.start()
        return fault

    def redis_flushall(self) -> Fault:
        """Every key gone while the server runs on: no restart, the same run id."""
        fault = Fault("redis_flushall", time.time(), "redis (FLUSHALL)")
        self.redis.client().flushall()
        return fault

    def postgres_restart(self) -> Fault:
        fault = Fault("postgres_restart", time.time(), "postgresql (restart -m fast)")
        self.postgres.restart()
        return fault
