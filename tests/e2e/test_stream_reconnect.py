"""The job page in a real browser when its streams end before the job does (their lifetime is
capped, SSE_MAX_STREAM_SECONDS): the EventSource reconnects and the page follows the job to its
end over Server-Sent Events, without falling back to polling."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model

from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.e2e.test_job_page import PASSWORD, RECORD_PROGRESS, expected_result, log_in_to, wait_until_finished
from tests.support.browser import browser_page

pytestmark = pytest.mark.django_db(transaction=True)

HOLD_SECONDS = 6


def test_the_job_page_follows_a_job_that_outlives_its_streams(chromium, start_web, broker, start_worker):
    owner = get_user_model().objects.create_user("owner", password=PASSWORD)
    _, web = start_web(env={"SSE_MAX_STREAM_SECONDS": "2"})
    job = job_enqueue(
        task_name="ops.ping", payload={"hold_seconds": HOLD_SECONDS}, owner=owner, queue=QueueName.CRITICAL
    )
    path = f"/jobs/{job.id}"

    with browser_page(chromium, init_script=RECORD_PROGRESS) as page:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        log_in_to(page, web, path)
        page.evaluate("window.__samePage = true")

        start_worker(QueueName.CRITICAL)
        wait_until_finished(page)

        assert json.loads(page.text_content("#job-result-json")) == {
            **expected_result("critical"),
            "held_seconds": HOLD_SECONDS,
        }
        seen = page.evaluate("window.__progressSeen")
        assert any(0 < value < 100 for value in seen), seen
        assert page.evaluate("window.__samePage === true")
        # Streams of 2 s for a job of more: reconnected, and never polled.
        assert requested.count(f"{web}/api/jobs/{job.id}/events") >= 2, requested
        assert f"{web}/api/jobs/{job.id}" not in requested
