"""Flower's Metrics page in a real browser (headless Chromium, driven by Playwright): reached from
Flower's navigation, its four charts drawn with the history's figures, a range and a task chosen.
On failure a screenshot of the page is saved and its path is in the failure's message.

Chromium is Debian's package at /usr/bin/chromium (`make chromium` installs it).
"""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect, sync_playwright

from tasks.platform import metric_counts
from tasks.platform.services.metric_history import metrics_flush
from tests.support.browser import CHROMIUM_ARGS
from tests.support.flower import FLOWER_AUTH, launch_flower

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_metrics_page_draws_its_charts(chromium, broker, process_env, tmp_path):
    # The history of the last minutes, as workers and the relay would have left it.
    now = time.time()
    for minutes_ago in range(5):
        metric_counts.count(
            enqueued=[("default", "ops.noop")] * (10 + minutes_ago),
            started=[("default", "ops.noop", 0.002 * i) for i in range(10)],
            ended=[("succeeded", "default", "ops.noop", 0.01 * i) for i in range(9)] + [("dead", "bulk", "x.y", 1)],
            at=now - 60 * minutes_ago,
        )
    metrics_flush()
    process, flower = launch_flower(process_env, tmp_path)
    screenshot = tmp_path / "metrics-page.png"
    try:
        # No database access from here on: Playwright's sync API runs an event loop in this thread.
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            context = browser.new_context(http_credentials={"username": FLOWER_AUTH[0], "password": FLOWER_AUTH[1]})
            page = context.new_page()
            page.set_default_timeout(30_000)
            try:
                page.goto(f"{flower}/dead-letters")
                page.click("#nav-metrics")
                expect(page.locator("#nav-metrics")).to_have_attribute("aria-current", "page")
                charts = page.locator("svg.platform-chart")
                expect(charts).to_have_count(4)
                for index in range(4):
                    box = charts.nth(index).bounding_box()
                    assert box is not None and box["width"] > 300 and box["height"] > 100, box
                    assert charts.nth(index).locator("path, polyline, line").count() > 5  # lines drawn
                page.click("#metrics-ranges >> text=1h")
                expect(page.locator("#metrics-ranges [aria-current=page]")).to_have_text("1h")
                expect(page.locator("#metrics-total")).to_contain_text("60 enqueued")
                page.click("#metrics-per-task >> text=ops.noop")
                expect(page.locator("#metrics-task")).to_have_text("ops.noop")
                expect(page.locator("#metrics-total")).to_contain_text("45 succeeded, 0 failed, 0 dead")
                expect(charts).to_have_count(4)
            except Exception as exc:
                page.screenshot(path=str(screenshot), full_page=True)
                raise AssertionError(f"{exc}\nscreenshot of the page: {screenshot}") from exc
            finally:
                browser.close()
    finally:
        process.stop()
