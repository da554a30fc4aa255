"""A person sends files from the web inbox (in chromium): a program named .jpg chosen with the attach
button is refused in words under the form, nothing sent; an image dropped on the reply box goes with the
text as its caption, and the thread shows it once the worker uploaded and sent it."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import aiohttp
from browser import (  # noqa: F401 (the module's browser fixtures)
    LIVE_S,
    SCREENSHOTS,
    WIDE,
    browser,
    browser_context_args,
    browser_type,
    browser_type_launch_args,
    conversation,
    playwright,
    sign_in,
    user,
)
from conftest import Stack, run_sync
from inbox_client import customer_says, phone
from playwright.sync_api import Browser, expect
from test_inbox_media_browser import png

from wacrm.whatsapp.media import MAX_BYTES


async def _uploads(stack: Stack) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.get(f"{stack.fake_meta}/__uploads") as r:
        return list(await r.json())


def _drop(page: Any, name: str, data: bytes, mime: str) -> None:
    """Drag a file from the desktop onto the reply box (a DataTransfer, as the browser makes one)."""
    page.evaluate("""([name, b64, mime]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: mime}));
        const form = document.querySelector("#reply");
        for (const kind of ["dragenter", "dragover", "drop"])
          form.dispatchEvent(new DragEvent(kind, {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", [name, base64.b64encode(data).decode(), mime])


def test_a_person_attaches_or_drops_files_and_sees_refusals_in_words_and_the_image_sent(
        stack: Stack, database_url: str, browser: Browser) -> None:
    email = user(database_url, "agent")
    context = browser.new_context(viewport=WIDE)
    page = context.new_page()
    try:
        sign_in(page, stack.base, email)
        name, wa_id = f"Bruna {uuid.uuid4().hex[:6]}", phone()
        run_sync(customer_says(stack, wa_id, "Hello, is the shop open today?", name))
        conversation(page, name).locator("button").click(timeout=LIVE_S)
        form = page.locator("#reply")
        expect(form.locator("textarea[name=text]")).to_be_enabled(timeout=LIVE_S)  # the window is open

        # a program named like a photo, with the attach button: refused, said in words, nothing sent
        page.set_input_files("#attach", files=[{"name": "holiday.jpg", "mimeType": "image/jpeg",
                                                "buffer": b"\x7fELF\x02\x01\x01\x00" + bytes(3000)}])
        expect(page.locator("#attachment")).to_contain_text("holiday.jpg")
        expect(page.locator("#attachment")).to_contain_text("KB")
        form.locator("button[type=submit]").click()
        error = page.locator("#reply-error")
        expect(error).to_contain_text("WhatsApp does not take this file", timeout=LIVE_S)
        expect(error).to_contain_text("executable program")
        expect(page.locator("#attachment")).to_be_visible()  # still attached: change it or remove it

        too_big = b"\xff\xd8\xff\xe0" + bytes(MAX_BYTES["image"])
        page.set_input_files("#attach", files=[{"name": "huge.jpg", "mimeType": "image/jpeg", "buffer": too_big}])
        expect(page.locator("#attachment .size")).to_contain_text("MB")
        form.locator("button[type=submit]").click()
        expect(error).to_contain_text("larger than WhatsApp's limit of 5 MB", timeout=LIVE_S)
        page.click("#attach-remove")
        expect(page.locator("#attachment")).to_be_hidden()

        # an image dropped on the reply box, the text as its caption
        image = png(320, 200, (20, 90, 160))
        _drop(page, "shelf.png", image, "image/png")
        expect(page.locator("#attachment")).to_contain_text("shelf.png")
        form.locator("textarea[name=text]").fill("Yes! This is the shelf you asked about")
        form.locator("button[type=submit]").click()
        expect(page.locator("#attachment")).to_be_hidden(timeout=LIVE_S)  # accepted: the form is clear
        expect(error).to_be_hidden()
        thread = page.locator("#messages")
        sent = thread.locator("[data-message-id]", has=page.locator("a.media.image img"),
                              has_text="This is the shelf you asked about")
        expect(sent).to_be_visible(timeout=LIVE_S)  # once the worker uploaded and sent it
        page.wait_for_function("img => img.complete && img.naturalWidth === 320",
                               arg=sent.locator("img").element_handle(), timeout=LIVE_S)

        digest = hashlib.sha256(image).hexdigest()
        uploaded = [u for u in run_sync(_uploads(stack)) if u["sha256"] in (digest,)]
        assert [(u["type"], u["filename"]) for u in uploaded] == [("image/png", "shelf.png")]
        refused = [u for u in run_sync(_uploads(stack)) if u["filename"] in ("holiday.jpg", "huge.jpg")]
        assert refused == []
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "inbox-media-sent.png"))
    finally:
        context.close()
