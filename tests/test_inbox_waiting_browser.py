"""The inbox on day one, in a real browser (Debian's chromium driven by pytest-playwright) against
the session's running system: the queue of customers waiting for a person, a draft per
conversation, a failed reply in words, and the closed window's template box.

Never ``playwright install``: the browser is the system's ``/usr/bin/chromium``; without it these
tests are skipped with the reason. Screenshots go to docs/screenshots/.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg
from browser import (  # noqa: F401 (the module's browser fixtures)
    LIVE_S,
    SCREENSHOTS,
    browser,
    browser_context_args,
    browser_type,
    browser_type_launch_args,
    playwright,
)
from browser import conversation as _conversation
from browser import live as _live
from browser import sign_in as _sign_in
from browser import user as _user
from conftest import Stack, eventually, run_sync
from inbox_client import customer_says, phone
from playwright.sync_api import Page, expect
from test_replies import script, sends_to

from wacrm.storage.db import connect


async def _sql(database_url: str, sql: str, *args: Any) -> Any:
    conn: asyncpg.Connection = await connect(database_url, timeout=10)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def _open(page: Page, name: str) -> None:
    item = _conversation(page, name)
    expect(item).to_be_visible(timeout=LIVE_S)
    item.locator("button").click()
    expect(page.locator("#thread-title")).to_have_text(name)


def _screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))


def test_a_customer_asking_for_a_person_waits_in_the_queue_until_taken_over(
        stack: Stack, database_url: str, page: Page) -> None:
    _sign_in(page, stack.base, _user(database_url))
    name = f"Bob {uuid.uuid4().hex[:6]}"
    run_sync(customer_says(stack, phone(), "I want to talk to a human please", name))

    page.click("#waiting-view")
    expect(page.locator("#waiting-view")).to_have_attribute("aria-pressed", "true")
    item = _conversation(page, name)
    expect(item).to_have_attribute("data-waiting", "true", timeout=LIVE_S)  # arrived live in the queue
    expect(item).to_contain_text("waiting for a person since")
    expect(item).to_contain_text("the customer asked for a person")
    count = page.locator("#waiting-view [data-count=waiting]")
    expect(count).not_to_have_text("")
    assert int(count.inner_text()) >= 1
    _screenshot(page, "inbox-waiting-view.png")

    item.locator("button").click()
    note = page.locator("#thread-waiting")
    expect(note).to_be_visible()
    expect(note).to_contain_text("Waiting for a person since")
    expect(note).to_contain_text("the customer asked for a person")
    expect(page.locator("#thread-meta")).to_contain_text("owner: nobody yet")
    expect(page.locator("#thread-meta")).not_to_contain_text("the bot answers")
    _screenshot(page, "inbox-waiting-thread.png")

    page.click("#take-over")
    expect(page.locator("#thread-meta")).to_contain_text("owner: you", timeout=LIVE_S)
    expect(note).to_be_hidden()
    expect(item).to_have_count(0, timeout=LIVE_S)  # it left the queue
    page.click("#tasks-btn")  # and its handover task is done
    expect(page.locator("#task-list li", has_text=name)).to_have_count(0)


def test_a_draft_stays_with_its_conversation_across_switching_and_reload(
        stack: Stack, database_url: str, page: Page) -> None:
    _sign_in(page, stack.base, _user(database_url))
    tag = uuid.uuid4().hex[:6]
    bob, maria = f"Bob {tag}", f"María {tag}"
    run_sync(customer_says(stack, phone(), "hi", bob))
    run_sync(customer_says(stack, phone(), "hola", maria))
    box = page.locator("form#reply textarea[name=text]")

    _open(page, bob)
    box.fill("Half a reply for Bob")
    _open(page, maria)
    expect(box).to_have_value("")  # Bob's words never show under María's name
    box.fill("Una respuesta para María")
    _open(page, bob)
    expect(box).to_have_value("Half a reply for Bob")

    page.reload()
    _live(page)
    _open(page, maria)
    expect(box).to_have_value("Una respuesta para María")
    _open(page, bob)
    expect(box).to_have_value("Half a reply for Bob")
    box.press("Control+Enter")  # sent: the draft is gone
    expect(box).to_have_value("")
    expect(page.locator("#messages li", has_text="Half a reply for Bob")).to_be_visible(timeout=LIVE_S)

    page.reload()
    _live(page)
    _open(page, bob)
    expect(box).to_have_value("")
    _open(page, maria)
    expect(box).to_have_value("Una respuesta para María")


def test_a_failed_reply_shows_its_reason_in_words_where_it_happened(
        stack: Stack, database_url: str, page: Page) -> None:
    _sign_in(page, stack.base, _user(database_url))
    name, wa_id = f"Dee {uuid.uuid4().hex[:6]}", phone()
    run_sync(customer_says(stack, wa_id, "hi", name))
    run_sync(eventually(lambda: sends_to(stack, wa_id), 60, "the greeting at fake-meta"))
    run_sync(script(stack, [{"to": f"+{wa_id}", "code": 131047, "http_status": 400}]))  # Meta: window closed
    _open(page, name)

    box = page.locator("form#reply textarea[name=text]")
    box.fill("Our offer ends today")
    box.press("Control+Enter")
    failed = page.locator("#messages li", has_text="Our offer ends today")
    expect(failed).to_contain_text(re.compile("the 24-hour window had closed", re.I), timeout=LIVE_S)
    expect(failed).to_contain_text("Send an approved template")
    expect(failed).not_to_contain_text("[object Object]")
    expect(page.locator("#thread-waiting")).to_contain_text("the 24-hour window closed", timeout=LIVE_S)

    run_sync(customer_says(stack, wa_id, "are you still there?", name))
    newer = page.locator("#messages li", has_text="are you still there?")
    expect(newer).to_be_visible(timeout=LIVE_S)
    order = page.evaluate("""() => [...document.querySelectorAll('#messages > li')].map((li) => li.textContent)""")
    at = [i for i, text in enumerate(order) if "Our offer ends today" in text or "are you still there?" in text]
    assert "Our offer ends today" in order[at[0]] and len(at) == 2, order  # by when it happened, not last
    failed.scroll_into_view_if_needed()
    _screenshot(page, "inbox-failed-reply.png")

    page.click("#tasks-btn")  # the task names the customer and says why, in words
    task = page.locator("#task-list li", has_text=name).first
    expect(task).to_contain_text(re.compile("the 24-hour window had closed", re.I), timeout=LIVE_S)
    task.locator("a.customer").click()
    expect(page.locator("#thread-title")).to_have_text(name)


def test_the_closed_window_offers_templates_and_an_old_error_goes_with_a_later_success(
        stack: Stack, database_url: str, page: Page) -> None:
    _sign_in(page, stack.base, _user(database_url))
    name, wa_id = f"Eve {uuid.uuid4().hex[:6]}", phone()
    run_sync(customer_says(stack, wa_id, "hola", name))
    _open(page, name)
    expect(page.locator("#window-state")).to_contain_text("window open")
    cid = int(_conversation(page, name).get_attribute("data-conversation-id") or 0)
    # The customer's last message is 25 hours old now; the open page does not know yet.
    run_sync(_sql(database_url, "UPDATE conversations SET last_inbound_at = now() - interval '25 hours' "
                                "WHERE id = $1", cid))

    box = page.locator("form#reply textarea[name=text]")
    box.fill("Are you still interested?")
    box.press("Control+Enter")
    error = page.locator("#reply-error")
    expect(error).to_contain_text("The 24-hour window is closed", timeout=LIVE_S)
    expect(error).to_contain_text("Send an approved template")
    expect(page.locator("#templates")).to_be_visible()
    expect(page.locator("#template-source")).to_contain_text("approved templates of this number")

    page.select_option("#template-pick", "follow_up|en")
    page.locator("#template-fields input").fill(name)
    page.click("#send-template")
    expect(page.locator("#messages li", has_text=f"Hi {name}, we have not heard from you")).to_be_visible(
        timeout=LIVE_S)
    expect(error).to_be_hidden()  # the old error does not stay under the form after a success
