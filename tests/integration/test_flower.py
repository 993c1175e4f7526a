"""Flower as the platform runs it (`python -m project.flower`): retry through Flower's API with the
arguments stored in the ledger, dead letters, ledger gauges on /metrics, history kept across a
restart, offline workers purged. Real Flower, worker and Redis; nothing mocked."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import requests
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tasks.models import Job, JobAction
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.fixtures import HOSTNAME
from tests.support.flower import FLOWER_AUTH, wait_for_flower_state
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

#: what Celery keeps of a task's keyword arguments for Flower (kwargsrepr_maxsize)
CELERY_REPR_LIMIT = 1024


def dead_job(**fields) -> Job:
    """A dead letter in the ledger, as a worker leaves one (for the page; no worker needed)."""
    defaults = {
        "task_name": "ops.fail",
        "queue": QueueName.DEFAULT,
        "payload": {"mode": "permanent"},
        "state": Job.State.DEAD,
        "attempts": 1,
        "error": "PermanentError: ops.fail: permanent failure requested (attempt 1)",
        "finished_at": timezone.now() - timedelta(minutes=5),
    }
    return Job.objects.create(**{**defaults, **fields})


def test_a_dead_task_retried_through_flower_runs_again_with_its_stored_arguments(
    start_flower, start_worker, wait_for_job
):
    _, flower = start_flower()
    start_worker(QueueName.DEFAULT)
    note = "".join(f"<{i:04d}>" for i in range(500))  # 3000 characters, each part distinct
    payload = {"mode": "transient", "succeed_on_attempt": 2, "note": note}
    job = job_enqueue(task_name="ops.fail", payload=payload, max_attempts=1)
    wait_for_job(job.id, Job.State.DEAD)
    seen = wait_for_flower_state(flower, job.id, "FAILURE")
    # Flower holds only Celery's truncated repr of the arguments: replaying it would lose the note.
    assert len(note) > CELERY_REPR_LIMIT
    assert note not in seen["kwargs"]
    assert len(seen["kwargs"]) <= CELERY_REPR_LIMIT + 10

    url = f"{flower}/api/task/retry/{job.id}"
    assert requests.post(url, timeout=5).status_code == 401
    cross_site = requests.post(url, auth=FLOWER_AUTH, headers={"Origin": "https://evil.example"}, timeout=5)
    assert cross_site.status_code == 403
    assert Job.objects.get(pk=job.id).state == Job.State.DEAD

    response = requests.post(url, auth=FLOWER_AUTH, timeout=10)

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["task_id"] == str(job.id)  # the same job runs again under its id
    assert body["url"] == f"/task/{job.id}"
    done = wait_for_job(job.id, Job.State.SUCCEEDED)
    assert done.result == {"succeeded_on_attempt": 2, "note": note}
    assert done.payload == payload
    action = JobAction.objects.get(job=done)
    assert (action.kind, action.via, action.from_state) == ("retried", "flower", "dead")
    wait_for_flower_state(flower, job.id, "SUCCESS")

    again = requests.post(url, auth=FLOWER_AUTH, timeout=5)
    assert again.status_code == 409
    assert again.json()["code"] == "not_retryable"
    assert "a succeeded job cannot be retried" in again.json()["detail"]


@pytest.mark.parametrize("task_id", [str(uuid.UUID(int=7)), "not-a-job-id"])
def test_a_task_the_ledger_does_not_know_gets_a_clear_404(start_flower, task_id):
    _, flower = start_flower()

    response = requests.post(f"{flower}/api/task/retry/{task_id}", auth=FLOWER_AUTH, timeout=5)

    assert response.status_code == 404
    assert response.json() == {
        "detail": f"task {task_id} is not in the job ledger: only ledger jobs can be retried",
        "code": "not_found",
    }


def test_dead_letters_page_lists_retries_and_discards(start_flower):
    old, discarded = dead_job(attempts=5), dead_job(discarded_at=timezone.now())
    letters = [old, dead_job(task_name="webhooks.deliver", error="HTTPError: 410 Gone"), dead_job()]
    Job.objects.create(task_name="ops.ping", queue=QueueName.DEFAULT, state=Job.State.FAILED)
    _, flower = start_flower()
    page = f"{flower}/dead-letters"

    assert requests.get(page, timeout=5).status_code == 401
    html = requests.get(page, auth=FLOWER_AUTH, timeout=5).text
    assert 'id="nav-dead-letters"' in html
    assert [str(job.id) in html for job in letters] == [True, True, True]
    assert str(discarded.id) not in html
    assert "HTTPError: 410 Gone" in html
    assert '<span id="dead-letters-count">3</span>' in html

    # A form posted from another site (the browser would send the basic-auth credentials) is refused.
    forged = requests.post(
        page,
        data={"action": "discard", "job_id": [str(job.id) for job in letters]},
        headers={"Origin": "https://evil.example"},
        auth=FLOWER_AUTH,
        timeout=5,
    )
    assert forged.status_code == 403
    assert Job.objects.filter(pk__in=[job.id for job in letters], discarded_at__isnull=True).count() == 3

    same_site = {"Origin": flower}
    discard = requests.post(
        page,
        data={"action": "discard", "job_id": [str(letters[0].id), str(discarded.id)]},
        headers=same_site,
        auth=FLOWER_AUTH,
        timeout=5,
    )
    assert discard.status_code == 200  # after the 303 back to the list
    assert "Discarded 1 job. 1 job skipped" in discard.text
    assert str(letters[0].id) not in discard.text
    assert Job.objects.get(pk=letters[0].id).discarded_at is not None

    retry = requests.post(page, data={"retry_one": str(letters[1].id)}, headers=same_site, auth=FLOWER_AUTH, timeout=5)
    assert "Retried 1 job." in retry.text
    assert str(letters[1].id) not in retry.text
    assert str(letters[2].id) in retry.text
    assert Job.objects.get(pk=letters[1].id).state in (Job.State.PENDING, Job.State.QUEUED)
    kinds = set(JobAction.objects.filter(via="flower").values_list("job_id", "kind"))
    assert kinds == {(letters[0].id, "discarded"), (letters[1].id, "retried")}


def test_metrics_carry_ledger_and_queue_gauges(start_flower):
    dead_job(), dead_job(discarded_at=timezone.now())
    for _ in range(3):  # no bulk worker: they wait in Redis
        job_enqueue(task_name="ops.ping", queue=QueueName.BULK)
    _, flower = start_flower()

    assert requests.get(f"{flower}/metrics", timeout=5).status_code == 401
    text = requests.get(f"{flower}/metrics", auth=FLOWER_AUTH, timeout=5).text

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("platform_ledger_jobs", (("queue", "default"), ("state", "dead")))] == 2
    assert samples[("platform_ledger_jobs", (("queue", "bulk"), ("state", "queued")))] == 3
    assert samples[("platform_ledger_jobs", (("queue", "critical"), ("state", "queued")))] == 0
    assert samples[("platform_dead_letters", (("queue", "default"),))] == 1
    assert samples[("platform_queue_depth", (("queue", "bulk"),))] == 3
    assert samples[("platform_queue_depth", (("queue", "default"),))] == 0
    assert samples[("platform_metrics_source_up", (("source", "broker"),))] == 1
    assert "# TYPE flower_events_total counter" in text  # Flower's own metrics are still there


def test_flower_keeps_task_history_across_a_restart(start_flower, start_worker, wait_for_job):
    flower_process, flower = start_flower()
    start_worker(QueueName.DEFAULT)
    job = job_enqueue(task_name="ops.ping")
    wait_for_job(job.id, Job.State.SUCCEEDED)
    wait_for_flower_state(flower, job.id, "SUCCESS")

    flower_process.stop()
    _, flower = start_flower()

    listed = requests.get(f"{flower}/api/tasks", auth=FLOWER_AUTH, timeout=5).json()
    assert str(job.id) in listed
    assert listed[str(job.id)]["state"] == "SUCCESS"


def test_offline_workers_leave_the_list(start_flower, start_worker):
    _, flower = start_flower(env={"FLOWER_PURGE_OFFLINE_WORKERS": "1"})
    worker = start_worker(QueueName.DEFAULT, name="leaving")
    node = f"leaving@{HOSTNAME}"

    def listed() -> set[str]:
        data = requests.get(f"{flower}/workers?json=1", auth=FLOWER_AUTH, timeout=5).json()["data"]
        return {info["hostname"] for info in data}

    wait_until(lambda: node in listed(), timeout=30, what="Flower to list the worker")
    worker.stop()
    wait_until(lambda: node not in listed(), timeout=30, what="Flower to purge the offline worker")


def test_flower_cannot_start_tasks_past_the_ledger(start_flower, broker):
    _, flower = start_flower()

    for route in ("apply", "async-apply", "send-task"):
        response = requests.post(f"{flower}/api/task/{route}/ops.ping", auth=FLOWER_AUTH, json={}, timeout=5)
        assert response.status_code == 403, route
        assert response.json()["code"] == "forbidden"
    assert not Job.objects.exists()
