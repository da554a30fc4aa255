"""The web inbox's pages: ``/login`` and ``/`` rendered with aiohttp-jinja2, and their assets.

The pages are shells; ``static/inbox.js`` (our own, no framework, no third-party file) fills them
from the inbox API with the session cookie and the CSRF header, and keeps them live with one
``EventSource('/api/v1/events')``. The server here only asks whether the visitor's session is
alive, to redirect a signed-out visit to ``/login``, and reads the business numbers (labels, no
tokens) for the list's number filter.

Every asset in :data:`ASSETS` must be present when the application is created; a missing one is
:class:`MissingAsset` then, not a blank page later.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from wacrm.inbox import auth
from wacrm.inbox.keys import POOL, RULES, SETTINGS
from wacrm.inbox.sessions import session_cookie
from wacrm.storage import numbers as business_numbers

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
ASSETS = (TEMPLATES / "login.html", TEMPLATES / "inbox.html", STATIC / "inbox.js", STATIC / "login.js",
          STATIC / "inbox.css")


class MissingAsset(RuntimeError):
    """A template or static file of the web inbox is not installed; the server does not start."""


def check_assets() -> None:
    """Raise :class:`MissingAsset` naming every file of :data:`ASSETS` that is absent."""
    missing = [str(p) for p in ASSETS if not p.is_file()]
    if missing:
        raise MissingAsset(f"the web inbox cannot start: missing {', '.join(missing)} "
                           "(reinstall wacrm: `pip install -e .` ships inbox/templates and inbox/static)")


@functools.cache
def favicon_ico(size: int = 16) -> bytes:
    """The site icon: a green disc (an ``.ico`` holding one 32-bit bitmap, drawn here, no binary file)."""
    centre, radius = (size - 1) / 2, size / 2 - 0.5
    rows = []
    for y in range(size - 1, -1, -1):  # a bitmap's rows go bottom up
        for x in range(size):
            inside = (x - centre) ** 2 + (y - centre) ** 2 <= radius ** 2
            rows.append(bytes((0x66, 0xD3, 0x25, 0xFF)) if inside else bytes(4))  # BGRA: #25D366
    pixels = b"".join(rows)
    mask = bytes(((size + 31) // 32) * 4 * size)  # the alpha channel decides; the AND mask is all clear
    bitmap = struct.pack("<IiiHHIIiiII", 40, size, size * 2, 1, 32, 0, len(pixels) + len(mask), 0, 0, 0, 0)
    image = bitmap + pixels + mask
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", size, size, 0, 0, 1, 32, len(image), 22) + image


async def favicon(request: web.Request) -> web.Response:
    return web.Response(body=favicon_ico(), content_type="image/x-icon",
                        headers={"Cache-Control": "public, max-age=86400"})


async def _signed_in(request: web.Request, api_app: web.Application) -> auth.Session | None:
    session_id = session_cookie(request)
    if not session_id:
        return None
    async with api_app[POOL].acquire() as conn:
        return await auth.session_for(conn, session_id, api_app[SETTINGS].session_idle_s)


def add_pages(root: web.Application, api_app: web.Application) -> None:
    """Serve ``/login``, ``/``, ``/favicon.ico`` and ``/static/`` on ``root``; the API application owns the pool."""
    check_assets()
    aiohttp_jinja2.setup(root, loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)

    async def login_page(request: web.Request) -> web.StreamResponse:
        return aiohttp_jinja2.render_template("login.html", request, {})

    async def inbox_page(request: web.Request) -> web.StreamResponse:
        session = await _signed_in(request, api_app)
        if session is None:
            raise web.HTTPFound("/login")
        async with api_app[POOL].acquire() as conn:
            numbers = await business_numbers.list_numbers(conn)  # the number filter's choices
        response = aiohttp_jinja2.render_template(
            "inbox.html", request, {"user": session.user, "csrf_token": session.csrf_token,
                                    "stages": ",".join(api_app[RULES].intelligence.stages),
                                    "numbers": numbers})
        response.headers["Cache-Control"] = "no-store"
        return response

    root.router.add_get("/", inbox_page)
    root.router.add_get("/login", login_page)
    root.router.add_get("/favicon.ico", favicon)
    root.router.add_static("/static/", STATIC, name="static", append_version=True)
