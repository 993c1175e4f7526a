"""The whole platform as `make run` starts it: web, three workers, beat and Flower under honcho."""

import json
import signal
import sys
import time

import psutil
import pytest
import requests
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from tasks.models import ApiToken, Job
from tasks.platform.queues import QueueName
from tests.fixtures import HOSTNAME, create_operator
from tests.support.processes import ManagedProcess, free_port, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

FLOWER_AUTH = ("ops", "e2e-flower-pass")


def get_json(url: str, **kwargs):
    try:
        response = requests.get(url, timeout=5, **kwargs)
    except requests.ConnectionError:
        return None
    return response.json() if response.status_code == 200 else None


@pytest.fixture
def platform(process_env, broker):
    """`python -m project.launcher` (what `make run` runs), stopped with SIGINT like Ctrl-C."""
    web_port, flower_port = free_port(), free_port()
    env = {
        **process_env,
        "WEB_PORT": str(web_port),
        "FLOWER_PORT": str(flower_port),
        "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH),
        "DJANGO_SUPERUSER_USERNAME": "e2e-admin",
        "DJANGO_SUPERUSER_PASSWORD": "e2e-admin-pass",
    }
    launcher = ManagedProcess([sys.executable, "-m", "project.launcher"], env, "launcher").start()
    web, flower = f"http://127.0.0.1:{web_port}", f"http://127.0.0.1:{flower_port}"
    try:
        wait_until(lambda: get_json(f"{web}/readyz"), timeout=90, interval=0.5, what="web to be ready")
        expected = {f"{queue}@{HOSTNAME}" for queue in QueueName.values}
        wait_until(
            lambda: expected <= set(get_json(f"{flower}/api/workers?refresh=1", auth=FLOWER_AUTH) or {}),
            timeout=90,
            interval=1,
            what="Flower to list the three workers",
        )
    except AssertionError:
        launcher.stop()
        raise AssertionError(launcher.log()[-5000:]) from None
    yield launcher, web, flower
    launcher.stop()


def test_platform_runs_jobs_shows_them_in_flower_fires_schedules_and_stops_cleanly(platform):
    launcher, web, flower = platform
    _, token = ApiToken.issue(create_operator("dev", password="unused-pass-123"))
    headers = {"Authorization": f"Bearer {token}"}

    # A job travels from an HTTP request to a worker and back.
    accepted = requests.post(
        f"{web}/api/jobs", json={"task": "ops.ping", "queue": "critical"}, headers=headers, timeout=10
    )
    assert accepted.status_code == 202
    job_url = f"{web}{accepted.json()['url']}"
    done = wait_until(
        lambda: (body := get_json(job_url, headers=headers)) and body["state"] == "succeeded" and body,
        timeout=30,
        what="the job to succeed",
    )
    assert done["result"]["worker"] == f"critical@{HOSTNAME}"
    assert done["result"]["queue"] == "critical"

    # Flower: closed without credentials; with them it knows the task.
    assert requests.get(f"{flower}/api/workers", timeout=5).status_code == 401
    assert requests.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    # The ledger is written before the task's events go out: Flower may list it as started first.
    tasks = wait_until(
        lambda: (
            (seen := get_json(f"{flower}/api/tasks", auth=FLOWER_AUTH))
            and seen.get(done["id"], {}).get("state") == "SUCCESS"
            and seen
        ),
        timeout=20,
        what="Flower to list the task as succeeded",
    )
    assert tasks[done["id"]]["name"] == "ops.ping"

    # A schedule row created in the database fires through the running beat, without a restart.
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.create(
        name="e2e ping", task="ops.ping", interval=every_second, queue="critical", kwargs=json.dumps({})
    )
    fired = wait_until(
        lambda: Job.objects.filter(origin="beat:e2e ping", state=Job.State.SUCCEEDED).first(),
        timeout=30,
        what="beat to fire the new schedule",
    )
    assert fired.task_name == "ops.ping"
    assert fired.queue == "critical"

    # Disabling it in the database stops it, again without a restart (beat re-reads within 5 s).
    schedule = PeriodicTask.objects.get(name="e2e ping")
    schedule.enabled = False
    schedule.save()
    time.sleep(7)
    fired_so_far = Job.objects.filter(origin="beat:e2e ping").count()
    time.sleep(3)
    assert Job.objects.filter(origin="beat:e2e ping").count() == fired_so_far

    # Ctrl-C stops every process and leaves nothing behind.
    processes = [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]
    assert len(processes) >= 8  # honcho, web, three workers, beat, relay, flower (and their children)
    launcher.popen.send_signal(signal.SIGINT)
    launcher.popen.wait(30)
    _, alive = psutil.wait_procs(processes, timeout=30)
    assert alive == [], [p.info for p in alive]
