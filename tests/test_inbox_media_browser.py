"""The web inbox shows a customer's files (in chromium, as tests/test_inbox_browser.py drives it): an image
inline that opens full size, a document as a named download, and what became of a file that is not here."""

from __future__ import annotations

import struct
import uuid
import zlib

from browser import (  # noqa: F401 (the module's browser fixtures)
    LIVE_S,
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
from conftest import Stack, run_sync
from inbox_client import phone
from media_helpers import media_body, register
from playwright.sync_api import Browser, expect


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A real PNG of one colour (so the browser decodes it)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_person_sees_a_customers_image_document_and_a_file_that_failed(stack: Stack, database_url: str,
                                                                         browser: Browser) -> None:
    email = _user(database_url, "agent")
    context = browser.new_context(viewport=WIDE)
    page = context.new_page()
    try:
        _sign_in(page, stack.base, email)
        name, wa_id = f"Rita {uuid.uuid4().hex[:6]}", phone()
        image = run_sync(register(stack, png(320, 200, (11, 110, 79)), mime_type="image/png"))
        document = run_sync(register(stack, b"%PDF-1.4 " + uuid.uuid4().bytes * 200, mime_type="application/pdf"))
        broken = run_sync(register(stack, png(10, 10, (200, 0, 0)), mime_type="image/png", sha256="0" * 64))
        for file, kind, extra in ((image, "image", {"caption": "Is this one in stock?"}),
                                  (document, "document", {"filename": "order-1234.pdf"}),
                                  (broken, "image", {})):
            body, _ = media_body(wa_id, kind, file, name=name, **extra)  # type: ignore[arg-type]
            assert run_sync(stack.post(body))[0] == 200

        _conversation(page, name).locator("button").click()
        thread = page.locator("#messages")
        shown = thread.locator("a.media.image img")
        expect(shown).to_be_visible(timeout=LIVE_S)  # pending at first; the file arrives live
        page.wait_for_function("img => img.complete && img.naturalWidth === 320", arg=shown.element_handle(),
                               timeout=LIVE_S)
        expect(thread.locator("[data-message-id]", has_text="Is this one in stock?")).to_be_visible()
        link = thread.locator("a.media.image")
        expect(link).to_have_attribute("target", "_blank")
        with context.expect_page() as opened:  # a click opens it full size
            link.click()
        full = opened.value
        full.wait_for_load_state()
        assert full.url.endswith(link.get_attribute("href") or "-")
        full.close()

        doc = thread.locator("a.media.document")
        expect(doc).to_contain_text("order-1234.pdf", timeout=LIVE_S)
        expect(doc).to_contain_text("KB")
        with page.expect_download() as download:
            doc.click()
        assert download.value.suggested_filename == "order-1234.pdf"

        expect(thread.locator("[data-media-state=failed]")).to_contain_text("could not be downloaded",
                                                                           timeout=LIVE_S)
        expect(thread.locator("[data-media-state=failed]")).to_contain_text("checksum mismatch")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "inbox-media.png"))
    finally:
        context.close()
