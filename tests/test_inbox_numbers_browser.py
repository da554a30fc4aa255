"""Several business numbers in the inbox, in a real browser (Debian's chromium driven by
pytest-playwright): each conversation names the number its customer wrote to, and the number
filter shows one number's conversations, also as new ones arrive live, or all of them again.

The system is :mod:`test_numbers`' own (a ``TOKEN_ENCRYPTION_KEY``, so that a second number can
store its token), not the session's shared one: a stored token there would stop its processes
at their next start. Never ``playwright install``: without ``/usr/bin/chromium`` this is skipped.
"""

from __future__ import annotations

import uuid

from browser import (  # noqa: F401 (the module's browser fixtures)
    LIVE_S,
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
from playwright.sync_api import Page, expect
from test_numbers import (  # noqa: F401 (numbers_stack: the module's own system)
    HOME,
    PORTO,
    PORTO_DISPLAY,
    WABA,
    admin_api,
    customer_writes,
    meta_tokens,
    numbers_stack,
    token,
    wacrm,
)

HOME_DISPLAY = "15550001111"  # what Meta's webhooks show for the stack's own number (it has no label)


def _add_porto(stack: Stack) -> None:
    porto_token = token()
    run_sync(meta_tokens(stack, {PORTO: porto_token}))
    added = run_sync(wacrm(stack, "numbers", "add", PORTO, "--waba-id", WABA, "--label", "Porto shop",
                           stdin=porto_token + "\n"))
    assert added.returncode == 0, added.stderr


def _conversation_exists(stack: Stack, name: str) -> None:
    """Wait until the inbox API lists ``name``'s conversation (the worker took the message in)."""
    async def listed() -> bool:
        admin = await admin_api(stack)
        found = (await admin.get("conversations?status=all&q=" + name.split()[-1]))["conversations"]
        return any(c["contact"]["name"] == name for c in found)

    run_sync(eventually(listed, 60, f"{name}'s conversation in the inbox"))


def test_each_conversation_names_its_number_and_the_filter_shows_one_number_or_all(
        numbers_stack: Stack, page: Page) -> None:
    stack = numbers_stack
    _add_porto(stack)  # before the page loads: the page offers the numbers it was served with
    _sign_in(page, stack.base, _user(stack.database_url))
    number = page.get_by_label("Business number")
    expect(number).to_be_visible()
    expect(number).to_have_value("")  # all numbers
    expect(number.locator("option", has_text="Porto shop")).to_have_count(1)

    tag = uuid.uuid4().hex[:6]
    ana, rui = f"Ana {tag}", f"Rui {tag}"
    run_sync(customer_writes(stack, HOME, HOME_DISPLAY, "hello shop", name=ana))
    run_sync(customer_writes(stack, PORTO, PORTO_DISPLAY, "olá Porto", name=rui))
    home_row, porto_row = _conversation(page, ana), _conversation(page, rui)
    expect(home_row).to_be_visible(timeout=LIVE_S)  # both arrive live, under all numbers
    expect(porto_row).to_be_visible(timeout=LIVE_S)
    expect(home_row).to_contain_text(f"to {HOME_DISPLAY}", timeout=LIVE_S)  # no label: its display number
    expect(porto_row).to_contain_text("to Porto shop")
    expect(porto_row).not_to_contain_text(PORTO_DISPLAY)  # the label, when there is one

    number.select_option(label="Porto shop")
    expect(home_row).to_have_count(0, timeout=LIVE_S)
    expect(porto_row).to_be_visible()
    expect(page.locator("#conversations [data-conversation-id]")).to_have_count(1)

    # The filter holds while the list refreshes live: a newcomer of the other number stays out.
    eva, teo = f"Eva {tag}", f"Teo {tag}"
    run_sync(customer_writes(stack, HOME, HOME_DISPLAY, "anyone there?", name=eva))
    _conversation_exists(stack, eva)
    run_sync(customer_writes(stack, PORTO, PORTO_DISPLAY, "bom dia", name=teo))
    expect(_conversation(page, teo)).to_be_visible(timeout=LIVE_S)
    expect(_conversation(page, teo)).to_contain_text("to Porto shop")
    expect(_conversation(page, eva)).to_have_count(0)
    expect(home_row).to_have_count(0)
    expect(number).to_have_value(PORTO)

    number.select_option(label="All numbers")
    for name in (ana, rui, eva, teo):
        expect(_conversation(page, name)).to_be_visible(timeout=LIVE_S)
    expect(_conversation(page, eva)).to_contain_text(f"to {HOME_DISPLAY}")
