"""What the web inbox's browser tests share: Debian's chromium (never a browser that playwright
downloads; without it, or without playwright, the importing module is skipped with the reason),
the module-scoped Playwright and browser, and signing in.

A test module imports the fixtures by name (``from browser import browser, ...``); they are
module-scoped because a session-long sync Playwright keeps its event loop marked as running in
this thread, and every async test after the browser modules would fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip(f"browser tests skipped: {CHROMIUM} is missing (install Debian's chromium: "
                "`apt-get install -y chromium`, as `make test` does when it runs as root)", allow_module_level=True)
try:
    from playwright.sync_api import Browser, BrowserType, Locator, Page, Playwright, expect, sync_playwright
except ImportError as exc:  # the test extra is not installed
    pytest.skip(f"browser tests skipped: playwright is not installed ({exc}); `pip install -e '.[test]'`",
                allow_module_level=True)

import asyncpg  # noqa: E402
from conftest import run_sync  # noqa: E402
from inbox_client import PASSWORD, make_user  # noqa: E402

from wacrm.storage.db import connect  # noqa: E402

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WIDE = {"width": 1400, "height": 860}
PHONE = {"width": 390, "height": 844}
LIVE_S = 60_000  # ms: a loaded 2-core machine runs the pipeline, the browser and other tests at once


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright launches the system's chromium, headless, never a downloaded build."""
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "headless": True, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    pw = sync_playwright().start()
    try:
        yield pw
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def browser_type(playwright: Playwright, browser_name: str | None) -> BrowserType:
    return getattr(playwright, browser_name or "chromium")


@pytest.fixture(scope="module")
def browser(browser_type: BrowserType, browser_type_launch_args: dict[str, Any]) -> Iterator[Browser]:
    browser = browser_type.launch(**browser_type_launch_args)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="module")
def browser_context_args() -> dict[str, Any]:
    """Each test's page: a laptop screen (no device emulation, base URL or video)."""
    return {"viewport": WIDE}


def user(database_url: str, role: str = "agent") -> str:
    """A new user of the inbox (password :data:`inbox_client.PASSWORD`); returns the email."""
    async def make() -> str:
        conn: asyncpg.Connection = await connect(database_url, timeout=10)
        try:
            return (await make_user(conn, role)).email
        finally:
            await conn.close()
    return run_sync(make())


def live(page: Page) -> None:
    expect(page.locator("body[data-live=true]")).to_have_count(1, timeout=LIVE_S)  # the event stream is live


def sign_in(page: Page, base: str, email: str) -> None:
    page.goto(base + "/")
    expect(page).to_have_url(base + "/login")  # signed out: the inbox sends you to sign in
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(base + "/")
    live(page)


def conversation(page: Page, name: str) -> Locator:
    return page.locator("#conversations [data-conversation-id]", has_text=name)
