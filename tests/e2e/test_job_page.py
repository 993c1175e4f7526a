"""The job page in a real browser (headless Chromium, driven by Playwright): log in through the
admin form, watch the progress bar move live, then see the result, without reloading.

Chromium is Debian's package at /usr/bin/chromium (`make chromium` installs it); Playwright's own
browser download is never used. Without it these tests fail, saying how to install it.
"""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Page

from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.fixtures import HOSTNAME
from tests.support.browser import browser_page
from tests.support.browser import log_in_to as log_in

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "browser-pass-123"
HOLD_SECONDS = 3

# Runs in the page before its own script: records every value the progress bar is given.
RECORD_PROGRESS = """
window.__progressSeen = [];
new MutationObserver(function (records) {
  records.forEach(function (record) {
    if (record.target.id === "job-progress") { window.__progressSeen.push(Number(record.target.value)); }
  });
}).observe(document, { attributes: true, attributeFilter: ["value"], subtree: true });
"""


@pytest.fixture
def web(start_web, broker) -> str:
    _, base = start_web()
    return base


@pytest.fixture
def owner():
    # Not staff: owners sign in through the site's login page.
    return get_user_model().objects.create_user("owner", password=PASSWORD)


def log_in_to(page: Page, base: str, path: str) -> None:
    log_in(page, base, path, username="owner", password=PASSWORD)


def wait_until_finished(page: Page) -> None:
    page.wait_for_function("document.getElementById('job-state').textContent === 'succeeded'", timeout=45_000)


def expected_result(queue: str) -> dict:
    return {"worker": f"{queue}-test@{HOSTNAME}", "queue": queue, "held_seconds": HOLD_SECONDS}


def test_job_page_shows_live_progress_then_the_result(chromium, web, owner, start_worker):
    job = job_enqueue(
        task_name="ops.ping", payload={"hold_seconds": HOLD_SECONDS}, owner=owner, queue=QueueName.CRITICAL
    )
    path = f"/jobs/{job.id}"

    with browser_page(chromium, init_script=RECORD_PROGRESS) as page:
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        log_in_to(page, web, path)
        assert page.text_content("#job-state") == "queued"
        assert page.get_attribute("#job-progress", "value") == "0"
        assert page.is_hidden("#job-result")
        page.evaluate("window.__samePage = true")  # gone if the page reloads

        start_worker(QueueName.CRITICAL)
        wait_until_finished(page)

        seen = page.evaluate("window.__progressSeen")
        assert any(0 < value < 100 for value in seen), seen
        assert seen == sorted(seen)
        assert seen[-1] == 100
        assert page.get_attribute("#job-progress", "value") == "100"
        assert page.text_content("#job-percent") == "100%"
        assert page.text_content("#job-progress-message") == f"held {HOLD_SECONDS:.1f} of {HOLD_SECONDS}s"
        assert page.is_visible("#job-result")
        assert json.loads(page.text_content("#job-result-json")) == expected_result("critical")
        assert page.is_hidden("#job-error")
        assert page.evaluate("window.__samePage === true")
        # Followed over Server-Sent Events with the session cookie, not by the polling fallback.
        assert f"{web}/api/jobs/{job.id}/events" in requested
        assert f"{web}/api/jobs/{job.id}" not in requested


def test_job_page_falls_back_to_polling_when_events_fail(chromium, web, owner, start_worker):
    job = job_enqueue(
        task_name="ops.ping", payload={"hold_seconds": HOLD_SECONDS}, owner=owner, queue=QueueName.DEFAULT
    )
    path = f"/jobs/{job.id}"

    with browser_page(chromium, init_script=RECORD_PROGRESS) as page:
        page.route("**/events", lambda route: route.abort())  # as a proxy that breaks streaming would
        polled: list[str] = []
        page.on("requestfinished", lambda request: polled.append(request.url))
        log_in_to(page, web, path)
        page.evaluate("window.__samePage = true")

        start_worker(QueueName.DEFAULT)
        wait_until_finished(page)

        assert page.get_attribute("#job-progress", "value") == "100"
        assert json.loads(page.text_content("#job-result-json")) == expected_result("default")
        assert page.evaluate("window.__samePage === true")
        assert polled.count(f"{web}/api/jobs/{job.id}") >= 2
