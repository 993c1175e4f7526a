"""Flow control in Flower (`python -m project.flower`): Pause / Resume of each queue on the broker
page and of a job's task on its task page, with why the job is not running; both through the flow
service (recorded via "flower") and authorized as retry is. Real Flower, worker and Redis."""

from __future__ import annotations

import html

import pytest
import requests

from tasks.models import Job
from tasks.platform.models import FlowEvent, Pause
from tasks.platform.models.jobs import HeldReason
from tasks.platform.queues import QueueName
from tasks.platform.services.flow import flow_pause
from tasks.platform.services.jobs import job_enqueue
from tests.support.flower import FLOWER_AUTH, flower_task
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def events() -> list[tuple[str, str, str, str, str | None]]:
    return [
        (event.action, event.scope, event.name, event.via, event.by.get_username() if event.by else None)
        for event in FlowEvent.objects.order_by("at", "pk")
    ]


def post_flow(flower: str, **data: str) -> requests.Response:
    """A button's form, posted from Flower's own page (same origin, with the basic-auth credentials)."""
    return requests.post(f"{flower}/flow", data=data, headers={"Origin": flower}, auth=FLOWER_AUTH, timeout=10)


def test_pausing_and_resuming_a_queue_from_the_broker_page_goes_through_the_flow_service(start_flower):
    _, flower = start_flower()
    page = requests.get(f"{flower}/broker", auth=FLOWER_AUTH, timeout=10)
    assert page.status_code == 200
    assert 'id="flow-queues"' in page.text
    assert [f'<tr data-queue="{name}">' in page.text for name in QueueName.values] == [True, True, True]
    assert page.text.count('name="action" value="pause"') == 3

    paused = post_flow(flower, action="pause", scope="queue", name="default")

    assert paused.status_code == 200, paused.text  # after the 303 back to the broker page
    assert paused.url == f"{flower}/broker?flow=paused&released=0"
    assert "Paused: its jobs wait, held, until it is resumed" in paused.text
    assert paused.text.count('name="action" value="resume"') == 1
    pause = Pause.objects.get()
    assert (pause.scope, pause.name, pause.via, pause.by) == ("queue", "default", "flower", None)
    assert events() == [("paused", "queue", "default", "flower", None)]
    job = job_enqueue(task_name="ops.ping", payload={}, queue=QueueName.DEFAULT)
    assert Job.objects.get(pk=job.id).state == Job.State.HELD

    resumed = post_flow(flower, action="resume", scope="queue", name="default")

    assert resumed.status_code == 200, resumed.text
    assert "Resumed: 1 held job released to their queue." in resumed.text
    assert not Pause.objects.exists()
    assert events()[-1] == ("resumed", "queue", "default", "flower", None)
    assert Job.objects.get(pk=job.id).state in (Job.State.PENDING, Job.State.QUEUED)


def test_an_unauthorized_cross_site_or_unknown_pause_is_refused(start_flower):
    _, flower = start_flower()
    url = f"{flower}/flow"
    data = {"action": "pause", "scope": "queue", "name": "default"}

    assert requests.post(url, data=data, timeout=5).status_code == 401
    assert requests.post(url, data=data, auth=("ops", "not-the-password"), timeout=5).status_code == 401
    # A form posted from another site (the browser would send the basic-auth credentials).
    evil = {"Origin": "https://evil.example"}
    assert requests.post(url, data=data, auth=FLOWER_AUTH, headers=evil, timeout=5).status_code == 403
    fetch = {"Sec-Fetch-Site": "cross-site"}
    assert requests.post(url, data=data, auth=FLOWER_AUTH, headers=fetch, timeout=5).status_code == 403
    assert requests.get(url, auth=FLOWER_AUTH, timeout=5).status_code == 405

    unknown = post_flow(flower, action="pause", scope="queue", name="defualt")
    assert unknown.status_code == 404
    assert "unknown queue 'defualt'; queues: critical, default, bulk" in html.unescape(unknown.text)
    assert post_flow(flower, action="drain", scope="queue", name="default").status_code == 400
    assert not Pause.objects.exists()
    assert not FlowEvent.objects.exists()


def test_read_only_flower_shows_no_buttons_and_refuses_a_pause(start_flower):
    _, flower = start_flower(env={"FLOWER_READ_ONLY": "true"})

    page = requests.get(f"{flower}/broker", auth=FLOWER_AUTH, timeout=10)
    assert page.status_code == 200
    assert 'id="flow-queues"' in page.text
    assert 'value="pause"' not in page.text
    assert post_flow(flower, action="pause", scope="queue", name="default").status_code == 403
    assert not Pause.objects.exists()


def test_the_task_page_says_why_its_job_waits_and_pauses_or_resumes_its_task(
    start_flower, start_worker, start_relay, wait_for_job
):
    _, flower = start_flower()
    start_relay()  # a resume's held jobs are sent by the relay
    job = job_enqueue(task_name="ops.ping", payload={}, queue=QueueName.DEFAULT)  # in Redis: no worker yet
    flow_pause(scope="task", name="ops.ping", via="api")  # after it was sent
    start_worker(QueueName.DEFAULT)
    held = wait_for_job(job.id, Job.State.HELD)  # the worker's start found the pause
    assert held.held_reason == HeldReason.PAUSED
    wait_until(lambda: flower_task(flower, job.id), timeout=30, what=f"Flower to see task {job.id}")

    page = requests.get(f"{flower}/task/{job.id}", auth=FLOWER_AUTH, timeout=10)

    assert page.status_code == 200
    text = html.unescape(page.text)
    assert "Why not running: <code>paused</code> its task ops.ping is paused, by the system via api since" in text
    assert 'id="task-resume"' in page.text and 'id="task-pause"' not in page.text

    resumed = post_flow(flower, action="resume", scope="task", name="ops.ping", task_id=str(job.id))

    assert resumed.status_code == 200, resumed.text
    assert resumed.url == f"{flower}/task/{job.id}?flow=resumed&released=1"
    assert "Resumed: 1 held job released to their queue." in resumed.text
    assert 'id="task-pause"' in resumed.text
    wait_for_job(job.id, Job.State.SUCCEEDED)
    assert events()[-1] == ("resumed", "task", "ops.ping", "flower", None)

    paused = post_flow(flower, action="pause", scope="task", name="ops.ping", task_id=str(job.id))

    assert paused.url == f"{flower}/task/{job.id}?flow=paused&released=0"
    assert 'id="task-resume"' in paused.text
    assert list(Pause.objects.values_list("scope", "name", "via")) == [("task", "ops.ping", "flower")]
    assert events()[-1] == ("paused", "task", "ops.ping", "flower", None)
