"""The web inbox in a real browser: Debian's chromium driven by pytest-playwright, against the
session's running system (real PostgreSQL and broker, the worker, fake-meta posting delivery
statuses back to the webhook). The customer's side is signed webhook bodies, as Meta sends them.

Never ``playwright install``: the browser is the system's ``/usr/bin/chromium`` (``make test``
installs it with apt where it can). Without it these tests are skipped with the reason.

Screenshots of the three panes (wide) and of the phone layout are written to docs/screenshots/.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from browser import (  # noqa: F401 (the module's browser fixtures)
    LIVE_S,
    PHONE,
    SCREENSHOTS,
    WIDE,
    browser,
    browser_context_args,
    browser_type,
    browser_type_launch_args,
    playwright,
)
from browser import conversation as _conversation
from browser import sign_in as _sign_in
from browser import user as _user
from conftest import Stack, eventually, run_sync
from inbox_client import customer_says, phone
from playwright.sync_api import APIResponse, Browser, Page, Route, expect
from test_replies import script, sends_to
from test_templates import body_of

from wacrm.storage.db import connect


def test_sign_in_shows_a_wrong_password_inline(stack: Stack, database_url: str, page: Page) -> None:
    email = _user(database_url, "agent")
    page.goto(stack.base + "/login")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("wrong")
    expect(page).to_have_url(stack.base + "/login")


def test_a_person_sees_a_message_arrive_takes_over_replies_and_sees_the_tick_move(
        stack: Stack, database_url: str, browser: Browser) -> None:
    email = _user(database_url, "agent")
    context = browser.new_context(viewport=WIDE)
    page = context.new_page()
    try:
        _sign_in(page, stack.base, email)
        page.evaluate("window.__sameLoad = true")  # gone if anything reloads the page

        name, wa_id = f"Ana {uuid.uuid4().hex[:6]}", phone()
        run_sync(customer_says(stack, wa_id, "Hola, do you ship to Lisbon?", name))
        item = _conversation(page, name)
        expect(item).to_be_visible(timeout=LIVE_S)  # arrived live, without reloading
        expect(item).to_have_class(re.compile(r"\bunread\b"))

        item.locator("button").click()
        thread = page.locator("#messages")
        expect(thread.locator("[data-message-id]", has_text="do you ship to Lisbon")).to_be_visible()
        expect(page.locator("#window-state")).to_contain_text("window open")

        page.click("#take-over")
        expect(page.locator("#thread-meta")).to_contain_text("owner: you", timeout=LIVE_S)
        expect(page.locator("#hand-back")).to_be_visible()

        reply = f"Yes, we ship to Lisbon ({uuid.uuid4().hex[:4]})"
        box = page.locator("form#reply textarea[name=text]")
        box.fill(reply)
        box.press("Control+Enter")
        expect(box).to_have_value("")
        mine = thread.locator("[data-message-id]", has_text=reply)
        expect(mine).to_be_visible(timeout=LIVE_S)  # the ledger row became a sent message
        # fake-meta posts "delivered" (then "read") back to the webhook; the tick follows live
        expect(mine.locator(".tick")).to_have_attribute("data-status", re.compile(r"^(delivered|read)$"),
                                                        timeout=LIVE_S)
        assert page.evaluate("window.__sameLoad === true")

        page.fill("#note-form textarea[name=note]", "Asked about shipping to Lisbon")
        page.click("#note-form button[type=submit]")
        expect(page.locator("#notes")).to_contain_text("Asked about shipping to Lisbon")
        page.click("#refresh-intel")
        expect(page.locator("#intel")).to_contain_text("Refreshed", timeout=LIVE_S)
        box.focus()

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "inbox-wide.png"))
        page.set_viewport_size(PHONE)
        expect(page.locator("#thread-pane")).to_be_visible()
        expect(page.locator("#list-pane")).to_be_hidden()  # one pane at a time on a phone
        page.screenshot(path=str(SCREENSHOTS / "inbox-phone-thread.png"))
        page.click("#back")
        expect(page.locator("#list-pane")).to_be_visible()
        expect(page.locator("#thread-pane")).to_be_hidden()
        page.screenshot(path=str(SCREENSHOTS / "inbox-phone-list.png"))
    finally:
        context.close()


def test_an_answer_from_before_an_action_arriving_last_does_not_undo_it(
        stack: Stack, database_url: str, page: Page) -> None:
    """Live refetches overlap: on a loaded machine the thread's answer from before "Refresh" can come
    back after the answer from after it. The pane keeps showing the newer one."""
    email = _user(database_url, "agent")
    _sign_in(page, stack.base, email)
    name, wa_id = f"Dee {uuid.uuid4().hex[:6]}", phone()
    run_sync(customer_says(stack, wa_id, "hello there", name))
    item = _conversation(page, name)
    expect(item).to_be_visible(timeout=LIVE_S)
    cid = item.get_attribute("data-conversation-id")
    item.locator("button").click()
    intel = page.locator("#intel")
    expect(intel).to_have_text("Not computed yet.")

    held: list[tuple[Route, APIResponse]] = []

    def hold_the_first_answer(route: Route) -> None:
        if route.request.method == "GET" and not held:
            held.append((route, route.fetch()))  # the server answers now; the page hears it at the end
        else:
            route.continue_()

    page.route(f"**/api/v1/conversations/{cid}", hold_the_first_answer)
    run_sync(customer_says(stack, wa_id, "and another thing", name))  # a live event: the thread refetches
    for _ in range(LIVE_S // 100):
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the new message did not make the open thread refetch"

    page.click("#refresh-intel")
    expect(intel).to_contain_text("Refreshed", timeout=LIVE_S)
    route, stale = held[0]
    with page.expect_event("requestfinished", lambda r: r == route.request, timeout=LIVE_S):
        route.fulfill(response=stale)
    page.wait_for_timeout(300)  # the page reads and handles the late answer
    assert "Refreshed" in intel.inner_text()


def test_a_person_snoozes_a_notification(stack: Stack, database_url: str, page: Page) -> None:
    email = _user(database_url, "agent")
    _sign_in(page, stack.base, email)
    name, wa_id = f"Bea {uuid.uuid4().hex[:6]}", phone()
    run_sync(customer_says(stack, wa_id, "hello", name))
    expect(_conversation(page, name)).to_be_visible(timeout=LIVE_S)
    cid = _conversation(page, name).get_attribute("data-conversation-id")

    page.click("#bell-btn")
    run_sync(customer_says(stack, wa_id, "I want to talk to a human please", name))
    note = page.locator(f"#bell-list [data-for-conversation='{cid}']")
    expect(note).to_be_visible(timeout=LIVE_S)  # the handover notification rings the bell live
    note.locator("button.snooze").click()
    expect(note).to_have_count(0, timeout=LIVE_S)  # hidden until its time comes


def test_an_admin_deletes_and_restores_a_conversation(stack: Stack, database_url: str, page: Page) -> None:
    email = _user(database_url, "admin")
    name, wa_id = f"Cid {uuid.uuid4().hex[:6]}", phone()
    run_sync(customer_says(stack, wa_id, "please forget me", name))
    _sign_in(page, stack.base, email)
    page.fill("#filters input[name=q]", name)
    item = _conversation(page, name)
    expect(item).to_be_visible(timeout=LIVE_S)
    item.locator("button").click()
    expect(page.locator("#thread-title")).to_have_text(name)

    page.once("dialog", lambda d: d.accept())
    page.click("#delete")
    expect(item).to_have_count(0, timeout=LIVE_S)
    page.click("#deleted-btn")
    deleted = page.locator("#deleted-list li", has_text=name)
    expect(deleted).to_be_visible(timeout=LIVE_S)
    deleted.locator("button", has_text="Restore").click()
    expect(deleted).to_have_count(0, timeout=LIVE_S)
    expect(_conversation(page, name)).to_be_visible(timeout=LIVE_S)



def test_outside_the_window_the_reply_box_is_a_template_picker(stack: Stack, database_url: str, page: Page) -> None:
    """The approved templates of the conversation's number, one field per parameter with Meta's example as
    its hint, a live preview of the text, Send only once every field is filled; sent end to end."""
    email = _user(database_url, "agent")
    name, wa_id = f"Dee {uuid.uuid4().hex[:6]}", phone()
    run_sync(customer_says(stack, wa_id, "hola", name))
    _sign_in(page, stack.base, email)
    item = _conversation(page, name)
    expect(item).to_be_visible(timeout=LIVE_S)
    cid = int(item.get_attribute("data-conversation-id") or 0)
    run_sync(_window_closed(database_url, cid))  # the customer wrote 25 hours ago
    item.locator("button").click()

    expect(page.locator("#window-state")).to_contain_text("window is closed")
    expect(page.locator("form#reply textarea[name=text]")).to_be_disabled()
    pick = page.locator("#template-pick")
    expect(pick.locator("option", has_text="appointment_reminder · en · utility")).to_have_count(1)
    expect(pick.locator("option", has_text="back_in_stock")).to_have_count(0)  # paused at Meta: not offered
    expect(pick.locator("option", has_text="abandoned_cart")).to_have_count(0)  # rejected
    pick.select_option("appointment_reminder|en")
    fields, send, preview = page.locator("#template-fields input"), page.locator("#send-template"), \
        page.locator("#template-preview")
    expect(fields).to_have_count(3)
    expect(fields.nth(0)).to_have_attribute("placeholder", "Ana")  # Meta's examples as hints
    expect(fields.nth(1)).to_have_attribute("placeholder", "Friday 14 March")
    expect(send).to_be_disabled()
    fields.nth(0).fill(name)
    expect(preview).to_contain_text(f"Reminder for {name}")
    expect(preview).to_contain_text("Your appointment is on {{1}} at {{2}}.")
    fields.nth(1).fill("Friday 14 March")
    expect(send).to_be_disabled()  # one field is still empty
    fields.nth(2).fill("10:00")
    expect(preview).to_contain_text("Your appointment is on Friday 14 March at 10:00.")
    expect(preview).to_contain_text("[Yes] [Change it]")
    expect(send).to_be_enabled()
    send.click()
    sent = page.locator("#messages li", has_text=f"Reminder for {name}")
    expect(sent).to_be_visible(timeout=LIVE_S)
    expect(sent).to_contain_text("Your appointment is on Friday 14 March at 10:00.")
    expect(fields).to_have_count(0)  # the picker is ready for another

    async def at_meta() -> list[dict[str, Any]]:
        return [x for x in await sends_to(stack, wa_id) if x["body"].get("type") == "template"]
    (one,) = run_sync(eventually(at_meta, 60, "the template at fake-meta"))
    assert one["body"]["template"]["components"] == [
        {"type": "header", "parameters": [{"type": "text", "text": name}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Friday 14 March"},
                                        {"type": "text", "text": "10:00"}]}]
    expect(sent).to_have_attribute("data-status", "read", timeout=LIVE_S)  # Meta's statuses came back
    page.screenshot(path=str(SCREENSHOTS / "inbox-template-sent.png"))


def test_the_picker_shows_the_marketing_opt_out_and_an_account_restriction(stack: Stack, database_url: str,
                                                                           page: Page) -> None:
    email = _user(database_url, "agent")
    name, wa_id = f"Flo {uuid.uuid4().hex[:6]}", phone()
    run_sync(customer_says(stack, wa_id, "hola", name))
    _sign_in(page, stack.base, email)
    item = _conversation(page, name)
    expect(item).to_be_visible(timeout=LIVE_S)
    cid = int(item.get_attribute("data-conversation-id") or 0)
    run_sync(_window_closed(database_url, cid))
    run_sync(stack.post(body_of("65_user_preferences_stop.json", wa_id=wa_id)))  # the customer said stop
    run_sync(eventually(lambda: _flag(database_url, wa_id), 60, "the marketing opt-out stored"))
    item.locator("button").click()
    expect(page.locator("#contact")).to_contain_text("opted out: no marketing templates")
    welcome = page.locator("#template-pick option", has_text="welcome · en · marketing")
    expect(welcome).to_be_disabled()
    expect(welcome).to_contain_text("the customer stopped marketing")
    expect(page.locator("#template-pick option", has_text="payment_received · en · utility")).to_be_enabled()

    until = int(time.time()) + 86400
    restriction = [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": until}]
    run_sync(stack.post(body_of("67_account_restriction.json", restriction_info=restriction)))
    try:
        note = page.locator("#account-restriction")
        for _ in range(60):  # the restriction arrives through the worker; the page shows it on its next load
            page.locator("#conversations [data-conversation-id]", has_text=name).locator("button").click()
            if note.is_visible():
                break
            page.wait_for_timeout(1000)
        expect(note).to_contain_text("Meta restricted business-initiated messages from this account until")
        page.select_option("#template-pick", "payment_received|en")
        page.locator("#template-fields input").nth(0).fill(name)
        page.locator("#template-fields input").nth(1).fill("$5")
        expect(page.locator("#send-template")).to_be_disabled()
    finally:  # a newer restriction without business-initiated messaging lifts it
        run_sync(stack.post(body_of("67_account_restriction.json", at=int(time.time()) + 2, restriction_info=[])))


async def _flag(database_url: str, wa_id: str) -> bool:
    conn = await connect(database_url, timeout=10)
    try:
        return bool(await conn.fetchval("SELECT marketing_opt_out FROM contacts WHERE wa_id = $1", wa_id))
    finally:
        await conn.close()


async def _window_closed(database_url: str, cid: int) -> None:
    conn = await connect(database_url, timeout=10)
    try:
        await conn.execute("UPDATE conversations SET last_inbound_at = now() - interval '25 hours' WHERE id = $1", cid)
    finally:
        await conn.close()



def _valid_phone() -> str:
    return "35191" + str(uuid.uuid4().int)[:7]


def test_a_person_fixes_the_phone_from_the_task_and_retries_the_failed_reply(
        stack: Stack, database_url: str, page: Page) -> None:
    email = _user(database_url, "agent")
    name, wrong, right = f"Eva {uuid.uuid4().hex[:6]}", phone(), _valid_phone()
    run_sync(script(stack, [{"to": f"+{wrong}", "code": 131026, "http_status": 400}]))  # not on WhatsApp
    _sign_in(page, stack.base, email)
    run_sync(customer_says(stack, wrong, "hello, are you open?", name))
    item = _conversation(page, name)
    expect(item).to_be_visible(timeout=LIVE_S)
    cid = item.get_attribute("data-conversation-id")
    item.locator("button").click()
    failed = page.locator("#messages li.failed")
    expect(failed).to_be_visible(timeout=LIVE_S)  # the bot's reply failed; the thread shows it live
    expect(failed.locator(".reason")).to_contain_text("could not deliver it to this number")
    expect(failed.locator("button.retry")).to_be_visible()

    page.click("#tasks-btn")  # the task links to the contact: "Fix contact", then Save
    task = page.locator(f"#task-list li[data-for-conversation='{cid}'][data-kind=invalid_recipient]")
    task.locator("button.fix-contact").click()
    phone_box = page.locator("#contact-form input[name=phone]")
    expect(phone_box).to_be_focused()
    phone_box.fill("not a number")
    page.click("#contact-form button[type=submit]")
    expect(page.locator("#contact-error")).to_contain_text("phone")
    phone_box.fill(f"+{right}")
    page.click("#contact-form button[type=submit]")
    expect(page.locator("#contact")).to_contain_text(f"+{right}", timeout=LIVE_S)

    failed.locator("button.retry").click()
    mine = page.locator("#messages li[data-message-id]", has_text="Thanks for writing")
    expect(mine).to_be_visible(timeout=LIVE_S)  # sent this time: a stored message
    expect(page.locator("#messages li.failed")).to_have_count(0)

    async def at_meta() -> list[dict[str, Any]]:
        return [x for x in await sends_to(stack, right) if "id" in (x.get("answered") or {})]
    assert len(run_sync(eventually(at_meta, 60, "the retried reply at fake-meta"))) == 1


def test_the_bot_toggle_pauses_and_resumes_the_bot(stack: Stack, database_url: str, page: Page) -> None:
    email = _user(database_url, "agent")
    name, wa_id = f"Gil {uuid.uuid4().hex[:6]}", phone()
    run_sync(customer_says(stack, wa_id, "hi", name))
    _sign_in(page, stack.base, email)
    item = _conversation(page, name)
    expect(item).to_be_visible(timeout=LIVE_S)
    cid = int(item.get_attribute("data-conversation-id") or 0)
    item.locator("button").click()
    toggle = page.locator("#bot-toggle")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "true", timeout=LIVE_S)
    expect(toggle).to_have_text("Resume bot")
    assert run_sync(_bot_paused(database_url, cid)) is True
    toggle.click()
    expect(toggle).to_have_attribute("aria-pressed", "false", timeout=LIVE_S)
    assert run_sync(_bot_paused(database_url, cid)) is False


async def _bot_paused(database_url: str, cid: int) -> bool:
    conn = await connect(database_url, timeout=10)
    try:
        return bool(await conn.fetchval("SELECT bot_paused FROM conversations WHERE id = $1", cid))
    finally:
        await conn.close()
