"""Flower's pages in a real browser (headless Chromium, driven by Playwright): retry a failed task
from its page and watch the new run succeed; retry a dead letter and watch the list shrink.

Chromium is Debian's package at /usr/bin/chromium (`make chromium` installs it).
"""

from __future__ import annotations

import time

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from tasks.models import Job
from tasks.platform.queues import QueueName
from tasks.platform.services.jobs import job_enqueue
from tests.support.browser import CHROMIUM_ARGS
from tests.support.flower import FLOWER_AUTH, launch_flower, wait_for_flower_state

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def flower(process_env, broker, tmp_path):
    process, base = launch_flower(process_env, tmp_path)
    yield base
    process.stop()


def failing_job() -> Job:
    """Dead after its first run; succeeds when run again (its second attempt)."""
    return job_enqueue(task_name="ops.fail", payload={"mode": "transient", "succeed_on_attempt": 2}, max_attempts=1)


def ledger_state(base: str, job_id) -> str:
    return requests.get(f"{base}/api/task/ledger/{job_id}", auth=FLOWER_AUTH, timeout=5).json()["state"]


def reload_until(page: Page, selector: str, text: str, timeout: float = 30) -> None:
    """Flower's task page does not refresh itself: reload until it shows ``text``."""
    deadline = time.monotonic() + timeout
    while page.text_content(selector).strip() != text:
        assert time.monotonic() < deadline, f"{selector} still shows {page.text_content(selector)!r}, not {text!r}"
        page.wait_for_timeout(500)
        page.reload()


def test_retry_from_the_task_page_and_from_dead_letters(chromium, flower, start_worker, wait_for_job):
    start_worker(QueueName.DEFAULT)
    from_task_page, from_dead_letters, staying = failing_job(), failing_job(), failing_job()
    for job in (from_task_page, from_dead_letters, staying):
        wait_for_job(job.id, Job.State.DEAD)
    wait_for_flower_state(flower, from_task_page.id, "FAILURE")

    # No database access from here on: Playwright's sync API runs an event loop in this thread.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(http_credentials={"username": FLOWER_AUTH[0], "password": FLOWER_AUTH[1]})
            page = context.new_page()
            page.set_default_timeout(30_000)

            # The task page of the failed task: Retry, then the same task id runs again and succeeds.
            page.goto(f"{flower}/task/{from_task_page.id}")
            expect(page.locator("#task-page dd .badge")).to_have_text("FAILURE")
            expect(page.locator("#ledger-state")).to_have_text("dead")
            page.click("#task-retry")
            expect(page.locator("#task-retry-result")).to_contain_text("Retried")
            expect(page.locator("#ledger-state")).to_have_text("succeeded")
            page.click("#task-retry-link")
            reload_until(page, "#task-page dd .badge", "SUCCESS")
            expect(page.locator("#ledger-state")).to_have_text("succeeded")
            expect(page.locator("#task-retry")).to_have_count(0)  # nothing left to retry

            # Dead letters, from Flower's navigation: retry one, the list shrinks.
            page.click("#nav-dead-letters")
            rows = page.locator("#dead-letters tbody tr")
            expect(rows).to_have_count(2)
            expect(page.locator(f"tr[data-job-id='{from_dead_letters.id}']")).to_contain_text("gave up after 1")
            page.click(f"tr[data-job-id='{from_dead_letters.id}'] button[name=retry_one]")
            expect(page.locator("#dead-letters-notice")).to_have_text("Retried 1 job.")
            expect(rows).to_have_count(1)
            expect(page.locator(f"tr[data-job-id='{staying.id}']")).to_have_count(1)
            expect(page.locator("#nav-dead-letters")).to_have_attribute("aria-current", "page")
            for _ in range(60):
                if ledger_state(flower, from_dead_letters.id) == "succeeded":
                    break
                page.wait_for_timeout(500)
            assert ledger_state(flower, from_dead_letters.id) == "succeeded"
        finally:
            browser.close()
