"""Redis restarting and the database going away: the platform recovers by itself, losing nothing."""

import json
import time

import pytest
import requests
from django.db import connection
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks.models import ApiToken, Job
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.fixtures import create_operator
from tests.support.processes import BIN_DIR, ManagedProcess, wait_until
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.django_db(transaction=True)


def test_redis_restart_mid_run_web_workers_beat_and_relay_reconnect_and_nothing_is_lost(
    own_redis, process_env, start_web, start_worker, start_relay, wait_for_job
):
    env = {"REDIS_URL": own_redis.url}
    _, token = ApiToken.issue(create_operator("dev", password="unused-pass-123"))
    headers = {"Authorization": f"Bearer {token}"}
    _, web = start_web(env)
    start_worker(QueueName.DEFAULT, env=env)
    start_relay(env=env)
    beat = ManagedProcess([str(BIN_DIR / "celery"), "-A", "project", "beat"], {**process_env, **env}, "beat").start()

    def post() -> requests.Response:
        return requests.post(f"{web}/api/jobs", json={"task": "ops.ping"}, headers=headers, timeout=30)

    try:
        before = post().json()["id"]
        wait_for_job(before, Job.State.SUCCEEDED)

        own_redis.stop()
        during = post()
        assert during.status_code == 503
        own_redis.start_again()

        # The job enqueued during the outage is published by the relay and run by the same worker.
        wait_for_job(during.json()["id"], Job.State.SUCCEEDED, timeout=60)
        # Web publishes again.
        after = post()
        assert after.status_code == 202
        wait_for_job(after.json()["id"], Job.State.SUCCEEDED, timeout=30)
        # Beat sends again: a schedule created now fires.
        every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name="after restart", task="ops.ping", interval=every_second, kwargs=json.dumps({}))
        wait_until(
            lambda: Job.objects.filter(origin="beat:after restart", state=Job.State.SUCCEEDED).exists(),
            timeout=60,
            what="beat to fire after the restart",
        )
        assert Job.objects.filter(pk__in=[before, during.json()["id"], after.json()["id"]], attempts=1).count() == 3
    finally:
        beat.stop()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="needs a database reached over TCP (CI runs PostgreSQL)")
def test_database_unavailable_during_a_task_retries_with_backoff_and_succeeds_when_it_returns(
    process_env, database_url, start_worker, wait_for_job
):
    db = connection.settings_dict
    proxy = TcpProxy((db["HOST"], int(db["PORT"] or 5432)))
    through_proxy = database_url.replace(f"{db['HOST']}:{db['PORT'] or 5432}", f"127.0.0.1:{proxy.port}")
    try:
        start_worker(QueueName.DEFAULT, env={"DATABASE_URL": through_proxy})
        proxy.cut()
        job = job_enqueue(task_name="ops.ping")  # the test process reaches the database directly

        time.sleep(4)  # the worker meets the outage and retries through the broker
        assert Job.objects.get(pk=job.id).state == Job.State.QUEUED  # nothing half-written
        proxy.restore()

        done = wait_for_job(job.id, Job.State.SUCCEEDED, timeout=60)
        assert done.attempts == 1
        assert list(done.attempt_history.values_list("outcome", flat=True)) == ["succeeded"]
    finally:
        proxy.close()
