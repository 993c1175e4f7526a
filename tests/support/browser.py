"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, for the page tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def browser_page(executable: str, *, init_script: str | None = None) -> Iterator[Page]:
    # No database access inside: Playwright's sync API runs an event loop in this thread, and
    # Django refuses ORM calls while one runs.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            if init_script:
                page.add_init_script(init_script)
            yield page
        finally:
            browser.close()


def log_in_to(page: Page, base: str, path: str, *, username: str, password: str) -> None:
    """Open ``path``, which sends us to the sign-in form, and sign in there."""
    page.goto(f"{base}{path}")
    assert page.url == f"{base}/accounts/login/?next={path}"
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_url(f"{base}{path}")
