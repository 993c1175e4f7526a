"""Redis losing its data: the relay sends again, from the ledger, exactly the queued jobs whose
messages are gone (tasks.platform.services.broker_loss), and every job then runs once. So it does
for a job whose message a worker took and died holding, before the job began."""

import contextlib
import signal
import subprocess
import time

import pytest
import redis

from tasks.models import Job
from tasks.platform.queues import QueueName
from tasks.platform.selectors.broker_messages import MARK_KEY
from tasks.platform.selectors.queues import queue_list_keys
from tests.support.processes import BASE_DIR, BIN_DIR, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

JOBS = 20
#: the bound the README states, with the relay's grace set to 1 s: a pass, the grace, the resend
RECOVERY_BOUND_SECONDS = 10


def enqueue(env: dict[str, str], count: int) -> None:
    """``count`` ops.ping jobs, enqueued by a process of their own (its broker is the test's Redis)."""
    code = "\n".join(
        [
            "from tasks.platform.services.jobs import job_enqueue",
            f"for _ in range({count}): job_enqueue(task_name='ops.ping')",
        ]
    )
    subprocess.run([str(BIN_DIR / "python"), "manage.py", "shell", "-c", code], cwd=BASE_DIR, env=env, check=True)


def waiting(client: redis.Redis) -> int:
    """Messages waiting in the default queue's lists."""
    return sum(client.llen(key) for key in queue_list_keys()[QueueName.DEFAULT])


def relay_watching(start_relay, env: dict[str, str], client: redis.Redis) -> None:
    start_relay(env={**env, "BROKER_LOSS_GRACE_SECONDS": "1"})
    wait_until(lambda: client.exists(MARK_KEY), timeout=30, what="the relay's first look at the broker")


def test_flushdb_every_queued_job_is_sent_again_once_and_runs_once(own_redis, process_env, start_relay, start_worker):
    env = {**process_env, "REDIS_URL": own_redis.url}
    client = redis.Redis.from_url(own_redis.url)
    enqueue(env, JOBS)
    relay_watching(start_relay, env, client)
    time.sleep(2)  # a relay pass past its grace: nothing was lost, nothing is sent again
    assert waiting(client) == JOBS

    client.flushdb()
    lost_at = time.monotonic()
    wait_until(lambda: waiting(client) >= JOBS, timeout=RECOVERY_BOUND_SECONDS, what="the lost jobs sent again")
    recovered_in = time.monotonic() - lost_at
    time.sleep(2)  # another pass: the jobs now in Redis are not sent a second time
    assert waiting(client) == JOBS
    assert recovered_in < RECOVERY_BOUND_SECONDS

    start_worker(QueueName.DEFAULT, env={"REDIS_URL": own_redis.url})
    wait_until(
        lambda: Job.objects.filter(state=Job.State.SUCCEEDED).count() == JOBS, timeout=60, what="every job to run"
    )
    assert set(Job.objects.values_list("attempts", flat=True)) == {1}


def test_restart_that_lost_the_last_writes_sends_only_the_lost_jobs(own_redis, process_env, start_relay, start_worker):
    env = {**process_env, "REDIS_URL": own_redis.url}
    client = redis.Redis.from_url(own_redis.url)
    enqueue(env, JOBS)
    relay_watching(start_relay, env, client)

    # Five messages go, as the writes after the last fsync do when Redis crashes; then a restart.
    lists = [key for key in queue_list_keys()[QueueName.DEFAULT] if client.llen(key)]
    for _ in range(5):
        client.lpop(lists[0])
    assert waiting(client) == JOBS - 5
    with contextlib.suppress(redis.ConnectionError):  # the server closes the connection as it exits
        client.shutdown(save=True)
    own_redis.process.stop()
    own_redis.start_again(keep_data=True)

    wait_until(lambda: waiting(client) >= JOBS, timeout=RECOVERY_BOUND_SECONDS, what="the five lost jobs sent again")
    time.sleep(2)
    assert waiting(client) == JOBS  # the fifteen that survived were not sent again

    start_worker(QueueName.DEFAULT, env={"REDIS_URL": own_redis.url})
    wait_until(
        lambda: Job.objects.filter(state=Job.State.SUCCEEDED).count() == JOBS, timeout=60, what="every job to run"
    )
    assert set(Job.objects.values_list("attempts", flat=True)) == {1}


#: a consumer that takes one message of the default queue, unacknowledged, as a worker does, then
#: waits to be killed: what a worker killed or cut off between the take and the job's begin leaves
TAKE_ONE = """
import sys, time
from kombu import Connection
import celeryconfig
with Connection(sys.argv[1], transport_options=celeryconfig.broker_transport_options) as connection:
    channel = connection.default_channel
    while channel.basic_get("default", no_ack=False) is None:
        time.sleep(0.05)
    print("taken", flush=True)
    time.sleep(600)
"""


def test_a_message_a_dead_worker_took_is_sent_again_and_runs_once(own_redis, process_env, start_relay, start_worker):
    env = {**process_env, "REDIS_URL": own_redis.url}
    client = redis.Redis.from_url(own_redis.url)
    enqueue(env, 1)
    taker = subprocess.Popen(
        [str(BIN_DIR / "python"), "-c", TAKE_ONE, own_redis.url],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert taker.stdout.readline() == b"taken\n"  # a timeout here: the consumer took nothing
    finally:
        taker.send_signal(signal.SIGKILL)
        taker.wait()
    assert client.hlen("unacked") == 1  # Redis would give it back after the visibility timeout: an hour
    assert waiting(client) == 0

    start_relay(env={**env, "WORKER_LOST_AFTER": "3"})
    start_worker(QueueName.DEFAULT, env={"REDIS_URL": own_redis.url})
    wait_until(lambda: Job.objects.filter(state=Job.State.SUCCEEDED).exists(), timeout=20, what="the job to run")
    assert Job.objects.get().attempts == 1
    assert client.hlen("unacked") == 0  # the dead worker's delivery is forgotten: never given back
