"""``GET /{version}/{waba_id}/message_templates``, every page: the templates of a WhatsApp Business
Account as Meta lists them.

Pages are followed by ``paging.next`` (Meta's full URL of the next page) until a page has none.
Every request carries the account's bearer token and is bounded by ``timeout``; a failure raises
:class:`ListError` saying why (Meta's own message and code when it gave one), so the caller keeps
the last good catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from wacrm.whatsapp.templates import Template, template_of

MAX_PAGES = 1000  # a paging loop (a next that points back) ends here instead of running forever
FIELDS = "id,name,language,status,category,components,parameter_format,quality_score,rejected_reason"


class ListError(Exception):
    """The list could not be read; ``str()`` says why in words."""


async def fetch_all(session: aiohttp.ClientSession, base_url: str, version: str, waba_id: str, token: str, *,
                    timeout: float, page_size: int = 100,
                    on_page: Callable[[int, int], None] | None = None) -> tuple[list[Template], int]:
    """Every template of ``waba_id`` and the number of pages read; ``on_page(pages, templates)`` after
    each page. An item Meta lists that cannot be read is skipped (it could never be sent)."""
    url: str | None = f"{base_url.rstrip('/')}/{version}/{waba_id}/message_templates"
    params: dict[str, str] | None = {"fields": FIELDS, "limit": str(page_size)}
    headers = {"Authorization": f"Bearer {token}"}
    bound = aiohttp.ClientTimeout(total=timeout, connect=timeout / 2)
    found: list[Template] = []
    pages = 0
    seen: set[str] = set()
    while url is not None:
        if url in seen or pages >= MAX_PAGES:
            raise ListError(f"Meta's paging did not end after {pages} pages (next page {url} seen before)")
        seen.add(url)
        try:
            async with session.get(url, params=params, headers=headers, timeout=bound) as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ListError(f"the Graph API did not answer page {pages + 1} of the template list "
                            f"({type(exc).__name__}: {exc})") from None
        try:
            body: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = None
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ListError(_why(status, body, pages + 1))
        pages += 1
        for item in body["data"]:
            try:
                found.append(template_of(item))
            except ValueError:
                continue
        if on_page is not None:
            on_page(pages, len(found))
        paging = body.get("paging")
        nxt = paging.get("next") if isinstance(paging, dict) else None
        url, params = (nxt, None) if isinstance(nxt, str) and nxt else (None, None)
    return found, pages


def _why(status: int, body: Any, page: int) -> str:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return f"Meta refused page {page} of the template list (HTTP {status}, code {err.get('code')}): " \
               f"{err.get('message') or 'no message'}"
    return f"Meta answered page {page} of the template list with HTTP {status} and no template data"
